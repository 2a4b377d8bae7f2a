"""Rollout collection: what is recorded, the one-rollout-serves-every-budget claim, crash and resume."""

import json

import pytest
import torch

from inferenceguard.engine import Stack
from inferenceguard.errors import ConfigError
from inferenceguard.training import rollouts as ro
from inferenceguard.training.rollouts import RolloutConfig, collect_rollouts, load_rollouts, prompt_key
from tests.stubs import CharCost, VowelReward
from tests.utils.tiny import tiny_lm

PROMPTS = ["hello there", "write a poem", "x", "tell me about the sea", "why is the sky blue", "count to ten"]
CFG = RolloutConfig(rollouts=2, block=4, max_new_tokens=10, batch_prompts=2, seed=3)


@pytest.fixture(scope="module")
def stack():
    return Stack(lm=tiny_lm(eos_boost=1.5), reward=VowelReward(), cost=CharCost(threshold=0.3))


def _same(a, b):
    for k in ("h", "charge", "step", "rollout", "prompt", "reward", "final_charge", "steps"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert a.prompts == b.prompts


def test_records_hidden_and_charges_of_every_block(stack, tmp_path):
    summary = collect_rollouts(stack, PROMPTS, tmp_path, CFG, progress=False)
    d = load_rollouts(tmp_path)
    assert summary["prompts"] == len(PROMPTS) == len(d.prompts) and summary["rollouts"] == 2 * len(PROMPTS)
    assert d.h.shape == (int(d.steps.sum()), stack.lm.hidden_size) == (summary["states"], stack.lm.hidden_size)
    assert bool((d.steps >= 1).all()) and bool((d.steps <= 3).all())  # ceil(10 / 4) blocks at most
    for r in range(len(d.reward)):
        c = d.charge[d.rollout == r]
        assert bool((c.diff() >= -1e-6).all()) and c[-1] == d.final_charge[r]  # charges only accumulate
        assert d.step[d.rollout == r].tolist() == list(range(int(d.steps[r])))
    # the two rollouts of a prompt differ (own seeds), and the texts sidecar names every rollout
    first = [d.h[d.rollout == r][-1] for r in (0, len(PROMPTS))]
    assert not torch.equal(*first)
    lines = [json.loads(x) for x in (tmp_path / "shard-00000.jsonl").read_text().splitlines()]
    assert {(x["key"], x["rollout"]) for x in lines} == {(prompt_key(p), r) for p in PROMPTS[:2] for r in (0, 1)}


def test_one_rollout_serves_every_budget(stack, tmp_path):
    """z_k(d) = d - C_k: the stored charges do not depend on the budget the engine tracked."""
    collect_rollouts(stack, PROMPTS[:2], tmp_path / "a", CFG, progress=False)
    collect_rollouts(
        stack, PROMPTS[:2], tmp_path / "b", RolloutConfig(**{**CFG.__dict__, "budget": 5.0}), progress=False
    )
    a, b = load_rollouts(tmp_path / "a"), load_rollouts(tmp_path / "b")
    assert torch.equal(a.h, b.h)
    assert torch.allclose(a.charge, b.charge, atol=1e-5) and float(a.charge.max()) > 0


def test_crash_then_resume_loses_and_duplicates_nothing(stack, tmp_path, monkeypatch):
    collect_rollouts(stack, PROMPTS, tmp_path / "clean", CFG, progress=False)
    calls = {"n": 0}
    real = ro.search

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # second batch, second rollout: after 2 prompts are done
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(ro, "search", crashing)
    with pytest.raises(RuntimeError, match="simulated"):
        collect_rollouts(stack, PROMPTS, tmp_path / "run", CFG, progress=False)
    assert len(load_rollouts(tmp_path / "run").prompts) == 2
    monkeypatch.setattr(ro, "search", real)
    with pytest.raises(ConfigError, match="resume"):
        collect_rollouts(stack, PROMPTS, tmp_path / "run", CFG, progress=False)
    s = collect_rollouts(stack, PROMPTS, tmp_path / "run", CFG, resume=True, progress=False)
    assert s["new_prompts"] == 4 and s["prompts"] == 6
    _same(load_rollouts(tmp_path / "run"), load_rollouts(tmp_path / "clean"))
    # resuming a finished folder does nothing
    assert collect_rollouts(stack, PROMPTS, tmp_path / "run", CFG, resume=True, progress=False)["new_prompts"] == 0


def test_crash_between_shard_and_index_redoes_that_batch(stack, tmp_path, monkeypatch):
    real = ro.write_text

    def fail_index(path, text):
        if path.name == ro.INDEX and text.count("\n") == 2:
            raise OSError("disk full")
        return real(path, text)

    monkeypatch.setattr(ro, "write_text", fail_index)
    with pytest.raises(OSError):
        collect_rollouts(stack, PROMPTS[:4], tmp_path, CFG, progress=False)
    assert (tmp_path / "shard-00001.safetensors").exists() and len(load_rollouts(tmp_path).prompts) == 2
    monkeypatch.setattr(ro, "write_text", real)
    collect_rollouts(stack, PROMPTS[:4], tmp_path, CFG, resume=True, progress=False)
    d = load_rollouts(tmp_path)
    assert sorted(d.prompts) == sorted(PROMPTS[:4]) and len(d.reward) == 8


def test_resume_with_other_settings_is_refused(stack, tmp_path):
    collect_rollouts(stack, PROMPTS[:2], tmp_path, CFG, progress=False)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        collect_rollouts(
            stack,
            PROMPTS,
            tmp_path,
            RolloutConfig(**{**CFG.__dict__, "max_new_tokens": 12}),
            resume=True,
            progress=False,
        )


def test_resume_with_another_lm_dtype_is_refused_and_an_older_folder_without_it_resumes(stack, tmp_path):
    collect_rollouts(stack, PROMPTS[:2], tmp_path, CFG, progress=False)
    meta = json.loads((tmp_path / ro.META).read_text())
    assert meta["lm_dtype"] == "float32"
    (tmp_path / ro.META).write_text(json.dumps({**meta, "lm_dtype": "bfloat16"}))  # as if rolled out in bf16
    with pytest.raises(ConfigError, match="lm_dtype: 'bfloat16' there, 'float32' now"):
        collect_rollouts(stack, PROMPTS[:3], tmp_path, CFG, resume=True, progress=False)
    (tmp_path / ro.META).write_text(json.dumps({k: v for k, v in meta.items() if k != "lm_dtype"}))  # older format
    assert collect_rollouts(stack, PROMPTS[:3], tmp_path, CFG, resume=True, progress=False)["new_prompts"] == 1


def test_no_usable_prompts_and_bad_settings_are_clear_errors(stack, tmp_path):
    with pytest.raises(ConfigError, match="no usable prompt"):
        collect_rollouts(stack, ["   ", ""], tmp_path, CFG, progress=False)
    with pytest.raises(ConfigError, match="at least one prompt"):
        collect_rollouts(stack, [], tmp_path, CFG, progress=False)
    with pytest.raises(ConfigError, match="rollouts"):
        RolloutConfig(rollouts=0)
    assert not (tmp_path / ro.INDEX).exists()


def test_prompt_file_sets_hold_out_the_evaluation_prompts(tmp_path):
    pytest.importorskip("yaml")
    try:
        from inferenceguard.datasets import advbench, benign_prompts

        adv, ben = advbench(), benign_prompts()
    except Exception as e:  # data packages missing
        pytest.skip(str(e))
    f = tmp_path / "p.txt"
    f.write_text("\n".join([adv[0], adv[60], ben[5], ben[40], "a new prompt", adv[60]]) + "\n")
    got = [p for p, _ in ro.training_prompts(str(f))]
    assert got == [adv[60], ben[40], "a new prompt"]
    sets = ro.training_prompts("advbench:20,benign:10", seed=1)
    assert len(sets) == 30 and not {p for p, _ in sets} & set(adv[:50] + ben[:30])
    assert sets == ro.training_prompts("advbench:20,benign:10", seed=1)
    empty = tmp_path / "e.txt"
    empty.write_text(adv[0] + "\n")
    with pytest.raises(ConfigError, match="no usable training prompt"):
        ro.training_prompts(str(empty))
    with pytest.raises(ConfigError, match="must be a set"):
        ro.training_prompts("nosuchset:3")
