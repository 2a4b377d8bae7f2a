"""Where batches are answered: on the stack in this process, or on Ray actors that each hold their own stack.

The evaluation runner (:func:`.run.run_eval`) and the rollout collector
(:func:`~inferenceguard.training.rollouts.collect_rollouts`) take a :class:`Stack` or a :class:`StackPool`.
Either way they ask the pool two things: ``call(fn, *args)`` (one function on a stack: describe it, check the
prompts) and ``map(fn, jobs)`` (one function per batch, results as they finish); the records, the config and
the resume logic stay in those modules and the driver alone writes them. A plain stack is wrapped in
:class:`InProcess`, so both paths run the same code.

:class:`RayPool` starts one actor per GPU (or per ``worker_cpus`` CPUs); each loads the stack once with a
picklable loader (``functools.partial(load_stack, ...)``) and runs ``fn(stack, *job)``. A worker that dies
(killed, out of memory) loses only the batches it holds: they go back to the queue for another worker, and
the actor restarts (``max_restarts``) and rejoins once its stack is loaded again. A worker that cannot load
the stack fails the pool with its own error. Ray is optional (``pip install 'inferenceguard[ray]'``) and
imported only here, only when a RayPool starts.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from inferenceguard.errors import AssetError, ConfigError, InferenceGuardError, need_package

if TYPE_CHECKING:  # a worker imports this module before its stack: keep it light
    from inferenceguard.engine import Stack

RAY_PIP = "pip install 'inferenceguard[ray]'"
Job = Callable[..., Any]  # fn(stack, *args) -> picklable result; a module-level function (workers import it)


@runtime_checkable
class StackPool(Protocol):
    """Stacks that answer jobs: here (:class:`InProcess`) or on workers (:class:`RayPool`)."""

    def call(self, fn: Job, *args: Any) -> Any:
        """``fn(stack, *args)`` on one stack."""
        ...

    def map(self, fn: Job, jobs: Sequence[tuple[Any, ...]], ordered: bool = False) -> Iterator[tuple[int, Any]]:
        """(i, ``fn(stack, *jobs[i])``) for every job, each once, in finishing order (job order if ``ordered``)."""
        ...

    def status(self) -> dict[str, str]:
        """A few short fields for a progress bar (workers alive, batches redone); empty in process."""
        ...


class InProcess:
    """The stack in this process: jobs run one after another, lazily (the caller writes each before the next)."""

    def __init__(self, stack: Stack):
        self.stack = stack

    def call(self, fn: Job, *args: Any) -> Any:
        return fn(self.stack, *args)

    def map(self, fn: Job, jobs: Sequence[tuple[Any, ...]], ordered: bool = False) -> Iterator[tuple[int, Any]]:
        for i, args in enumerate(jobs):
            yield i, fn(self.stack, *args)

    def status(self) -> dict[str, str]:
        return {}


def as_pool(stack: Stack | StackPool) -> StackPool:
    """A pool as it is; a stack wrapped in :class:`InProcess`."""
    return stack if isinstance(stack, StackPool) else InProcess(stack)


# ---- Ray -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayOptions:
    """Where the workers run and what each holds (``--ray``, ``--address``, ``--workers``, ``--worker-*``)."""

    address: str | None = None  # None: the cluster `ray start` runs on this machine, else a new local one
    workers: int | None = None  # None: as many as the cluster's free resources hold
    worker_cpus: float = 1.0  # CPUs per worker (its torch threads: at least 1)
    worker_gpus: float | None = None  # GPUs per worker; None: 1 when the cluster has GPUs, else 0
    max_restarts: int = 2  # times a dead worker is restarted (it reloads its stack) before it is retired
    max_attempts: int = 3  # workers a batch may lose before the run fails on it (a batch that kills each one)
    depth: int = 2  # batches queued per worker, so it never waits on the driver between two
    runtime_env: dict[str, Any] | None = None  # Ray's per-worker environment (env_vars, pip, ...), if any

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError("--workers", self.workers, "must be an integer >= 1")
        if not self.worker_cpus > 0:
            raise ConfigError("--worker-cpus", self.worker_cpus, "must be > 0")
        if self.worker_gpus is not None and self.worker_gpus < 0:
            raise ConfigError("--worker-gpus", self.worker_gpus, "must be >= 0")
        for name in ("max_restarts", "max_attempts", "depth"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (name != "max_restarts"):
                raise ConfigError(name, getattr(self, name), "must be a positive integer")


def import_ray() -> Any:
    """The ray module, or the error naming the extra to install."""
    try:
        import ray
    except ImportError as e:
        raise need_package("ray", "Running on a Ray cluster (--ray)", RAY_PIP) from e
    return ray


class _StackWorker:
    """The actor: holds one stack, loaded on first use (so a restarted actor reloads it), and runs jobs on it."""

    def __init__(self, load: Callable[[], Stack], threads: int):
        self._load, self._threads, self._stack = load, threads, None

    def _ensure(self) -> Stack:
        if self._stack is None:
            import torch

            torch.set_num_threads(self._threads)
            self._stack = self._load()
        return self._stack

    def ready(self) -> dict[str, Any]:
        """Load the stack; where this worker runs."""
        import socket

        lm = self._ensure().lm
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": str(getattr(lm, "device", "?"))}

    def run(self, fn: Job, *args: Any) -> Any:
        return fn(self._ensure(), *args)


def worker_error(e: Exception, k: int, doing: str) -> Exception:
    """What a task that raised on worker ``k`` surfaces as: the package's own error (ConfigError, AssetError) as
    itself; running out of memory (torch's OutOfMemoryError, CPU or CUDA) as advice; anything else as one line."""
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, InferenceGuardError):
        return cause
    name = type(cause).__name__
    if isinstance(cause, MemoryError) or "OutOfMemory" in name:
        return AssetError(
            f"Ray worker {k} ran out of memory {doing} ({name}): lower --batch-size or give each worker more "
            "(--worker-gpus, --worker-cpus)"
        )
    return AssetError(f"Ray worker {k} failed {doing}: {name}: {cause}")


class RayPool:
    """Ray actors, each holding a stack loaded by ``load`` (picklable; it runs on the workers). A context
    manager: entering connects to (or starts) Ray and waits until every worker has loaded its stack; leaving
    ends the actors, and Ray itself when the pool started it."""

    def __init__(self, load: Callable[[], Stack], options: RayOptions = RayOptions()):
        self.load, self.options = load, options
        self.actors: list[Any] = []
        self.workers: list[dict[str, Any]] = []  # ready() of each actor
        self.redone = 0  # batches handed to another worker after theirs died
        self._live: set[int] = set()
        self._probes: dict[Any, int] = {}  # ready() ref -> actor restarting after a death
        self._ray: Any = None
        self._started_ray = False

    def __enter__(self) -> RayPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- life cycle

    def start(self) -> None:
        ray = self._ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.options.address, log_to_driver=True)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = self.options.address or "a local cluster"
                raise ConfigError("--address", where, f"must name a Ray cluster this machine can join ({e})") from None
            self._started_ray = True
        try:
            n, cpus, gpus = self._size()
            cls = ray.remote(_StackWorker).options(
                num_cpus=cpus,
                num_gpus=gpus,
                max_restarts=self.options.max_restarts,
                max_task_retries=0,  # a lost batch is handed out again by map(), not retried blindly
                runtime_env=self.options.runtime_env,
            )
            threads = max(1, int(cpus))
            self.actors = [cls.remote(self.load, threads) for _ in range(n)]
            refs = [a.ready.remote() for a in self.actors]
            self.workers = [self._get(r, k, "loading the stack") for k, r in enumerate(refs)]
            self._live = set(range(n))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End the actors (and Ray, when this pool started it). Safe to call twice."""
        ray = self._ray
        if ray is None:
            return
        for a in self.actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(a, no_restart=True)
        self.actors, self._live, self._probes = [], set(), {}
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
        self._ray = None

    def _size(self, wait_s: float = 10.0) -> tuple[int, float, float]:
        """(workers, CPUs each, GPUs each), checked against the cluster's free resources (so nothing waits
        forever for a worker that cannot be placed); waits up to ``wait_s`` for the actors of a pool that
        just ended to give theirs back."""
        o, end = self.options, time.monotonic() + wait_s
        total = self._ray.cluster_resources()
        per_gpu = o.worker_gpus if o.worker_gpus is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)

        def holds(res: dict[str, float]) -> tuple[int, float, float]:
            cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
            fits = int(cpus // o.worker_cpus + 1e-9)
            return (min(fits, int(gpus // per_gpu + 1e-9)) if per_gpu > 0 else fits), cpus, gpus

        while True:
            fits, cpus, gpus = holds(self._ray.available_resources())
            n = o.workers if o.workers is not None else fits
            if 1 <= n <= fits or n > holds(total)[0] or time.monotonic() > end:
                break
            time.sleep(0.2)
        if n < 1 or n > fits:
            raise ConfigError(
                "--workers",
                n,
                f"must fit the Ray cluster's free resources ({cpus:g} CPUs, {gpus:g} GPUs hold {fits} workers of "
                f"{o.worker_cpus:g} CPUs and {per_gpu:g} GPUs each); lower --workers, --worker-cpus or --worker-gpus",
            )
        return n, o.worker_cpus, per_gpu

    def _get(self, ref: Any, k: int, doing: str) -> Any:
        """ray.get, with a worker's error raised as :func:`worker_error` says."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            raise worker_error(e, k, doing) from e
        except ray.exceptions.RayError as e:  # the actor died before it was ready (e.g. out of memory)
            raise AssetError(f"Ray worker {k} died {doing}: {e}") from e

    # ---- jobs

    def call(self, fn: Job, *args: Any) -> Any:
        return next(self.map(fn, [args]))[1]

    def status(self) -> dict[str, str]:
        out = {"workers": f"{len(self._live)}/{len(self.actors)}"}
        if self.redone:
            out["redone"] = str(self.redone)
        return out

    def map(self, fn: Job, jobs: Sequence[tuple[Any, ...]], ordered: bool = False) -> Iterator[tuple[int, Any]]:
        ray, o = self._ray, self.options
        if ray is None:
            raise AssetError("the Ray pool is not started (use it as a context manager)")
        died = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError)
        queue = deque(range(len(jobs)))
        inflight: dict[Any, tuple[int, int]] = {}  # ref -> (actor, job)
        busy = [0] * len(self.actors)
        attempts = [0] * len(jobs)
        held: dict[int, Any] = {}  # ordered: finished jobs waiting for an earlier one
        emitted, window = 0, o.depth * max(1, len(self.actors)) * 2
        while queue or inflight or held:
            while ordered and emitted in held:
                yield emitted, held.pop(emitted)
                emitted += 1
            if not (queue or inflight):
                break
            for k in sorted(self._live):  # hand out batches, a few per worker
                while queue and busy[k] < o.depth and (not ordered or queue[0] < emitted + window):
                    j = queue.popleft()
                    inflight[self.actors[k].run.remote(fn, *jobs[j])] = (k, j)
                    busy[k] += 1
            if not inflight and not self._probes:
                raise AssetError(
                    f"every Ray worker died ({len(self.actors)} started, restarts used up) with {len(queue)} "
                    "batches left; the finished ones are written: rerun the same command to resume"
                )
            ready, _ = ray.wait([*inflight, *self._probes], num_returns=1)
            ref = ready[0]
            if ref in self._probes:  # a restarted worker has loaded its stack again, or is gone for good
                k = self._probes.pop(ref)
                try:
                    ray.get(ref)
                    self._live.add(k)
                except ray.exceptions.RayError:
                    pass
                continue
            k, j = inflight.pop(ref)
            busy[k] -= 1
            try:
                value = ray.get(ref)
            except died as e:
                attempts[j] += 1
                if attempts[j] >= o.max_attempts:
                    raise AssetError(
                        f"batch {j} was lost with {attempts[j]} Ray workers (the last: {e}); it may need more "
                        "memory than a worker has: lower --batch-size or give workers more (--worker-gpus)"
                    ) from e
                queue.appendleft(j)
                self.redone += 1
                self._lost(k)
                continue
            except ray.exceptions.RayTaskError as e:
                raise worker_error(e, k, f"answering batch {j}") from e
            if ordered:
                held[j] = value
            else:
                yield j, value

    def _lost(self, k: int) -> None:
        """Worker k died: take it out of the rotation; a ready() call brings it back once Ray restarts it."""
        if k in self._live:
            self._live.discard(k)
            self._probes[self.actors[k].ready.remote()] = k
