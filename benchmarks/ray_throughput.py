"""Evaluation throughput on Ray CPU workers against a plain in-process run, measured in one process (ratios).

    python benchmarks/ray_throughput.py            # tiny stack: 1 and 2 CPU workers on a local Ray runtime
    python benchmarks/ray_throughput.py --json     # one JSON object

Every figure comes from ``run_eval`` on the same prompts, methods and settings, into fresh folders:
- plain: the stack in this process (records/s, the baseline);
- ray_1, ray_2: the same run on a RayPool of 1 and 2 workers of 1 CPU each (records/s, and as a ratio to plain;
  the workers' start-up, which loads the stack, is timed apart);
- driver_ms_per_record: the driver's CPU time per record during the Ray runs (dispatch, unpickling, writing
  with fsync): 1000 / it is the records/s one driver can take before it, not the workers, is the limit;
- round_trip_ms: one empty job through the pool (dispatch + result), the latency floor per batch;
  empty_jobs_per_s: empty jobs queued on 2 workers, the pool's own ceiling in batches/s.
The tiny stack answers a batch in milliseconds, so these runs show Ray's overhead at its worst; a real model's
batches take seconds, and throughput then grows with the workers until the driver's ceiling.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from inferenceguard.harness.distributed import RayOptions, RayPool
from inferenceguard.harness.run import load_sources, run_eval

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"candidates": 4, "block": 4}


def _noop(stack: Any, i: int) -> int:
    return i


def _run(stack: Any, sources: list, folder: Path, args: argparse.Namespace) -> tuple[float, float, int]:
    """(wall seconds, this process's CPU seconds, records) of one evaluation into a fresh folder, after a
    short untimed one (first calls warm up the tokenizer and the kernels, here or on each worker)."""
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
    warm = [replace(s, prompts=s.prompts[: 4 * args.batch_size]) for s in sources]
    run_eval(stack, warm, args.methods, folder.with_name(folder.name + "-warm"), settings=SETTINGS, **kw)
    w, c = time.perf_counter(), time.process_time()
    summary = run_eval(stack, sources, args.methods, folder, settings=SETTINGS, **kw)
    return time.perf_counter() - w, time.process_time() - c, summary["run"]["records"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--methods", default="sample,inferenceguard")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import ray

    sys.path.insert(0, str(ROOT))  # the tiny stack lives with the tests
    from tests.harness.launcher import tiny_stack

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="ray-throughput-"))
    (tmp / "p.txt").write_text("\n".join(f"tell me about topic number {i}" for i in range(args.prompts)) + "\n")
    sources = load_sources([str(tmp / "p.txt")])
    wall, _, n = _run(tiny_stack(), sources, tmp / "plain", args)
    out: dict = {"records": n, "methods": args.methods, "plain_records_per_s": round(n / wall, 1)}

    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False, log_to_driver=False)
    env = {"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}}
    try:  # the folders go with the temporary directory
        for k in (1, 2):
            t = time.perf_counter()
            with RayPool(functools.partial(tiny_stack), RayOptions(workers=k, runtime_env=env)) as pool:
                start = time.perf_counter() - t
                wall, cpu, n = _run(pool, sources, tmp / f"ray{k}", args)
                out[f"ray_{k}_records_per_s"] = round(n / wall, 1)
                out[f"ray_{k}_vs_plain"] = round((n / wall) / out["plain_records_per_s"], 2)
                out[f"ray_{k}_driver_ms_per_record"] = round(1000 * cpu / n, 2)
                out[f"ray_{k}_startup_s"] = round(start, 1)
                if k == 2:  # the pool itself: one job at a time, then many queued
                    t = time.perf_counter()
                    for i in range(50):
                        pool.call(_noop, i)
                    out["round_trip_ms"] = round(1000 * (time.perf_counter() - t) / 50, 2)
                    t = time.perf_counter()
                    assert sorted(i for i, _ in pool.map(_noop, [(i,) for i in range(400)])) == list(range(400))
                    out["empty_jobs_per_s"] = round(400 / (time.perf_counter() - t))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    ms = out["ray_2_driver_ms_per_record"]
    out["driver_ceiling_records_per_s"] = round(1000 / ms) if ms > 0 else None
    out["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()
