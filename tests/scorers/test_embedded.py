"""The embedded scorers on tiny random models: the probe's feature contract, the encoder heads, the cache."""

from __future__ import annotations

import pytest
import torch

from inferenceguard.errors import ConfigError
from inferenceguard.scorers.base import LatentScorer, Scorer
from inferenceguard.scorers.embedded import (
    ENCODER_FEATURES,
    PROBE_FEATURES,
    EncoderHeadScorer,
    ProbeCostScorer,
    encoder_features,
    prefix_features,
    response_features,
)
from inferenceguard.scorers.heads import LinearHead
from tests.utils.tiny import tiny_encoder, tiny_lm

PROMPTS = ["How do I bake bread?", "Tell me a joke", "How to pick a lock?", "hi"]
RESPONSES = ["Mix flour, water and yeast, then bake.", "Why did the cat sit on the keyboard?", "", "hello!"]


def random_head(
    dim: int, features: dict, link: str = "sigmoid", threshold: float | None = 0.5, kind: str = "cost"
) -> LinearHead:
    g = torch.Generator().manual_seed(1)
    return LinearHead(
        mean=torch.randn(dim, generator=g) * 0.1,
        scale=torch.rand(dim, generator=g) + 0.5,
        coef=torch.randn(dim, generator=g),
        intercept=-0.2,
        kind=kind,
        name=f"tiny-{kind}",
        features=features,
        threshold=threshold,
        link=link,
    )


def probe_head(lm, layers=(1, 2)) -> LinearHead:
    return random_head(
        len(layers) * lm.hidden_size, {"type": PROBE_FEATURES, "base_identity": lm.identity, "layers": list(layers)}
    )


def manual_features(lm, prompt: str, response: str, layers) -> torch.Tensor:
    """The feature contract written out for one pair, no batching."""
    p = lm.tokenizer(lm.format_prompt(prompt), add_special_tokens=not lm.is_chat)["input_ids"]
    r = lm.tokenizer(response, add_special_tokens=False)["input_ids"]
    if not r:
        return torch.zeros(len(layers) * lm.hidden_size)
    hs = lm.model(input_ids=torch.tensor([p + r]), output_hidden_states=True).hidden_states
    return torch.cat([hs[x][0, len(p) :].mean(0) for x in layers])


@pytest.mark.parametrize("chat", [True, False])
def test_probe_features_follow_the_contract(chat):
    lm = tiny_lm(chat=chat)
    scorer = ProbeCostScorer(probe_head(lm), lm=lm, batch_size=3)
    feats = scorer.features(PROMPTS, RESPONSES)
    ref = torch.stack([manual_features(lm, p, r, (1, 2)) for p, r in zip(PROMPTS, RESPONSES)])
    assert feats.shape == (4, 2 * lm.hidden_size) and feats.dtype == torch.float32
    assert torch.allclose(feats, ref, atol=1e-5)
    assert torch.equal(feats[2], torch.zeros_like(feats[2]))  # empty response -> zero vector


def test_probe_batched_equals_one_by_one_and_scores_features():
    lm = tiny_lm()
    scorer = ProbeCostScorer(probe_head(lm), lm=lm, batch_size=4)
    batched = scorer.score(PROMPTS, RESPONSES)
    single = torch.cat([scorer.score([p], [r]) for p, r in zip(PROMPTS, RESPONSES)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched, scorer.score_features(scorer.features(PROMPTS, RESPONSES)), atol=1e-6)
    assert ((batched > 0) & (batched < 1)).all()


def test_prefix_features_equal_features_of_the_cut_response():
    lm = tiny_lm()
    full = prefix_features(lm, PROMPTS, RESPONSES, (1, 2), prefixes=(5, 1000), batch_size=3)
    assert full.shape == (4, 3, 2 * lm.hidden_size)
    assert torch.allclose(full[:, 0], response_features(lm, PROMPTS, RESPONSES, (1, 2)), atol=1e-6)
    cut = response_features(lm, PROMPTS, [r[:5] for r in RESPONSES], (1, 2))  # byte tokens: 5 chars = 5 tokens
    assert torch.allclose(full[:, 1], cut, atol=1e-5)
    assert torch.allclose(full[:, 2], full[:, 0], atol=1e-6)  # a prefix longer than the response is all of it
    with pytest.raises(ConfigError, match="prefixes"):
        prefix_features(lm, PROMPTS, RESPONSES, (1,), prefixes=(0,))


def test_probe_is_a_latent_scorer_bound_to_its_base_model():
    lm = tiny_lm()
    scorer = ProbeCostScorer(probe_head(lm, layers=(0, 2)), lm=lm)
    assert isinstance(scorer, LatentScorer) and isinstance(scorer, Scorer)
    assert scorer.base_identity == lm.identity and scorer.layers == (0, 2) and scorer.threshold == 0.5
    with pytest.raises(ConfigError, match="'lm'"):
        ProbeCostScorer(probe_head(lm), lm=tiny_lm(seed=1))  # identity tiny-llama-1
    wide = random_head(3 * lm.hidden_size, {"type": PROBE_FEATURES, "base_identity": lm.identity, "layers": [1, 2]})
    with pytest.raises(ConfigError, match="head"):
        ProbeCostScorer(wide, lm=lm)


def test_probe_truncates_to_max_length_keeping_the_response_start():
    lm = tiny_lm()
    scorer = ProbeCostScorer(probe_head(lm), lm=lm, max_length=64)
    long_prompt, long_resp = "p" * 300, "r" * 300
    assert torch.isfinite(scorer.score([long_prompt, "hi"], [long_resp, "r" * 300])).all()
    # a short prompt keeps itself whole; the response keeps its first tokens
    n_prompt = len(lm.tokenizer(lm.format_prompt("hi"))["input_ids"])
    cut = "r" * (64 - n_prompt)
    assert torch.allclose(scorer.features(["hi"], ["r" * 300]), scorer.features(["hi"], [cut]), atol=1e-6)
    with pytest.raises(ConfigError, match="layers"):
        response_features(lm, ["a"], ["b"], layers=[5])


def test_encoder_features_parts():
    p = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    r = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    f = encoder_features(p, r, ["response", "product", "cosine"])
    assert f.shape == (3, 9)
    assert torch.allclose(f[:, :4], r) and torch.allclose(f[:, 4:8], p * r)
    assert torch.allclose(f[:, 8], torch.nn.functional.cosine_similarity(p, r))
    with pytest.raises(ConfigError, match="parts"):
        encoder_features(p, r, ["length"])


def test_encoder_head_scores_and_caches_prompts():
    enc = tiny_encoder()
    spec = {"type": ENCODER_FEATURES, "encoder_identity": enc.identity, "parts": ["response", "product", "cosine"]}
    head = random_head(2 * 32 + 1, spec, link="identity", threshold=0.0, kind="reward")
    s = EncoderHeadScorer(head, role="reward", encoder=enc, batch_size=2)
    out = s.score(PROMPTS, RESPONSES)
    p, r = enc.embed(PROMPTS), enc.embed(RESPONSES)
    assert torch.allclose(out, head(encoder_features(p, r, spec["parts"])), atol=1e-5)
    assert len(s.cache) == 4
    calls = []
    real = enc.embed
    enc.embed = lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw)
    s.score([PROMPTS[0]] * 3, ["a", "b", "c"])
    assert calls == [["a", "b"], ["c"]]  # two batches of responses; the prompt came from the cache
    with pytest.raises(ConfigError, match="'encoder'"):
        EncoderHeadScorer(head, encoder=tiny_encoder("another-encoder"))
    with pytest.raises(ConfigError, match="'head'"):
        EncoderHeadScorer(probe_head(tiny_lm()), encoder=enc)


def test_prompt_cache_is_bounded():
    enc = tiny_encoder()
    spec = {"type": ENCODER_FEATURES, "encoder_identity": enc.identity, "parts": ["cosine"]}
    s = EncoderHeadScorer(random_head(1, spec, kind="judge"), role="judge", encoder=enc, cache_size=2)
    before = s.score(["a", "b", "c"], ["x", "y", "z"])
    assert len(s.cache) == 2
    assert torch.allclose(s.score(["a", "b", "c"], ["x", "y", "z"]), before, atol=1e-6)


@pytest.mark.parametrize("prompt_pool", ["last", "mean"])
def test_probe_reads_the_prompt_after_the_response(prompt_pool):
    lm = tiny_lm()
    head = random_head(
        4 * lm.hidden_size,
        {"type": PROBE_FEATURES, "base_identity": lm.identity, "layers": [1, 2], "prompt_pool": prompt_pool},
    )
    scorer = ProbeCostScorer(head, lm=lm, batch_size=3)
    feats = scorer.features(PROMPTS, RESPONSES)
    F = 2 * lm.hidden_size
    assert feats.shape == (4, 2 * F)
    assert torch.allclose(feats[:, :F], response_features(lm, PROMPTS, RESPONSES, (1, 2)), atol=1e-6)
    for i, prompt in enumerate(PROMPTS):
        p = lm.tokenizer(lm.format_prompt(prompt), add_special_tokens=not lm.is_chat)["input_ids"]
        hs = lm.model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states
        pool = (lambda t: t[-1]) if prompt_pool == "last" else (lambda t: t.mean(0))
        assert torch.allclose(feats[i, F:], torch.cat([pool(hs[k][0]) for k in (1, 2)]), atol=1e-5)
    assert torch.equal(feats[2, :F], torch.zeros(F)) and feats[2, F:].abs().sum() > 0  # empty response
    spec = {"type": PROBE_FEATURES, "base_identity": lm.identity, "layers": [1, 2]}
    with pytest.raises(ConfigError, match="head"):  # a prompt-reading spec on a response-only width
        ProbeCostScorer(random_head(F, {**spec, "prompt_pool": prompt_pool}), lm=lm)
    with pytest.raises(ConfigError, match="prompt_pool"):
        ProbeCostScorer(random_head(2 * F, {**spec, "prompt_pool": "first"}), lm=lm)
