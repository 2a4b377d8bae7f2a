"""Faults for the long jobs: run a job in a forked child, SIGKILL it at a random moment, resume, repeat until a
run ends by itself; then compare what it left with an uninterrupted run's files.

Forking (not a fresh interpreter) keeps each start to milliseconds, so a test can afford several kills: the
child is a real process running the real job code, and SIGKILL gives it no chance to clean up. Used by
tests/reliability/test_kill_jobs.py (a few seeds) and benchmarks/kill_jobs.py (many).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import stat
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferenceguard._io import TEMP_SUFFIX, is_temp

FORK = multiprocessing.get_context("fork")
TIMING = ("second", "created", "built")  # keys whose values are wall-clock facts, not results


@dataclass
class Campaign:
    """What one killed-and-resumed run went through."""

    kills: int = 0
    delays: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _slow_io(pause: float) -> None:
    """Widen the moments a kill can land in a write (this process only): each os.write to a regular file
    writes half its bytes (a legal short write) then pauses; each fsync pauses first. The writes' code is
    unchanged, only slower, so random kills also hit temporary files and half-written lines."""
    write, fsync = os.write, os.fsync

    def slow_write(fd: int, data: Any) -> int:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return write(fd, data)
        n = write(fd, bytes(memoryview(data)[: max(1, len(data) // 2)]))
        time.sleep(pause)
        return n

    def slow_fsync(fd: int) -> None:
        time.sleep(pause)
        fsync(fd)

    os.write, os.fsync = slow_write, slow_fsync


def _child(job: Callable[[], Any], slow_io: float) -> None:
    if slow_io:
        _slow_io(slow_io)
    try:
        job()
    except BaseException:  # the parent reads the exit code; the traceback goes to stderr
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def run_killed(
    job: Callable[[], Any],
    rng: random.Random,
    horizon: float,
    max_kills: int = 3,
    after_kill: Callable[[], None] | None = None,
    timeout: float = 300.0,
    slow_io: float = 0.0,
) -> Campaign:
    """Run ``job`` in forked children until one finishes: each of the first ``max_kills`` is SIGKILLed after a
    delay drawn uniformly from [0, horizon) unless it ends first; ``after_kill`` checks the folder after each
    kill. A child that fails (exit code != 0) or outlives ``timeout`` fails the campaign. ``slow_io`` (seconds)
    slows every write down in the children (:func:`_slow_io`), so that kills land in writes too."""
    out = Campaign()
    t0 = time.monotonic()
    while True:
        proc = FORK.Process(target=_child, args=(job, slow_io), daemon=True)
        proc.start()
        if out.kills < max_kills:
            delay = rng.uniform(0.0, horizon)
            proc.join(delay)
            if proc.is_alive():
                proc.kill()
                proc.join()
                out.kills += 1
                out.delays.append(round(delay, 3))
                if after_kill is not None:
                    after_kill()
                continue
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            raise AssertionError(f"the resumed job did not finish within {timeout} s")
        if proc.exitcode != 0:
            raise AssertionError(f"the resumed job failed (exit code {proc.exitcode}; its traceback is on stderr)")
        out.seconds = time.monotonic() - t0
        return out


def timed(job: Callable[[], Any]) -> float:
    """Seconds ``job`` takes when nothing interrupts it."""
    t = time.perf_counter()
    job()
    return time.perf_counter() - t


def untimed(x: Any) -> Any:
    """``x`` without the keys that hold wall-clock facts (seconds, dates), at any depth."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if not any(t in k for t in TIMING)}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a JSONL file, parsed (a partial last line is left out, as the readers do)."""
    data = path.read_bytes() if path.is_file() else b""
    return [json.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines() if x.strip()]


def lost_and_duplicated(want: list[Any], got: list[Any]) -> tuple[int, int]:
    """(how many of ``want`` are missing from ``got``, how many entries of ``got`` repeat an earlier one)."""
    have = Counter(got)
    return sum(1 for k in set(want) if k not in have), sum(n - 1 for n in have.values())


def temp_files(folder: Path) -> list[str]:
    """The atomic writes' temporary files left in ``folder`` (and below)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(f".*{TEMP_SUFFIX}") if is_temp(p))


def tree(folder: Path) -> dict[str, bytes]:
    """relative path -> bytes of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
