"""A launcher that runs the same runner the CLI uses on the tiny stack (tests/utils/stack.py), so tests can
run ``inferenceguard eval`` in a real subprocess and kill it.

python -m tests.harness.launcher OUT PROMPT_FILE METHODS [--delay S] [--batch-size B] [--max-new-tokens T]
    [--ray-address ADDRESS --workers N --worker-cpus C]   (answer on Ray workers of that cluster)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from pathlib import Path

import torch

from inferenceguard.harness.distributed import RayOptions, RayPool
from inferenceguard.harness.run import load_sources, run_eval
from tests.utils.stack import tiny_stack


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("prompts", nargs="+")
    ap.add_argument("--methods", default="sample,bon")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--worker-cpus", type=float, default=1.0)
    a = ap.parse_args(argv)
    with contextlib.ExitStack() as scope:
        stack = tiny_stack(a.delay) if a.ray_address is None else scope.enter_context(ray_pool(a))
        run_eval(
            stack,
            load_sources(a.prompts),
            a.methods,
            a.out,
            max_new_tokens=a.max_new_tokens,
            batch_size=a.batch_size,
            settings={"candidates": a.candidates, "block": 4},
            progress=False,
        )


ROOT = Path(__file__).resolve().parents[2]


def ray_options(**kw) -> RayOptions:
    """Ray workers for tests: they import ``tests`` from the checkout."""
    return RayOptions(runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, **kw)


def ray_pool(a: argparse.Namespace) -> RayPool:
    opts = ray_options(address=a.ray_address, workers=a.workers, worker_cpus=a.worker_cpus)
    return RayPool(functools.partial(tiny_stack, a.delay), opts)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
