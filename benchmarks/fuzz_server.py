"""The long API fuzz run: schemathesis against the server's OpenAPI schema, in-process, tiny random stack.

    python benchmarks/fuzz_server.py                 # 350 cases per operation and mode: > 2,000 requests
    python benchmarks/fuzz_server.py --cases 50 --seed 1

Every operation (/v1/chat/completions, /v1/completions, /v1/moderations, /v1/models, /health, /metrics) gets
``--cases`` positive (schema-valid) and negative (schema-violating) generated requests; the GET routes take no
input, so they get one case each. Prints the cases, statuses per operation, 5xx and schema violations
(every failed response check), then one JSON line; exits 1 on any 5xx or violation. The engine is
tests/server/fuzz.py (also the suite's bounded run, tests/server/test_fuzz.py). No network: requests go to
the app in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.server.fuzz, tests.utils.tiny
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=350, help="generated requests per operation and mode")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (runs are repeatable)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases must be >= 1, got {args.cases}")

    from tests.server.fuzz import fuzz, tiny_app

    from inferenceguard.training.train_critic import one_thread

    with one_thread():
        report = fuzz(tiny_app(), args.cases, seed=args.seed)
    summary = report.summary()
    print(f"cases: {report.cases} in {summary['seconds']} s (seed {args.seed})")
    for op, statuses in summary["per_operation"].items():
        print(f"  {op:28s} {sum(statuses.values()):5d}  {statuses}")
    print(f"5xx: {report.server_errors}   schema violations: {len(report.violations)}")
    for v in report.violations[:20]:
        print("  ", v)
    print(json.dumps(summary))
    return 1 if report.server_errors or report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
