"""A full disk (ENOSPC, simulated where the bytes reach the disk) or a folder that cannot be written: one clear
error naming the path (exit code 2 on the command line), and every earlier result left as it was."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile

import pytest

from inferenceguard import _io
from inferenceguard.engine import Stack
from inferenceguard.errors import OutputError
from inferenceguard.harness.run import CONFIG, RESULTS
from inferenceguard.training import rollouts as ro
from tests.reliability import jobs
from tests.reliability.faults import temp_files, tree
from tests.stubs import CharCost, VowelReward
from tests.utils.cli import run_cli, stack_flags
from tests.utils.tiny import tiny_lm


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_write_atomic_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    _io.write_json(target, {"v": 1})
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OutputError, match="No space left on device") as e:
        _io.write_json(target, {"v": 2})
    assert e.value.arg == str(target)
    assert json.loads(target.read_text()) == {"v": 1} and not temp_files(tmp_path)


def test_a_failed_append_is_cut_back_off(tmp_path, monkeypatch):
    log = tmp_path / "results.jsonl"
    _io.append_jsonl(log, [{"i": 0}, {"i": 1}])
    before = log.read_bytes()
    real = os.write
    calls = []

    def short_then_full(fd, data):  # the first call writes half, the next finds the disk full
        calls.append(len(data))
        if len(calls) > 1:
            _enospc()
        return real(fd, bytes(data[: len(data) // 2]))

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OutputError, match=re.escape(str(log))):
        _io.append_jsonl(log, [{"i": 2, "text": "x" * 1000}])
    assert len(calls) == 2 and log.read_bytes() == before


def _eval(monkeypatch, capsys, dirs, prompts, out, methods):
    return run_cli(
        monkeypatch,
        capsys,
        "eval",
        "--prompts",
        str(prompts),
        "--methods",
        methods,
        "--out",
        str(out),
        *stack_flags(dirs),
        "--max-new-tokens",
        "4",
        "--candidates",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    )


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def finished_run(monkeypatch, capsys, dirs, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(jobs.PROMPTS[:4]) + "\n")
    out = tmp_path / "run"
    code, _, err = _eval(monkeypatch, capsys, dirs, prompts, out, "sample")
    assert code == 0, err
    return prompts, out


def test_eval_on_a_full_disk_exits_2_naming_the_file_and_keeps_the_results(monkeypatch, capsys, dirs, finished_run):
    prompts, out = finished_run
    before = tree(out)
    with monkeypatch.context() as m:  # the config write (adding a method) finds the disk full
        m.setattr(os, "fsync", _enospc)
        code, _, err = _eval(monkeypatch, capsys, dirs, prompts, out, "sample,bon")
    line = _error_line(err)
    assert code == 2 and str(out / CONFIG) in line and "No space left on device" in line, line
    assert tree(out) == before

    real = os.write
    with monkeypatch.context() as m:  # the config is written; the first append of results finds the disk full
        m.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:10])) if len(data) > 10 else _enospc())
        code, _, err = _eval(monkeypatch, capsys, dirs, prompts, out, "sample,bon")
    line = _error_line(err)
    assert code == 2 and str(out / RESULTS) in line, line
    assert (out / RESULTS).read_bytes() == before[RESULTS]

    code, _, err = _eval(monkeypatch, capsys, dirs, prompts, out, "sample,bon")  # space again: resumes
    assert code == 0, err
    keys = [(r["method"], r["id"]) for r in map(json.loads, (out / RESULTS).read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 8 and (out / RESULTS).read_bytes().startswith(before[RESULTS])


def test_eval_into_a_folder_it_may_not_write_exits_2(monkeypatch, capsys, dirs, finished_run):
    prompts, out = finished_run
    before = tree(out)

    def denied(*_a, **_k):  # what mkstemp meets in a read-only folder (root ignores chmod, so simulate it too)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", denied)
        code, _, err = _eval(monkeypatch, capsys, dirs, prompts, out, "sample,bon")
    line = _error_line(err)
    assert code == 2 and str(out / CONFIG) in line and "Permission denied" in line, line
    assert tree(out) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_eval_into_a_read_only_folder_exits_2(monkeypatch, capsys, dirs, finished_run):
    prompts, out = finished_run
    before = tree(out)
    out.chmod(0o555)
    try:
        code, _, err = _eval(monkeypatch, capsys, dirs, prompts, out, "sample,bon")
    finally:
        out.chmod(0o755)
    line = _error_line(err)
    assert code == 2 and str(out) in line and "Permission denied" in line, line
    assert tree(out) == before


def test_rollouts_on_a_full_disk_keep_the_finished_batches_and_resume(tmp_path, monkeypatch):
    stack = Stack(lm=tiny_lm(eos_boost=1.5), reward=VowelReward(), cost=CharCost(threshold=0.3))
    cfg = jobs.rollout_config()
    real = ro.write_atomic

    def full_at_second_shard(path, write):  # the real atomic write, meeting a full disk at the second shard
        if path.name != "shard-00001.safetensors":
            return real(path, write)
        with monkeypatch.context() as m:
            m.setattr(os, "fsync", _enospc)
            return real(path, write)

    monkeypatch.setattr(ro, "write_atomic", full_at_second_shard)
    with pytest.raises(OutputError, match=r"shard-00001\.safetensors"):
        ro.collect_rollouts(stack, jobs.PROMPTS, tmp_path, cfg, progress=False)
    assert len(ro.load_rollouts(tmp_path).prompts) == 2 and not temp_files(tmp_path)
    monkeypatch.setattr(ro, "write_atomic", real)
    s = ro.collect_rollouts(stack, jobs.PROMPTS, tmp_path, cfg, resume=True, progress=False)
    assert s["new_prompts"] == len(jobs.PROMPTS) - 2 and s["prompts"] == len(jobs.PROMPTS)


def test_a_sweep_with_names_leaves_other_writers_temporary_files(tmp_path):
    """A folder the user chose may be shared: saving a critic there sweeps only the critic's own leftovers."""
    from inferenceguard import _io

    mine, theirs = tmp_path / ".critic.json.abcd1234.tmp", tmp_path / ".notes.txt.abcd1234.tmp"
    for p in (mine, theirs):
        p.write_text("half")
    assert _io.sweep_temps(tmp_path, ["critic.json", "critic.safetensors"]) == [mine]
    assert theirs.exists() and not mine.exists()


def test_a_safetensors_write_on_a_full_disk_is_an_output_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    """safetensors writes from Rust: its full-disk error is a SafetensorError, not an OSError."""
    import safetensors.torch
    from safetensors import SafetensorError

    from inferenceguard.critic import LatentCritic, save_critic

    critic = LatentCritic(hidden_size=8, width=4, depth=1)
    save_critic(critic, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutputError, match="No space left on device"):
        save_critic(LatentCritic(hidden_size=8, width=4, depth=1), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
