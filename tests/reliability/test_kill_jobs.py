"""Every long job killed with SIGKILL at random moments and resumed: nothing lost, nothing twice, and the files
equal an uninterrupted run's (byte-equal where the job is deterministic; ``seconds`` and dates aside). A few
seeds here; benchmarks/kill_jobs.py runs many."""

from __future__ import annotations

import time

import pytest

from inferenceguard import _io
from inferenceguard.engine import Stack
from tests.reliability import jobs
from tests.reliability.faults import FORK, temp_files
from tests.stubs import CharCost, VowelReward
from tests.utils.stack import tiny_stack
from tests.utils.tiny import tiny_encoder, tiny_lm


def _assert_clean(report: dict) -> None:
    assert report["kills"] >= 1, report  # the horizon is the job's own length: the first kill lands in it
    assert jobs.failures(report) == [], report


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("kill")


@pytest.mark.parametrize("seed", [0, 1])
def test_eval_killed_and_resumed(root, seed):
    report = jobs.eval_campaign(root / "eval", tiny_stack(), seed, slow_io=0.01)
    _assert_clean(report)
    assert report["records"] == 4 * len(jobs.PROMPTS)


@pytest.mark.parametrize("seed", [0, 1])
def test_rollouts_killed_and_resumed(root, seed):
    stack = Stack(lm=tiny_lm(eos_boost=1.5), reward=VowelReward(), cost=CharCost(threshold=0.3))
    report = jobs.rollouts_campaign(root / "rollouts", stack, seed, slow_io=0.02)
    _assert_clean(report)
    assert report["records"] == len(jobs.PROMPTS)


def test_train_critic_killed_and_resumed(root):
    stack = Stack(lm=tiny_lm(eos_boost=1.5), reward=VowelReward(), cost=CharCost(threshold=0.3))
    _assert_clean(jobs.train_critic_campaign(root / "critic", stack, seed=0))


def test_build_scorers_killed_and_rerun(root):
    _assert_clean(jobs.build_scorers_campaign(root / "heads", tiny_lm(), tiny_encoder(), seed=0, max_kills=1))


def test_a_kill_in_mid_write_leaves_the_old_file_and_only_a_temporary_one(tmp_path):
    """SIGKILL while write_atomic fills its temporary file: the target keeps its old bytes; a resuming job's
    sweep removes the leftover (and no other file)."""
    target = tmp_path / "head.safetensors"
    _io.write_atomic(target, lambda p: p.write_bytes(b"old"))
    (tmp_path / ".keep.tmp").write_text("a user's file, not a temporary one of ours")

    def slow(p):
        p.write_bytes(b"new, half")
        time.sleep(60)

    proc = FORK.Process(target=_io.write_atomic, args=(target, slow), daemon=True)
    proc.start()
    deadline = time.monotonic() + 30
    while not temp_files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.join()
    left = temp_files(tmp_path)
    assert target.read_bytes() == b"old" and len(left) == 1
    assert [p.name for p in _io.sweep_temps(tmp_path)] == left and not temp_files(tmp_path)
    assert (tmp_path / ".keep.tmp").exists()
