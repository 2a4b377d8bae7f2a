"""The evaluation runner: records, resume after a real SIGKILL, configuration checks, CLI errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from inferenceguard.errors import ConfigError
from inferenceguard.harness.run import CONFIG, RESULTS, SUMMARY, load_sources, read_results, run_eval
from inferenceguard.strategies import PRESETS
from tests.harness import launcher
from tests.utils.cli import run_cli
from tests.utils.stack import SlowJudge, tiny_stack

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {
    "prompt",
    "set",
    "id",
    "method",
    "response",
    "reward",
    "cost",
    "judge_score",
    "judge_verdict",
    "judge_safe",
    "safe",
    "refusal",
    "budget_trajectory",
    "exhausted",
    "refused",
    "seconds",
    "new_tokens",
    "tokens_sampled",
    "lm_forward_passes",
    "reward_calls",
    "cost_calls",
    "critic_calls",
    "seed",
    "config_key",
}
KW = dict(max_new_tokens=6, batch_size=2, settings={"candidates": 4, "block": 3}, progress=False)


@pytest.fixture(scope="module")
def stack():
    return tiny_stack()


def _files(tmp_path: Path) -> tuple[str, str]:
    a, b = tmp_path / "alpha.txt", tmp_path / "beta.jsonl"
    a.write_text("hello there\nwrite a poem about the sea\nwhat is x\n")
    b.write_text('{"prompt": "tell me a story"}\n{"prompt": "zip zap"}\n')
    return str(a), str(b)


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]


def test_every_method_runs_and_writes_complete_records(stack, tmp_path):
    a, b = _files(tmp_path)
    sources = load_sources([a, b], limit=2)
    summary = run_eval(stack, sources, list(PRESETS), tmp_path / "run", **KW)
    recs = _lines(tmp_path / "run")
    assert len(recs) == len(PRESETS) * 4
    assert len({(r["method"], r["id"]) for r in recs}) == len(recs)
    for r in recs:
        assert set(r) >= FIELDS and r["new_tokens"] <= 6 and r["judge_verdict"] in ("safe", "unsafe")
    assert set(summary["methods"]) == set(PRESETS)
    for per in summary["methods"].values():
        assert set(per) == {"alpha", "beta"}
        cell = per["alpha"]
        for key in (
            "n",
            "safety_rate",
            "within_budget_rate",
            "judge_safety_rate",
            "reward_mean",
            "reward_sd",
            "cost_mean",
            "refusal_rate",
            "seconds_per_prompt",
            "tokens_per_second",
            "lm_forward_passes",
            "scorer_calls",
        ):
            assert key in cell
        assert cell["n"] == 2
    assert json.loads((tmp_path / "run" / SUMMARY).read_text())["methods"] == summary["methods"]
    cfg = json.loads((tmp_path / "run" / CONFIG).read_text())
    assert cfg["methods"]["recontrol"]["steer"] == {
        "type": "ValueSteer",
        "steps": 30,
        "step_size": 0.5,
        "lam": 0.0,
        "needs_critic": True,
    }
    assert cfg["methods"]["recontrol"]["critic"]["base_identity"] == stack.lm.identity
    assert cfg["methods"]["bon"]["block"] is None and cfg["methods"]["args"]["block"] == 1  # --block: block-wise only
    assert all(r["steer_gradient_steps"] > 0 for r in recs if r["method"].startswith("recontrol"))

    calls = []
    again = run_eval(stack, sources, list(PRESETS), tmp_path / "run", on_batch=calls.append, **KW)
    assert calls == [] and _lines(tmp_path / "run") == recs and again["methods"] == summary["methods"]


def test_resume_after_sigkill_has_every_record_exactly_once(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(10)) + "\n")
    out = tmp_path / "run"
    args = [str(out), str(prompts), "--methods", "sample,bon"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.launcher", *args, "--delay", "0.3"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / RESULTS).is_file() and (out / RESULTS).read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = (out / RESULTS).read_bytes()
    assert 3 <= before.count(b"\n") < 20
    with open(out / RESULTS, "ab") as f:  # as if the kill hit in mid-write
        f.write(b'{"method": "sample", "set": "p", "id": "trunc')
    launcher.main(args)  # the same runner, same configuration: resumes
    after = (out / RESULTS).read_bytes()
    assert after.startswith(before)  # finished records were kept, not redone
    recs = [json.loads(x) for x in after.decode().splitlines()]
    keys = [(r["method"], r["id"]) for r in recs]
    assert len(keys) == 20 and len(set(keys)) == 20
    assert {r["method"] for r in recs} == {"sample", "bon"}


def test_a_partial_last_line_is_ignored_when_reading(tmp_path):
    p = tmp_path / RESULTS
    p.write_bytes(b'{"method": "a", "id": "1"}\n{"method": "a", "id": "2"}\n{"method": "a", "id"')
    assert [r["id"] for r in read_results(p)] == ["1", "2"]
    assert p.read_bytes().endswith(b'"id"')  # reading alone never edits
    read_results(p, repair=True)
    assert p.read_bytes().endswith(b'"2"}\n')
    p.write_bytes(b'{"method": "a", "id": "1"}\nnot json\n')
    with pytest.raises(Exception, match="line 2"):
        read_results(p)


def test_a_different_configuration_is_refused_with_the_setting(stack, tmp_path):
    a, _ = _files(tmp_path)
    out = tmp_path / "run"
    run_eval(stack, load_sources([a], limit=2), "sample", out, **KW)
    with pytest.raises(ConfigError, match=r"shared\.seed was 0, now 1"):
        run_eval(stack, load_sources([a], limit=2), "sample", out, **{**KW, "seed": 1})
    with pytest.raises(ConfigError, match=r"shared\.max_new_tokens"):
        run_eval(stack, load_sources([a], limit=2), "sample", out, **{**KW, "max_new_tokens": 7})
    with pytest.raises(ConfigError, match=r"shared\.settings\.candidates"):
        run_eval(stack, load_sources([a], limit=2), "sample", out, **{**KW, "settings": {"candidates": 8, "block": 3}})
    other_judge = replace(stack, judge=SlowJudge())
    other_judge.judge.threshold = 0.3
    with pytest.raises(ConfigError, match=r"shared\.models\.judge\.threshold"):
        run_eval(other_judge, load_sources([a], limit=2), "sample", out, **KW)
    with pytest.raises(ConfigError, match=r"prompt set 'alpha' held 2 prompts .* whose prompt 1 is another one"):
        run_eval(stack, load_sources([a], limit=2, sample_seed=0), "sample", out, **KW)  # prompts 2 and 3
    assert len(_lines(out)) == 2  # nothing was written by the refused runs


def test_resuming_with_the_first_prompts_of_a_set_adds_nothing_and_keeps_the_set(stack, tmp_path):
    """`eval --prompts FILE` then `--resume --prompts FILE:1`: the first prompt is done, the set keeps all 3."""
    a, _ = _files(tmp_path)
    out = tmp_path / "run"
    run_eval(stack, load_sources([a]), "sample", out, **KW)
    summary = run_eval(stack, load_sources([a], limit=1), "sample", out, **KW)
    assert len(_lines(out)) == 3 and summary["methods"]["sample"]["alpha"]["n"] == 3
    assert len(json.loads((out / CONFIG).read_text())["prompt_sets"]["alpha"]["ids"]) == 3


def test_new_methods_sets_and_more_prompts_extend_a_run(stack, tmp_path):
    a, b = _files(tmp_path)
    out = tmp_path / "run"
    run_eval(stack, load_sources([a], limit=1), "sample", out, **KW)
    summary = run_eval(stack, load_sources([a, b]), "sample,bon", out, **KW)  # alpha grows from 1 to 3 prompts
    recs = _lines(out)
    assert len(recs) == 2 * 5 and len({(r["method"], r["id"]) for r in recs}) == 10
    assert summary["methods"]["sample"]["alpha"]["n"] == 3 and summary["methods"]["bon"]["beta"]["n"] == 2
    cfg = json.loads((out / CONFIG).read_text())
    assert list(cfg["methods"]) == ["sample", "bon"] and list(cfg["prompt_sets"]) == ["alpha", "beta"]


def test_foreign_records_and_orphan_results_are_refused(stack, tmp_path):
    a, _ = _files(tmp_path)
    out = tmp_path / "run"
    run_eval(stack, load_sources([a], limit=1), "sample", out, **KW)
    rec = _lines(out)[0] | {"config_key": "0000000000000000", "id": "other"}
    with open(out / RESULTS, "a") as f:
        f.write(json.dumps(rec) + "\n")
    with pytest.raises(ConfigError, match="different configuration"):
        run_eval(stack, load_sources([a], limit=1), "sample", out, **KW)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / RESULTS).write_text("")
    with pytest.raises(ConfigError, match=r"no config\.json"):
        run_eval(stack, load_sources([a], limit=1), "sample", orphan, **KW)


def test_a_critic_method_without_a_critic_fails_before_any_work(tmp_path):
    a, _ = _files(tmp_path)
    with pytest.raises(ConfigError, match="method 'recontrol' needs a critic"):
        run_eval(tiny_stack(critic=False), load_sources([a]), "sample,recontrol", tmp_path / "run", **KW)
    assert not (tmp_path / "run").exists()


def _cli(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    return code, err


def test_cli_bad_input_exits_2_with_the_valid_choices(monkeypatch, capsys, tmp_path):
    out = str(tmp_path / "o")
    code, err = _cli(monkeypatch, capsys, "eval", "--prompts", "advbench", "--methods", "sample,nope", "--out", out)
    assert code == 2 and "'--methods'" in err and "inferenceguard-critic" in err and "recontrol" in err
    code, err = _cli(monkeypatch, capsys, "eval", "--prompts", "nosuch", "--methods", "sample", "--out", out)
    assert code == 2 and "advbench, harmbench" in err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    code, err = _cli(monkeypatch, capsys, "eval", "--prompts", str(binary), "--methods", "sample", "--out", out)
    assert code == 2 and "readable" in err
    code, err = _cli(monkeypatch, capsys, "report", str(tmp_path))
    assert code == 2 and "evaluation folder" in err
    assert not (tmp_path / "o").exists()
