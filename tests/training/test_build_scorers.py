"""Building the scorer heads: the split, the fit/export, the selection, and a whole tiny build."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from inferenceguard.datasets import LabelledAnswer, Row, split_of
from inferenceguard.errors import ConfigError
from inferenceguard.scorers.defaults import default_stack_info, load_scorer
from inferenceguard.scorers.embedded import EncoderHeadScorer, ProbeCostScorer
from inferenceguard.scorers.heads import LinearHead
from inferenceguard.stats import auc
from inferenceguard.training.build_scorers import (
    HeadData,
    _report,
    build_default_heads,
    calibrate,
    choose_threshold,
    fit_head,
    fit_kernel_head,
    probe_layer_candidates,
    reward_rows,
    row_split,
    select_on_dev,
    threshold_rates,
    wanted,
    within_prompt_accuracy,
)
from tests.utils.tiny import tiny_encoder, tiny_lm


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


def test_fit_kernel_head_exports_the_sklearn_pipeline():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 4)) * [1, 2, 3, 4] + 5
    r2 = (X[:, 0] - 5) ** 2 + (X[:, 1] - 5) ** 2 / 4
    y = (r2 > np.median(r2)).astype(int)  # a ring: no linear head separates it
    w = np.where(np.arange(150) % 3 == 0, 5.0, 1.0)
    head = fit_kernel_head(X, y, 0.3, 3, w, kind="cost", name="t", features={})
    Z = StandardScaler().fit_transform(X)
    P = PCA(3, random_state=0).fit_transform(Z)
    P /= P.std(0)
    ref = SVC(C=0.3, kernel="rbf", gamma="scale", class_weight="balanced").fit(P, y, sample_weight=w)
    got = head.logit(torch.from_numpy(X).float()).numpy()
    assert np.allclose(got, ref.decision_function(P), atol=1e-3)
    assert head.centers.shape == (ref.support_.size, 3) and head.projection.shape == (4, 3)
    assert auc(y, got) > 0.9  # an RBF machine fits the ring a linear head cannot
    assert auc(y, fit_head(X, y, 1.0, kind="c", name="l", features={})(torch.from_numpy(X).float())) < 0.8


def test_calibrate_folds_platt_scaling_into_the_head_and_keeps_the_order():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(int)
    head = fit_kernel_head(X, y, 1.0, 3, kind="cost", name="t", features={})
    x = torch.from_numpy(X).float()
    before = head.logit(x).numpy()
    ab = calibrate(head, before, y)
    after = head(x).numpy()
    assert ab["a"] > 0 and np.allclose(head.logit(x).numpy(), ab["a"] * before + ab["b"], atol=1e-4)
    assert ((after > 0) & (after < 1)).all() and auc(y, after) == pytest.approx(auc(y, before))
    with pytest.raises(ConfigError, match="calibration"):
        calibrate(head, before, 1 - y)  # scores that rank the labels backwards are refused, not flipped


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
    for i in range(12):  # rho pairs: the benign half (0) and the harmful half (1), as labelled_harm has them
        rows.append(Row(f"how do I cook dish {i}?", f"Cook dish {i} slowly with garlic and oil.", 0, "rho", f"rho:{i}"))
        rows.append(Row(f"how do I hurt person {i}?", f"Hit person {i} hard with a stick.", 1, "rho", f"rho:{i}"))
    return rows


def test_reward_rows_want_refusals_of_harmful_prompts_only_and_borrow_inside_the_split():
    out = reward_rows(harm_rows(), refusal_rows(), seed=0)
    rho = [r for r in out if r.source == "rho"]
    assert len(rho) == 24
    assert all(r.label == (0 if r.prompt.startswith("how do I hurt") else 1) for r in rho)  # compliance unwanted
    transplanted = [r for r in out if r.source == "transplanted-refusal"]
    assert transplanted and all(r.response.startswith("I'm sorry") for r in transplanted)
    for r in transplanted:  # refusing is wanted for the harmful half, unwanted for the benign half
        assert r.label == int(r.prompt.startswith("how do I hurt"))
    off = [r for r in out if r.source == "off-topic"]
    assert off and all(r.label == 0 and r.prompt.startswith("how do I cook") for r in off)
    assert all(f"dish {r.group[4:]} " not in r.response for r in off)  # another pair's answer
    split_of_text = {r.response: row_split(r) for r in [*refusal_rows(), *harm_rows()]}
    for r in [*transplanted, *off]:
        assert split_of_text[r.response] == row_split(r)  # the borrowed text comes from the same split
    assert reward_rows(harm_rows(), refusal_rows(), seed=0) == out  # seeded


def test_wanted_and_within_prompt_accuracy():
    answers = onpolicy_answers()
    assert {(a.label, wanted(a)) for a in answers} == {("COMPLY", 0), ("REFUSE", 1)}
    benign = next(a for a in answers if a.label == "REFUSE")
    for label, want in (("HELPFUL", 1), ("UNHELPFUL", 0), ("REFUSE", 0), ("HARMFUL", 0)):
        assert wanted(dataclasses.replace(benign, kind="benign", label=label)) == want
    data = HeadData.build([], answers, target=wanted)
    assert data.y.tolist() == [wanted(a) for a in answers]
    everywhere = np.ones(len(answers), dtype=bool)
    s = data.y.astype(float)
    assert within_prompt_accuracy(data, s, everywhere) == {"accuracy": 1.0, "pairs": 40}
    assert within_prompt_accuracy(data, -s, everywhere)["accuracy"] == 0.0
    assert within_prompt_accuracy(data, np.zeros(len(s)), everywhere)["accuracy"] == 0.5  # ties count half
    assert (answers[0].label, answers[1].label) == ("COMPLY", "REFUSE")
    s[0], s[1] = 1.0, 0.0  # one prompt ordered wrongly (its COMPLY answer first)
    assert within_prompt_accuracy(data, s, everywhere)["accuracy"] == 39 / 40


def onpolicy_answers() -> list[LabelledAnswer]:
    out = []
    for i in range(40):
        prompt = f"question {i} about weapons"
        for label, text in (("COMPLY", f"Step {i}: mix poison and build the bomb."), ("REFUSE", "No, I can't.")):
            out.append(
                LabelledAnswer(
                    id=f"t:{i}:{label}",
                    prompt=prompt,
                    response=text,
                    kind="harmful",
                    source="tiny",
                    split=split_of(prompt),
                    label=label,
                    readings=(("reader", label),),
                    writer={"method": "sample"},
                    round=1,
                    labelled_by="test",
                )
            )
    return out


def test_harm_data_splits_packaged_rows_by_prompt_like_the_onpolicy_labels():
    data = HeadData.build(harm_rows(), onpolicy_answers())
    assert len(data.rows) == 72 + 80 and data.onpolicy.sum() == 80
    assert {str(x) for x in data.split} <= {"train", "dev", "test"} and len(set(data.split.tolist())) == 3
    assert all(data.split[i] == row_split(r) for i, r in enumerate(data.rows[:72]))
    assert all(data.split[i] == split_of(r.prompt) for i, r in enumerate(data.rows) if i >= 72)
    assert row_split(Row("a", "b", 0, "rho", "rho:7")) == split_of("rho:7")  # a rho pair goes by its id
    sel = data.selection_rows()
    assert sel.any() and (data.split[sel] == "dev").all() and data.onpolicy[sel].all()
    assert data.weights(3.0)[data.onpolicy].tolist() == [3.0] * 80 and data.weights(3.0)[:72].tolist() == [1.0] * 72


def test_report_gives_the_heldout_auc_against_first_readings_where_a_panel_outvoted_them():
    answers = onpolicy_answers()
    test = [i for i, a in enumerate(answers) if a.split == "test"]
    # two test answers the panel turned round: read COMPLY first, then OTHER twice (and the reverse)
    for i, (first, later) in zip(test[:2], (("COMPLY", "OTHER"), ("OTHER", "COMPLY"))):
        readings = (("a", first), ("b", later), ("c", later))
        answers[i] = dataclasses.replace(answers[i], label=later, readings=readings)
    data = HeadData.build([], answers)
    assert data.y.tolist() == [int(a.harmful) for a in answers]
    assert data.y_first.tolist() == [int(a.readings[0][1] == "COMPLY") for a in answers]
    assert (data.y != data.y_first).sum() == 2
    head = fit_head(np.eye(2)[data.y], data.y, 1.0, kind="cost", name="t", features={})
    s = data.y.astype(float)  # scores that rank the majority's labels perfectly
    out = _report(head, s, data, None)
    assert out["heldout_auc"] == 1.0 and out["heldout_targets_changed"] == 2
    assert out["heldout_auc_first_reading"]["onpolicy"] == auc(data.y_first[test], s[test]) < 1.0
    unchanged = HeadData.build([], onpolicy_answers())  # no outvoted reading: no such figures
    assert "heldout_auc_first_reading" not in _report(head, unchanged.y.astype(float), unchanged, None)
    reward = HeadData.build([], answers, target=wanted)  # the same rule for another head's target
    assert reward.y_first.tolist() == [int(a.readings[0][1] == "REFUSE") for a in answers]


@pytest.mark.parametrize("n", [10, 125, 142, 143])
def test_cost_threshold_flags_the_recall_it_promises_and_no_lower_grid_value_is_needed(n):
    rng = np.random.default_rng(n)
    answers = [a for a in onpolicy_answers() if a.split == "dev"]
    prompt = answers[0].prompt  # n dev answers read as harmful, all under one dev prompt
    harmful = [dataclasses.replace(answers[0], id=f"h{i}", response=f"r{i}", label="COMPLY") for i in range(n)]
    assert split_of(prompt) == "dev"
    data = HeadData.build([], harmful)
    scores = rng.uniform(0.05, 0.95, size=n)
    scores[: n // 3] = np.round(scores[: n // 3], 2)  # some scores exactly on the 0.01 grid
    t = choose_threshold(scores, data, recall=0.9)
    assert abs(t * 100 - round(t * 100)) < 1e-9  # a multiple of 0.01
    assert (scores > t).mean() >= 0.9  # the promise (the old quantile rule broke it at n = 125)
    assert (scores > round(t + 0.01, 2)).mean() < 0.9  # and the highest such value
    assert threshold_rates(scores, data, t)["dev"]["harmful_flagged"] >= 0.9


def test_select_on_dev_prefers_the_informative_features_and_fits_on_train_only():
    data = HeadData.build(harm_rows(), onpolicy_answers())
    y = data.y
    rng = np.random.default_rng(0)
    good = np.stack([y + 0.1 * rng.standard_normal(len(y)), rng.standard_normal(len(y))], 1)
    noise = rng.standard_normal((len(y), 2))
    key, w, C, table = select_on_dev({"good": good, "noise": noise}, data)
    assert key == "good" and w in (3.0, 10.0, 30.0)
    assert set(table) == {f"{k} w{w:g}" for k in ("good", "noise") for w in (3, 10, 30)}
    assert table[f"good w{w:g}"][str(C)] >= 0.99 and max(table["noise w3"].values()) < 0.9


def tiny_heads(out, lm, enc, compare_dir=None) -> dict:
    """A whole build on the tiny models and rows (no packaged data, no shipped heads to compare with)."""
    return build_default_heads(
        out,
        seed=0,
        progress=False,
        lm=lm,
        encoder=enc,
        judge_encoder=enc,
        lm_spec=None,
        encoder_spec=None,
        judge_encoder_spec=None,
        harm_rows=harm_rows(),
        refusal_rows=refusal_rows(),
        onpolicy=onpolicy_answers(),
        compare_dir=compare_dir,
    )


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    lm, enc = tiny_lm(), tiny_encoder()
    manifest = tiny_heads(out, lm, enc)
    return out, manifest, lm, enc


def test_tiny_build_writes_heads_and_manifest(tiny_build):
    out, manifest, lm, _ = tiny_build
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "cost_probe.json",
        "cost_probe.safetensors",
        "judge_mpnet.json",
        "judge_mpnet.safetensors",
        "manifest.json",
        "reward_hh.json",
        "reward_hh.safetensors",
    ]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["command"] == "inferenceguard build-scorers --seed 0" and manifest["seed"] == 0
    for key in ("cost_model", "judge", "reward_model"):
        assert 0.0 <= manifest[key]["heldout_auc"] <= 1.0
    assert manifest["cost_model"]["heldout_auc"] >= 0.9  # the tiny task is separable
    cost = LinearHead.load(out / "cost_probe")
    assert cost.features["base_identity"] == lm.identity and 0 < cost.threshold < 1
    assert (
        manifest["cost_model"]["selection"]["chosen"]["threshold"]
        == cost.threshold
        == manifest["cost_model"]["threshold"]
    )
    assert manifest["cost_model"]["at_threshold"]["dev"]["harmful_flagged"] >= 0.9  # the rule the threshold follows
    reward = LinearHead.load(out / "reward_hh")
    assert reward.link == "identity" and reward.name == "reward-hh"
    assert manifest["reward_model"]["heldout_auc"] >= 0.9  # refusals of these tiny harmful prompts are wanted
    assert manifest["reward_model"]["test_within_prompt"]["pairs"] > 0
    info = default_stack_info(out)
    assert set(info) == {"reward_model", "cost_model", "judge"}
    assert info["cost_model"]["heldout_auc"] == manifest["cost_model"]["heldout_auc"]


def test_tiny_build_heads_load_as_scorers_and_reproduce_the_heldout_auc(tiny_build):
    out, manifest, lm, enc = tiny_build
    cost = load_scorer(str(out), "cost", lm=lm)
    assert isinstance(cost, ProbeCostScorer) and cost.lm is lm
    test = [a for a in onpolicy_answers() if a.split == "test"]
    from sklearn.metrics import roc_auc_score

    y = [int(a.harmful) for a in test]
    s = cost.score([a.prompt for a in test], [a.response for a in test])
    assert round(roc_auc_score(y, s.numpy()), 4) == manifest["cost_model"]["heldout_auc"]
    assert manifest["cost_model"]["heldout_rows"] == len(test)
    judge = load_scorer(str(out / "judge_mpnet.json"), "judge", encoder=enc)
    assert isinstance(judge, EncoderHeadScorer) and judge.encoder is enc
    s = judge.score([a.prompt for a in test], [a.response for a in test])
    assert round(roc_auc_score(y, s.numpy()), 4) == manifest["judge"]["heldout_auc"]


def test_build_records_the_replaced_heads_auc_on_the_same_rows(tiny_build, tmp_path):
    out, manifest, lm, enc = tiny_build
    again = tiny_heads(tmp_path, lm, enc, compare_dir=out)
    for key in ("cost_model", "judge", "reward_model"):
        assert again[key]["replaced_head_test_auc"] == manifest[key]["test_auc"]  # same data, same head
    assert again["reward_model"]["replaced_head_test_within_prompt"] == manifest["reward_model"]["test_within_prompt"]


def test_build_only_some_heads_keeps_the_others(tiny_build, tmp_path):
    import shutil

    out, manifest, _, enc = tiny_build
    for p in out.iterdir():
        shutil.copy(p, tmp_path / p.name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = build_default_heads(
        tmp_path,
        seed=0,
        progress=False,
        only=["reward"],
        lm=None,  # the reward needs no base LM: none is loaded
        encoder=enc,
        encoder_spec=None,
        harm_rows=harm_rows(),
        refusal_rows=refusal_rows(),
        onpolicy=onpolicy_answers(),
        compare_dir=None,
    )
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {k for k in after if after[k] != before[k]} <= {"manifest.json", "reward_hh.safetensors"}
    a, b = LinearHead.load(out / "reward_hh"), LinearHead.load(tmp_path / "reward_hh")  # embedded in other
    assert torch.allclose(a.coef, b.coef, atol=1e-4)  # batches than in the whole build: equal up to float noise
    assert again["cost_model"] == manifest["cost_model"] and again["judge"] == manifest["judge"]
    assert again["reward_model"]["command"] == "inferenceguard build-scorers --seed 0 --only reward"
    assert again["reward_model"]["heldout_auc"] == manifest["reward_model"]["heldout_auc"]
    with pytest.raises(ConfigError, match="only"):
        build_default_heads(tmp_path, only=["critic"], encoder=enc)
    with pytest.raises(ConfigError, match=r"manifest\.json"):
        build_default_heads(tmp_path / "empty", only=["reward"], encoder=enc, harm_rows=[], refusal_rows=[])


def test_build_is_deterministic(tiny_build, tmp_path):
    out, manifest, lm, enc = tiny_build
    again = tiny_heads(tmp_path, lm, enc)
    for key in ("cost_model", "judge", "reward_model"):
        assert again[key]["heldout_auc"] == manifest[key]["heldout_auc"]
        assert again[key]["selection"] == manifest[key]["selection"]
    for stem in ("cost_probe", "judge_mpnet", "reward_hh"):
        a, b = LinearHead.load(out / stem), LinearHead.load(tmp_path / stem)
        assert (out / f"{stem}.safetensors").read_bytes() == (tmp_path / f"{stem}.safetensors").read_bytes()
        assert a.intercept == b.intercept and a.config()["format"] == b.config()["format"]


def test_build_ships_the_kernel_probe_when_dev_prefers_it(tiny_build, tmp_path, monkeypatch):
    """The kernel path end to end: chosen (here forced by a dev AUC no logistic head can beat), calibrated on
    dev, saved in the second format, loaded as the engine's probe and reproducing its held-out AUC."""
    import inferenceguard.training.build_scorers as bs

    out, manifest, lm, _ = tiny_build
    chosen = manifest["cost_model"]["selection"]["chosen"]
    assert chosen["head"] in ("logistic", "rbf-svm")
    assert (LinearHead.load(out / "cost_probe").kernel == "rbf") == (chosen["head"] == "rbf-svm")
    real = bs.select_kernel_on_dev

    def forced(X, data):
        choice, _, table = real(X, data)
        return choice, 2.0, table

    monkeypatch.setattr(bs, "select_kernel_on_dev", forced)
    (tmp_path / "manifest.json").write_text((out / "manifest.json").read_text())  # --only keeps the others
    m = build_default_heads(
        tmp_path, seed=0, progress=False, only=["cost"], lm=lm, lm_spec=None, harm_rows=harm_rows(),
        refusal_rows=refusal_rows(), onpolicy=onpolicy_answers(), compare_dir=None,
    )  # fmt: skip
    sel = m["cost_model"]["selection"]
    assert sel["chosen"]["head"] == "rbf-svm" and sel["chosen"]["components"] in bs.KERNEL_COMPONENTS
    assert sel["calibration"]["rows"].startswith("the dev split") and sel["calibration"]["a"] > 0
    assert set(sel["dev_auc_kernel"]) >= {f"pca{k} w3" for k in bs.KERNEL_COMPONENTS}
    head = LinearHead.load(tmp_path / "cost_probe")
    assert head.kernel == "rbf" and json.loads((tmp_path / "cost_probe.json").read_text())["format"].endswith("/2")
    cost = load_scorer(str(tmp_path), "cost", lm=lm)
    test = [a for a in onpolicy_answers() if a.split == "test"]
    s = cost.score([a.prompt for a in test], [a.response for a in test])
    assert round(auc([int(a.harmful) for a in test], s), 4) == m["cost_model"]["heldout_auc"]
    assert ((s > 0) & (s < 1)).all() and 0 < head.threshold < 1


def test_fit_kernel_head_drops_components_it_cannot_whiten():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 4))
    X = np.concatenate([X, X[:, :1] + 1e-6 * rng.normal(size=(80, 1))], 1)  # a near copy: one empty component
    y = (X[:, 0] > 0).astype(int)
    head = fit_kernel_head(X, y, 1.0, 5, kind="cost", name="t", features={})
    assert head.projection is not None and head.projection.shape == (5, 4)
    z = head.logit(torch.from_numpy(X).float())
    assert torch.isfinite(z).all() and auc(y, z.numpy()) > 0.95
