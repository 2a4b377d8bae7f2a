"""The SIGKILL campaign over every long job, longer than the test suite's: each job (eval, rollouts,
train-critic, build-scorers) on tiny stacks, for SEEDS seeds, each run killed up to MAX_KILLS times at random
moments and resumed until it finishes by itself; prints, per job, the kills and the records lost and
duplicated, and whether the final files equal an uninterrupted run's (tests/reliability/jobs.py says which
files are compared byte for byte and which without their wall-clock fields).

    python benchmarks/kill_jobs.py [--seeds 10] [--max-kills 3] [--jobs eval,rollouts,train-critic,build-scorers]
        [--slow-io 0.05] [--json]

Exit code 1 when any run lost or duplicated a record, left a temporary file, or ended with other files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tests.reliability import jobs
from tests.stubs import CharCost, VowelReward
from tests.utils.stack import tiny_stack
from tests.utils.tiny import tiny_encoder, tiny_lm

from inferenceguard.engine import Stack

JOBS = ("eval", "rollouts", "train-critic", "build-scorers")


def _sampling_stack() -> Stack:
    return Stack(lm=tiny_lm(eos_boost=1.5), reward=VowelReward(), cost=CharCost(threshold=0.3))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--max-kills", type=int, default=3)
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--slow-io", type=float, default=0.05, help="seconds each write pauses (kills land in writes)")
    ap.add_argument("--json", action="store_true", help="print every run's report as one JSON line")
    a = ap.parse_args(argv)
    names = [j.strip() for j in a.jobs.split(",") if j.strip()]
    bad = [j for j in names if j not in JOBS]
    if bad:
        ap.error(f"--jobs: unknown {bad[0]!r}; choose from {', '.join(JOBS)}")
    torch.set_num_threads(1)
    encoder = lm = None
    failed = 0
    with tempfile.TemporaryDirectory(prefix="kill-jobs-") as tmp:
        root = Path(tmp)
        print(f"{'job':14} {'runs':>4} {'kills':>5} {'records':>7} {'lost':>4} {'dup':>4} {'files equal':>11} {'s':>6}")
        for name in names:
            t0, reports = time.monotonic(), []
            for seed in range(a.seeds):
                if name == "eval":
                    r = jobs.eval_campaign(root / name, tiny_stack(), seed, a.max_kills, a.slow_io)
                elif name == "rollouts":
                    r = jobs.rollouts_campaign(root / name, _sampling_stack(), seed, a.max_kills, a.slow_io)
                elif name == "train-critic":
                    r = jobs.train_critic_campaign(root / name, _sampling_stack(), seed, a.max_kills, a.slow_io)
                else:
                    lm, encoder = lm or tiny_lm(), encoder or tiny_encoder()
                    r = jobs.build_scorers_campaign(root / name, lm, encoder, seed, a.max_kills, a.slow_io)
                r["failures"] = jobs.failures(r)
                failed += bool(r["failures"])
                reports.append(r)
                if a.json:
                    print(json.dumps(r), flush=True)
            equal = sum(all(r["equal"].values()) for r in reports)
            print(
                f"{name:14} {len(reports):>4} {sum(r['kills'] for r in reports):>5} "
                f"{sum(r['records'] for r in reports):>7} {sum(r['lost'] for r in reports):>4} "
                f"{sum(r['duplicated'] for r in reports):>4} {f'{equal}/{len(reports)}':>11} "
                f"{time.monotonic() - t0:>6.0f}",
                flush=True,
            )
            left: dict[str, int] = {}
            for r in reports:
                for k, n in r["left_by_kills"].items():
                    left[k] = left.get(k, 0) + n
            if left:
                print("  left for the resume to repair:", ", ".join(f"{k} x{n}" for k, n in sorted(left.items())))
            for r in reports:
                for f in r["failures"]:
                    print(f"  seed {r['seed']}: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
