"""Evaluation and rollouts on Ray workers: the plain run's answers, every record once whatever dies, resume.

One local Ray runtime (2 CPUs, small object store, no dashboard) and one pool of two tiny-stack workers serve
the whole module: starting a worker costs seconds (it imports torch and transformers).
"""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inferenceguard.errors import ConfigError
from inferenceguard.harness.distributed import InProcess, RayPool
from inferenceguard.harness.run import RESULTS, load_sources, read_results, run_eval
from inferenceguard.training.rollouts import INDEX, RolloutConfig, collect_rollouts, load_rollouts
from tests.harness.broken import broken_stack
from tests.harness.launcher import ROOT, ray_options
from tests.utils.cli import run_cli
from tests.utils.stack import tiny_stack

ray = pytest.importorskip("ray")

METHODS = "sample,bon,inferenceguard-critic"
KW = dict(max_new_tokens=6, batch_size=2, settings={"candidates": 4, "block": 3}, progress=False)
LAUNCHER_KW = dict(max_new_tokens=8, batch_size=1, settings={"candidates": 4, "block": 4}, progress=False)


@pytest.fixture(scope="module")
def runtime():
    ctx = ray.init(num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False, log_to_driver=False)
    try:
        yield ctx
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def pool(runtime):
    """Two workers of half a CPU each, so a subprocess driver still finds a CPU for its own worker."""
    with RayPool(functools.partial(tiny_stack, 0.05), ray_options(workers=2, worker_cpus=0.5)) as p:
        yield p


def _prompts(tmp_path: Path, n: int = 10) -> str:
    path = tmp_path / "p.txt"
    path.write_text("\n".join(f"prompt number {i}" for i in range(n)) + "\n")
    return str(path)


def _answers(out: Path) -> dict[tuple[str, str], dict]:
    """Records by (method, id), without the timings (they are the only thing allowed to differ)."""
    recs = {}
    for r in read_results(out / RESULTS):
        r = dict(r)
        r.pop("seconds")
        r["extra"] = {k: v for k, v in (r.get("extra") or {}).items() if "seconds" not in k}
        recs[(r["method"], r["id"])] = r
    return recs


def _keys(out: Path) -> list[tuple[str, str]]:
    return [(r["method"], r["id"]) for r in map(json.loads, (out / RESULTS).read_text().splitlines())]


def test_eval_on_workers_gives_the_plain_runs_records(pool, tmp_path):
    sources = load_sources([_prompts(tmp_path, 7)])
    plain = run_eval(tiny_stack(), sources, METHODS, tmp_path / "plain", **KW)
    ray_summary = run_eval(pool, sources, METHODS, tmp_path / "ray", **KW)
    assert len(_keys(tmp_path / "ray")) == 21 == len(set(_keys(tmp_path / "ray")))
    assert _answers(tmp_path / "ray") == _answers(tmp_path / "plain")
    plain_cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert json.loads((tmp_path / "ray" / "config.json").read_text()) == plain_cfg  # same keys: resumable either way
    for m in plain["methods"]:
        cell, other = plain["methods"][m]["p"], ray_summary["methods"][m]["p"]
        assert cell["reward_mean"] == pytest.approx(other["reward_mean"]) and cell["n"] == other["n"] == 7
    assert set(pool.status()) >= {"workers"}


def test_rollouts_on_workers_equal_a_plain_collection(pool, tmp_path):
    prompts = ["hello there", "write a poem", "x", "tell me about the sea", "why is the sky blue", "count to ten"]
    cfg = RolloutConfig(rollouts=2, block=4, max_new_tokens=10, batch_prompts=2, seed=3)
    a = collect_rollouts(tiny_stack(), prompts, tmp_path / "plain", cfg, progress=False)
    b = collect_rollouts(pool, prompts, tmp_path / "ray", cfg, progress=False)
    assert a["prompts"] == b["prompts"] == 6 and a["states"] == b["states"] and a["lm_dtype"] == b["lm_dtype"]
    x, y = load_rollouts(tmp_path / "plain"), load_rollouts(tmp_path / "ray")
    for k in ("h", "charge", "step", "rollout", "prompt", "reward", "final_charge", "steps"):
        assert torch.equal(getattr(x, k), getattr(y, k)), k
    assert x.prompts == y.prompts and x.meta == y.meta
    index = [json.loads(line) for line in (tmp_path / "ray" / INDEX).read_text().splitlines()]
    assert [e["shard"] for e in index] == [f"shard-{n:05d}.safetensors" for n in range(3)]  # in batch order
    for n in range(3):  # the texts sidecars too, shard by shard
        name = f"shard-{n:05d}.jsonl"
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "plain" / name).read_text()


def test_a_worker_that_cannot_load_fails_the_pool_with_its_error(runtime):
    broken = RayPool(broken_stack, ray_options(workers=1, worker_cpus=0.5))
    with pytest.raises(ConfigError, match="must name a model that loads"):
        broken.start()  # the worker's own error, not a hang; its actor is ended
    assert broken.actors == []


def test_workers_the_cluster_cannot_hold_are_refused_before_starting(runtime):
    with pytest.raises(ConfigError, match="'--workers' must fit the Ray cluster"):
        RayPool(tiny_stack, ray_options(workers=5, worker_cpus=1)).start()


def test_resume_after_killing_a_ray_driver_has_every_record_once(runtime, pool, tmp_path):
    prompts, out = _prompts(tmp_path), tmp_path / "run"
    address = runtime.address_info["address"]
    cmd = [sys.executable, "-m", "tests.harness.launcher", str(out), prompts, "--methods", "sample,bon"]
    cmd += ["--delay", "0.3", "--ray-address", address, "--workers", "1", "--worker-cpus", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180  # the subprocess imports torch twice: itself and its worker
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / RESULTS).is_file() and (out / RESULTS).read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = (out / RESULTS).read_bytes()
    assert 3 <= before.count(b"\n") < 20
    with open(out / RESULTS, "ab") as f:  # as if the kill hit in mid-write
        f.write(b'{"method": "sample", "set": "p", "id": "trunc')
    run_eval(pool, load_sources([prompts]), "sample,bon", out, **LAUNCHER_KW)  # resumes on this pool
    after = (out / RESULTS).read_bytes()
    assert after.startswith(before)  # finished records kept, not redone
    assert len(_keys(out)) == 20 == len(set(_keys(out)))
    run_eval(InProcess(tiny_stack()), load_sources([prompts]), "sample,bon", tmp_path / "plain", **LAUNCHER_KW)
    assert _answers(out) == _answers(tmp_path / "plain")


def test_a_killed_worker_loses_only_its_batches_and_another_redoes_them(pool, tmp_path):
    """Last in the module: the killed actor restarts (reloading its stack) while the other one finishes."""
    sources = load_sources([_prompts(tmp_path)])
    killed: list[int] = []

    def kill_once(records: list[dict]) -> None:
        if not killed:
            killed.append(pool.workers[0]["pid"])
            ray.kill(pool.actors[0], no_restart=False)  # like an OOM kill: Ray restarts it (max_restarts)

    redone = pool.redone
    run_eval(pool, sources, "sample,bon", tmp_path / "ray", on_batch=kill_once, **KW)
    assert killed and pool.redone > redone  # the batches it held were handed out again
    assert len(_keys(tmp_path / "ray")) == 20 == len(set(_keys(tmp_path / "ray")))
    run_eval(tiny_stack(), sources, "sample,bon", tmp_path / "plain", **KW)
    assert _answers(tmp_path / "ray") == _answers(tmp_path / "plain")


def _cli(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    return code, err


def test_cli_worker_flags_need_ray_and_a_missing_ray_names_the_extra(monkeypatch, capsys, tmp_path):
    args = ("eval", "--prompts", _prompts(tmp_path), "--methods", "sample", "--out", str(tmp_path / "o"))
    code, err = _cli(monkeypatch, capsys, *args, "--workers", "2")
    assert code == 2 and "'--workers'" in err and "--ray" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    code, err = _cli(monkeypatch, capsys, *args, "--ray")
    assert code == 1 and "pip install 'inferenceguard[ray]'" in err
    code, err = _cli(monkeypatch, capsys, "train-critic", "--address", "auto", "--out", str(tmp_path / "c"))
    assert code == 1 and "pip install 'inferenceguard[ray]'" in err
    assert not (tmp_path / "o").exists()


def test_a_cluster_that_cannot_be_joined_is_a_clear_error(monkeypatch):
    """ray.init failing to connect (a wrong --address, `auto` with no cluster) names --address, no traceback."""
    import inferenceguard.harness.distributed as dist

    class NoCluster:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kw):
            raise ConnectionError(f"could not connect to {kw['address']}")

    monkeypatch.setattr(dist, "import_ray", lambda: NoCluster)
    pool = RayPool(functools.partial(tiny_stack), dist.RayOptions(address="10.255.0.1:6379"))
    with pytest.raises(
        ConfigError,
        match=r"--address. must name a Ray cluster .*could not connect to 10\.255\.0\.1:6379.*got .10\.255\.0\.1:6379",
    ):
        pool.start()


def test_worker_errors_surface_as_the_packages_own_or_as_one_clear_line():
    from inferenceguard.errors import AssetError
    from inferenceguard.harness.distributed import worker_error

    class TaskError(Exception):  # what ray.exceptions.RayTaskError carries: the worker's exception as .cause
        def __init__(self, cause: Exception):
            super().__init__(str(cause))
            self.cause = cause

    own = ConfigError("--model", "x", "must exist")
    assert worker_error(TaskError(own), 0, "loading the stack") is own
    oom = worker_error(TaskError(torch.OutOfMemoryError("CUDA out of memory")), 1, "answering batch 3")
    assert isinstance(oom, AssetError) and "worker 1 ran out of memory answering batch 3" in str(oom)
    assert "--batch-size" in str(oom)
    other = worker_error(TaskError(ValueError("bad tensor")), 2, "answering batch 0")
    assert isinstance(other, AssetError)
    assert str(other) == "Ray worker 2 failed answering batch 0: ValueError: bad tensor"
