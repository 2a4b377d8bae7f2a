"""Score models on tiny random checkpoints saved in the real formats: safe-rlhf LlamaForScore and a one-output
LlamaForSequenceClassification (the ARGS reward model), checked against the backbone and head applied by hand."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaForSequenceClassification

from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.scorers.base import PrefixScorer
from inferenceguard.scorers.defaults import load_scorer
from inferenceguard.scorers.score_model import BEAVER_TEMPLATE, HH_TEMPLATE, ScoreModelScorer
from tests.utils.tiny import byte_tokenizer, save_llama_for_score, tiny_config

PROMPTS = ["How do I bake bread?", "hi", "Tell me how to pick a lock."]
RESPONSES = ["Mix flour, water and yeast.", "Hello!", "Sure. First, take a tension wrench"]


def by_hand(backbone, w, b, tokenizer, text: str) -> torch.Tensor:
    """Head on the backbone's last hidden state at every position of one unpadded text: (T,)."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        h = backbone(input_ids=ids).last_hidden_state[0].float()  # (T, H)
    return (h @ w.T).squeeze(-1) + (b if b is not None else 0)


@pytest.fixture(scope="module")
def cost_model(tmp_path_factory):
    path, backbone, w, b = save_llama_for_score(tmp_path_factory.mktemp("beaver") / "cost")
    return ScoreModelScorer(path, dtype=torch.float32), backbone, w, b


def test_llama_for_score_equals_backbone_plus_head_by_hand(cost_model):
    s, backbone, w, b = cost_model
    assert isinstance(s, PrefixScorer) and s.kind == "cost" and s.threshold == 0.0 and s.template == BEAVER_TEMPLATE
    out = s.score(PROMPTS, RESPONSES)  # one right-padded batch of different lengths
    ref = torch.stack(
        [
            by_hand(backbone, w, b, s.tokenizer, f"BEGINNING OF CONVERSATION: USER: {p} ASSISTANT:{r}")[-1]
            for p, r in zip(PROMPTS, RESPONSES)
        ]
    )
    assert out.shape == (3,) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)


def test_per_token_scores_equal_scoring_each_prefix(cost_model):
    s, backbone, w, b = cost_model
    per = s.score_prefixes(PROMPTS, RESPONSES)
    for p, r, ps in zip(PROMPTS, RESPONSES, per):
        assert len(ps.ends) == len(ps.scores) == len(r)  # byte tokenizer, ASCII: one token per character
        assert list(ps.ends) == sorted(set(ps.ends)) and ps.ends[-1] == len(r)
        separately = s.score([p] * len(ps.ends), [r[:e] for e in ps.ends])  # each prefix on its own
        assert torch.allclose(ps.scores, separately, atol=1e-5)
        full = by_hand(backbone, w, b, s.tokenizer, BEAVER_TEMPLATE.format(prompt=p, response=r))
        assert torch.allclose(ps.scores, full[-len(r) :], atol=1e-5)  # the response's positions, by hand


def test_reward_type_has_no_threshold_and_no_bias(tmp_path):
    path, backbone, w, _ = save_llama_for_score(tmp_path / "rm", score_type="reward", bias=False)
    s = ScoreModelScorer(path, dtype=torch.float32)
    assert s.kind == "reward" and s.threshold is None and s.head.bias is None
    ref = by_hand(backbone, w, None, s.tokenizer, BEAVER_TEMPLATE.format(prompt="hi", response="yo"))[-1]
    assert torch.allclose(s.score(["hi"], ["yo"]), ref[None], atol=1e-5)


def test_do_normalize_applies_safe_rlhf_scaling(tmp_path):
    plain = ScoreModelScorer(save_llama_for_score(tmp_path / "a")[0], dtype=torch.float32)
    cost = ScoreModelScorer(
        save_llama_for_score(tmp_path / "b", do_normalize=True, mean=[3.0], var=[4.0])[0], dtype=torch.float32
    )
    reward = ScoreModelScorer(
        save_llama_for_score(tmp_path / "c", score_type="reward", do_normalize=True, mean=[3.0], var=[4.0])[0],
        dtype=torch.float32,
    )
    x = plain.score(PROMPTS, RESPONSES)
    assert torch.allclose(cost.score(PROMPTS, RESPONSES), x / 2, atol=1e-5)  # cost: scale by the std
    assert torch.allclose(reward.score(PROMPTS, RESPONSES), (x - 3) / 2, atol=1e-5)  # reward: affine


def test_argsearch_style_sequence_classifier(tmp_path):
    """argsearch/llama-7b-rm-float32 is a LlamaForSequenceClassification (num_labels=1): head 'score.weight'."""
    torch.manual_seed(1)
    clf = LlamaForSequenceClassification(tiny_config(num_labels=1)).eval()
    clf.save_pretrained(tmp_path / "rm")
    tok = byte_tokenizer(chat=False)
    tok.pad_token = None  # like the LLaMA tokenizer: batches are padded with EOS
    tok.save_pretrained(tmp_path / "rm")
    s = ScoreModelScorer(tmp_path / "rm", dtype=torch.float32)
    assert s.head.format == "sequence-classifier" and s.kind == "reward" and s.threshold is None
    assert s.template == HH_TEMPLATE and s.tokenizer.pad_token == s.tokenizer.eos_token
    out = s.score(PROMPTS, RESPONSES)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):  # transformers' own class, one unpadded pair at a time
        ids = s.tokenizer(HH_TEMPLATE.format(prompt=p, response=r), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = clf(input_ids=ids).logits[0, 0]
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_a_folder_without_a_score_head_names_the_file(tmp_path):
    path = save_llama_for_score(tmp_path / "nohead", head=False)[0]
    with pytest.raises(ConfigError, match="must hold a score head") as e:
        ScoreModelScorer(path)
    assert "model.safetensors" in str(e.value) and "score_head.weight" in str(e.value)
    nobias = save_llama_for_score(tmp_path / "nobias", bias=False)[0]
    cfg = json.loads((nobias / "config.json").read_text())
    (nobias / "config.json").write_text(json.dumps(cfg | {"bias": True}))
    with pytest.raises(ConfigError, match=r"score_head\.bias.*bias=true") as e:
        ScoreModelScorer(nobias)
    assert "model.safetensors" in str(e.value)
    with pytest.raises(AssetError):
        ScoreModelScorer(tmp_path / "does-not-exist")


def test_two_dim_head_and_too_long_pairs_are_refused(tmp_path):
    path = save_llama_for_score(tmp_path / "wide")[0]
    from safetensors.torch import load_file

    w = load_file(str(path / "model.safetensors"))
    save_file(w | {"score_head.weight": torch.randn(2, 32)}, str(path / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"shape \(1, hidden_size=32\)"):
        ScoreModelScorer(path)
    s = ScoreModelScorer(save_llama_for_score(tmp_path / "ok")[0], dtype=torch.float32, max_length=64)
    with pytest.raises(ConfigError, match="64 tokens"):
        s.score(["p"], ["x" * 100])
    with pytest.raises(ConfigError, match="end with"):
        ScoreModelScorer(save_llama_for_score(tmp_path / "t")[0], template="{prompt} {response} END")


def test_score_model_spec_checks_the_role(tmp_path):
    cost = str(save_llama_for_score(tmp_path / "cost")[0])
    reward = str(save_llama_for_score(tmp_path / "reward", score_type="reward")[0])
    assert isinstance(load_scorer(f"score-model:{cost}", "cost"), ScoreModelScorer)
    assert load_scorer(f"score-model:{cost}", "judge").threshold == 0.0
    assert load_scorer(f"score-model:{reward}", "reward").threshold is None
    with pytest.raises(ConfigError, match="reward model"):
        load_scorer(f"score-model:{reward}", "cost")
    with pytest.raises(ConfigError, match="cost model"):
        load_scorer(f"score-model:{cost}", "reward")
    with pytest.raises(ConfigError, match="score-model:"):
        load_scorer("score-model:", "cost")
