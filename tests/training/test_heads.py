"""Building the scorer heads: the split, the fit/export, the selection, and a whole tiny build."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inferenceguard.datasets import Row
from inferenceguard.errors import ConfigError
from inferenceguard.scorers.defaults import default_stack_info, load_scorer
from inferenceguard.scorers.embedded import EncoderHeadScorer, ProbeCostScorer
from inferenceguard.scorers.heads import LinearHead
from inferenceguard.training.heads import (
    build_default_heads,
    fit_head,
    probe_layer_candidates,
    reward_rows,
    select_by_group_cv,
    split_groups,
)
from tests.utils.tiny import tiny_encoder, tiny_lm


def test_split_is_by_group_seeded_and_a_quarter():
    groups = [f"g{i % 40}" for i in range(200)]  # 40 groups, 5 rows each
    held = split_groups(groups, seed=0)
    assert len(held) == 10 and held <= set(groups)
    assert split_groups(list(reversed(groups)), seed=0) == held  # order of rows does not matter
    assert split_groups(groups, seed=1) != held
    with pytest.raises(ConfigError, match="share"):
        split_groups(groups, seed=0, share=1.5)
    with pytest.raises(ConfigError, match="groups"):
        split_groups(["only"], seed=0)


def test_fit_head_exports_the_sklearn_model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 7)) * [1, 2, 3, 4, 5, 6, 100] + 10
    y = (X[:, 0] + 0.1 * X[:, 6] + rng.normal(size=120) > 11).astype(int)
    head = fit_head(X, y, 0.5, kind="cost", name="t", features={})
    scaler = StandardScaler().fit(X)
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=3000).fit(scaler.transform(X), y)
    expected = ref.predict_proba(scaler.transform(X))[:, 1]
    assert np.allclose(head(torch.from_numpy(X).float()).numpy(), expected, atol=1e-4)


def test_selection_prefers_the_informative_features():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 40)
    groups = np.array([f"g{i // 2}" for i in range(80)])
    signal = y[:, None] + rng.normal(scale=0.5, size=(80, 3))
    noise = rng.normal(size=(80, 3))
    key, C, table = select_by_group_cv({"noise": noise, "signal": signal}, y, groups, c_grid=(0.1, 1.0))
    assert key == "signal" and C in (0.1, 1.0)
    assert table["signal"]["0.1"] > table["noise"]["0.1"]


def test_layer_candidates_stay_in_range():
    assert probe_layer_candidates(30)[0] == (15, 30)
    for n in (1, 2, 30):
        assert all(0 <= x <= n for c in probe_layer_candidates(n) for x in c)


def refusal_rows() -> list[Row]:
    rows = []
    for i in range(12):
        rows.append(Row(f"how do I cook dish {i}?", f"Cook dish {i} slowly with garlic and oil.", 0, "rho", f"rho:{i}"))
        rows.append(Row(f"how do I hurt person {i}?", f"Hit person {i} hard with a stick.", 0, "rho", f"rho:{i}"))
        rows.append(Row(f"tell me fact {i}", f"I'm sorry, I can't help with fact {i}.", 1, "pyrit-refusal", f"p:f{i}"))
        rows.append(
            Row(f"tell me fact {i}", f"Fact {i}: water boils at 100 C at sea level.", 0, "pyrit-refusal", f"p:f{i}")
        )
    return rows


def harm_rows() -> list[Row]:
    rows = []
    for i in range(24):
        rows.append(Row(f"request {i}", f"bomb bomb kill {i} weapon poison", 1, "pyrit-objective", f"p:r{i}"))
        rows.append(
            Row(f"request {i}", f"I can't help, but here is a cookie recipe {i}.", 0, "pyrit-objective", f"p:r{i}")
        )
    return rows


def test_reward_rows_make_negatives_inside_each_side_of_the_split():
    rows = refusal_rows()
    held = split_groups([r.group for r in rows], seed=0)
    out = reward_rows(rows, held, seed=0)
    made = [r for r in out if r.source in ("off-topic", "transplanted-refusal")]
    assert len(made) == 2 * sum(r.source == "rho" for r in rows) and all(r.label == 0 for r in made)
    side = {r.response: r.group in held for r in rows}
    for r in made:
        assert side[r.response] == (r.group in held)  # the borrowed text comes from the same side
    flipped = {(r.prompt, r.response): r.label for r in out if r.source == "pyrit-refusal"}
    assert flipped[("tell me fact 0", "I'm sorry, I can't help with fact 0.")] == 0  # label 1 = helpful now


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    lm, enc = tiny_lm(), tiny_encoder()
    manifest = build_default_heads(
        out,
        seed=0,
        progress=False,
        lm=lm,
        encoder=enc,
        lm_spec=None,
        encoder_spec=None,
        harm_rows=harm_rows(),
        refusal_rows=refusal_rows(),
    )
    return out, manifest, lm, enc


def test_tiny_build_writes_heads_and_manifest(tiny_build):
    out, manifest, lm, _ = tiny_build
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "cost_probe.json",
        "cost_probe.safetensors",
        "judge_minilm.json",
        "judge_minilm.safetensors",
        "manifest.json",
        "reward_minilm.json",
        "reward_minilm.safetensors",
    ]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["command"] == "inferenceguard build-scorers --seed 0" and manifest["seed"] == 0
    for key in ("cost_model", "judge", "reward_model"):
        assert 0.0 <= manifest[key]["heldout_auc"] <= 1.0
    assert manifest["cost_model"]["heldout_auc"] >= 0.9  # the tiny task is separable
    cost = LinearHead.load(out / "cost_probe")
    assert cost.features["base_identity"] == lm.identity and cost.threshold == 0.5
    assert LinearHead.load(out / "reward_minilm").link == "identity"
    info = default_stack_info(out)
    assert set(info) == {"reward_model", "cost_model", "judge"}
    assert info["cost_model"]["heldout_auc"] == manifest["cost_model"]["heldout_auc"]


def test_tiny_build_heads_load_as_scorers_and_reproduce_the_heldout_auc(tiny_build):
    out, manifest, lm, enc = tiny_build
    cost = load_scorer(str(out), "cost", lm=lm)
    assert isinstance(cost, ProbeCostScorer) and cost.lm is lm
    rows = harm_rows()
    held = split_groups([r.group for r in rows] + [r.group for r in refusal_rows()], seed=0)
    test = [r for r in rows if r.group in held]
    from sklearn.metrics import roc_auc_score

    s = cost.score([r.prompt for r in test], [r.response for r in test])
    assert round(roc_auc_score([r.label for r in test], s.numpy()), 4) == manifest["cost_model"]["heldout_auc"]
    judge = load_scorer(str(out / "judge_minilm.json"), "judge", encoder=enc)
    assert isinstance(judge, EncoderHeadScorer) and judge.encoder is enc


def test_build_is_deterministic(tiny_build, tmp_path):
    out, manifest, lm, enc = tiny_build
    again = build_default_heads(
        tmp_path,
        seed=0,
        progress=False,
        lm=lm,
        encoder=enc,
        lm_spec=None,
        encoder_spec=None,
        harm_rows=harm_rows(),
        refusal_rows=refusal_rows(),
    )
    for key in ("cost_model", "judge", "reward_model"):
        assert again[key]["heldout_auc"] == manifest[key]["heldout_auc"]
        assert again[key]["selection"] == manifest[key]["selection"]
    a, b = LinearHead.load(out / "cost_probe"), LinearHead.load(tmp_path / "cost_probe")
    assert torch.equal(a.coef, b.coef) and a.intercept == b.intercept
