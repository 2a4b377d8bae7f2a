"""Sampling controls: the kept tokens equal transformers' own warpers, draws follow the truncated distribution,
the exact shortcut equals a full sort, and every method samples through the same settings."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from inferenceguard.engine import SearchConfig, Stack, sampling, search
from inferenceguard.errors import ConfigError
from inferenceguard.strategies import PRESETS, Unranked, bind, preset
from tests.stubs import CharCost, VowelReward
from tests.utils.tiny import tiny_lm


def _cfg(**kw) -> SearchConfig:
    return sampling.resolve(SearchConfig("t", Unranked(), **kw))


def _hf_kept(logits: torch.Tensor, cfg: SearchConfig) -> torch.Tensor:
    """(R, V) bool: the tokens transformers' warpers leave finite, applied in its order."""
    s = TemperatureLogitsWarper(cfg.temperature)(None, logits.clone())
    if cfg.top_k:
        s = TopKLogitsWarper(cfg.top_k)(None, s)
    if cfg.top_p < 1:
        s = TopPLogitsWarper(cfg.top_p)(None, s)
    if cfg.min_p > 0:
        s = MinPLogitsWarper(cfg.min_p)(None, s)
    return torch.isfinite(s)


def _kept_mask(logits: torch.Tensor, cfg: SearchConfig) -> torch.Tensor:
    _, ids, keep = sampling._prefix(torch.softmax(logits / cfg.temperature, -1), cfg)
    return torch.zeros_like(logits, dtype=torch.long).scatter_add_(1, ids, keep.long()) > 0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    spread=st.sampled_from([0.3, 1.0, 3.0, 8.0]),  # flat logits (long nuclei: the full-sort path) to peaked ones
    temperature=st.sampled_from([0.5, 0.7, 1.0, 1.3]),
    top_k=st.sampled_from([0, 1, 5, 40, 100]),
    top_p=st.sampled_from([1.0, 0.95, 0.9, 0.5, 0.1]),
    min_p=st.sampled_from([0.0, 0.02, 0.1, 0.5]),
)
def test_kept_tokens_equal_transformers_warpers(seed, spread, temperature, top_k, top_p, min_p):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 300, generator=g) * spread
    cfg = _cfg(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    if not sampling.truncates(cfg):
        return
    assert torch.equal(_kept_mask(logits, cfg), _hf_kept(logits, cfg))


def test_draws_follow_the_truncated_distribution_exactly():
    """A grid of uniforms maps onto each kept token in proportion to its renormalised probability."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    cfg = _cfg(top_p=0.8, temperature=1.0)
    kept = _hf_kept(logits, cfg)[0]
    p = torch.softmax(logits, -1)[0] * kept
    p = p / p.sum()
    n = 100_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5).float()[:, None] / n
    toks = sampling.sample(logits.expand(n, -1), cfg, u)
    freq = torch.bincount(toks, minlength=6).float() / n
    assert bool((freq[~kept] == 0).all())  # nothing outside the nucleus is ever drawn
    assert torch.allclose(freq, p, atol=2e-4)


def test_the_top_prefix_shortcut_equals_a_full_sort(monkeypatch):
    logits = torch.randn(16, 500, generator=torch.Generator().manual_seed(1)) * 2
    u = torch.rand(16, 1, generator=torch.Generator().manual_seed(2))
    cfg = _cfg(top_p=0.9, min_p=0.01)
    fast = sampling.sample(logits, cfg, u)
    monkeypatch.setattr(sampling, "FIRST", 1)  # every row is widened to the full sort
    assert torch.equal(sampling.sample(logits, cfg, u), fast)


def test_repetition_penalty_equals_transformers_processor():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    gen = torch.tensor([[1, 2, 3], [4, 4, 0], [7, 8, 9]])
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, gen, True)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(gen, logits.clone())
    assert torch.allclose(sampling.repetition(logits, seen, 1.3), ref)


@pytest.fixture(scope="module")
def stack():
    return Stack(lm=tiny_lm(eos_boost=-50.0), reward=VowelReward(), cost=CharCost(threshold=0.9))


def _greedy(lm, prompt: str, tokens: int) -> list[int]:
    ids = torch.tensor([lm.encode_prompt(prompt)])
    for _ in range(tokens):
        nxt = lm.model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids[0, -tokens:].tolist()


@pytest.mark.parametrize("method", ["sample", "bon", "beam-safety", "inferenceguard", "args", "args-cost"])
def test_top_k_1_makes_every_method_greedy(stack, method):
    """The settings reach every method: with top_k = 1 each one can only answer the greedy continuation
    (ARGS's other proposals fall outside the kept set and are never chosen)."""
    ref = _greedy(stack.lm, "hello there", 6)
    [r] = search(stack, ["hello there"], bind(preset(method, max_new_tokens=6, top_k=1), stack), seed=3)
    assert r.response == stack.lm.decode(ref)


def test_truncation_changes_the_answer_and_model_defaults_apply(stack):
    plain = search(stack, ["hello there"], preset("sample", max_new_tokens=12), seed=0)[0]
    nucleus = search(stack, ["hello there"], preset("sample", max_new_tokens=12, top_p=0.3), seed=0)[0]
    assert plain.response != nucleus.response
    own = replace(stack, lm=replace(stack.lm, sampling_defaults={"top_p": 0.3}))
    assert search(own, ["hello there"], preset("sample", max_new_tokens=12), seed=0)[0].response == nucleus.response
    assert bind(preset("sample"), own).top_p == 0.3 and bind(preset("sample", top_p=0.5), own).top_p == 0.5


def test_repetition_penalty_reduces_repeats(stack):
    def repeats(r) -> int:
        ids = stack.lm.tokenizer(r.response, add_special_tokens=False)["input_ids"]
        return len(ids) - len(set(ids))

    base = [search(stack, ["hello"], preset("sample", max_new_tokens=40), seed=s)[0] for s in range(4)]
    pen = [
        search(stack, ["hello"], preset("sample", max_new_tokens=40, repetition_penalty=3.0), seed=s)[0]
        for s in range(4)
    ]
    assert sum(map(repeats, pen)) < sum(map(repeats, base))


@pytest.mark.parametrize(
    "kw, arg",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(min_p=1.0), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
    ],
)
def test_bad_sampling_settings_name_the_setting(kw, arg):
    with pytest.raises(ConfigError, match=f"'{arg}'"):
        preset("inferenceguard", **kw)


def test_every_preset_leaves_sampling_to_the_model():
    assert all(getattr(c, k) is None for c in PRESETS.values() for k in sampling.FIELDS)


def test_sampling_defaults_are_read_from_generation_config():
    from transformers import GenerationConfig

    from inferenceguard.models.loading import sampling_defaults

    lm = tiny_lm()
    lm.model.generation_config = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, top_k=20)
    assert sampling_defaults(lm.model) == {"temperature": 0.6, "top_p": 0.9, "top_k": 20}
    lm.model.generation_config = GenerationConfig(do_sample=False, temperature=0.6)
    assert sampling_defaults(lm.model) == {}  # a greedy model's config says nothing about sampling
