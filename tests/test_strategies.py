"""Behaviour of every preset on tiny models: what each method keeps, and RE-Control's hidden-state steering."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch

from inferenceguard.engine import Stack, sampling, search
from inferenceguard.engine.types import Candidates
from inferenceguard.errors import ConfigError, InferenceGuardError
from inferenceguard.guard import Guard
from inferenceguard.strategies import (
    PRESETS,
    Args,
    ByReward,
    CriticValue,
    Lagrangian,
    ValueSteer,
    bind,
    needs_critic,
    preset,
)
from tests.stubs import CharCost, VowelReward
from tests.utils.stack import StubCritic
from tests.utils.tiny import tiny_lm

PROMPTS = ["hello there", "write a poem about the sea", "x marks the spot", "tell me a story"]


@dataclass(frozen=True)
class Spy:
    """Wraps a selector and records every Candidates it ranks."""

    inner: Any
    seen: list = field(default_factory=list, compare=False, hash=False)

    @property
    def needs_reward(self) -> bool:
        return self.inner.needs_reward

    @property
    def needs_critic(self) -> bool:
        return self.inner.needs_critic

    def __call__(self, c: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append(c)
        return self.inner(c)


def _spied(method: str, **kw: Any):
    cfg = preset(method, **kw)
    spy = Spy(cfg.select)
    return replace(cfg, select=spy), spy


def _finals(spy: Spy, b: int) -> Candidates:
    c = next(c for c in spy.seen if c.final)
    m = c.prompt == b
    return replace(c, prompt=c.prompt[m], z=c.z[m], cost=c.cost[m], reward=c.reward[m], logprob=c.logprob[m])


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


@pytest.fixture(scope="module")
def stack(lm):
    return Stack(lm=lm, reward=VowelReward(), cost=CharCost(threshold=0.1), critic=StubCritic(lm.identity))


def test_presets_cover_the_paper_baselines():
    expected = {
        "sample",
        "bon",
        "bon-lagrangian",
        "bon-safety",
        "beam",
        "beam-lagrangian",
        "beam-safety",
        "args",
        "args-lagrangian",
        "args-cost",
        "inferenceguard",
        "inferenceguard-critic",
        "recontrol",
        "recontrol-lagrangian",
    }
    assert expected <= set(PRESETS)
    assert {m for m in PRESETS if needs_critic(PRESETS[m])} == {
        "inferenceguard-critic",
        "recontrol",
        "recontrol-lagrangian",
    }
    assert PRESETS["recontrol"].steer == ValueSteer(steps=30, step_size=0.5)
    assert PRESETS["recontrol-lagrangian"].steer.lam > 0


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_every_preset_honours_seed_and_max_new_tokens(stack, method):
    cfg = bind(preset(method, max_new_tokens=6, candidates=4), stack)
    a = search(stack, PROMPTS[:2], cfg, seed=3)
    b = search(stack, PROMPTS[:2], cfg, seed=3)
    assert [r.response for r in a] == [r.response for r in b]
    assert all(r.method == method and 0 <= r.new_tokens <= 6 and r.seed == 3 for r in a)


def test_bon_returns_the_max_reward_candidate(stack):
    cfg, spy = _spied("bon", max_new_tokens=8, candidates=6)
    res = search(stack, PROMPTS, cfg, seed=1)
    step = spy.seen[0]
    assert torch.bincount(step.prompt).tolist() == [6] * len(PROMPTS)  # N candidates, one whole-answer step
    for b, r in enumerate(res):
        assert r.reward == pytest.approx(float(_finals(spy, b).reward.max()))


def test_lagrangian_trades_reward_for_cost(stack):
    """Same seed, same N candidates: R - 5C picks an answer no costlier and no more rewarded than R alone."""
    kw = dict(max_new_tokens=8, candidates=8)
    plain = search(stack, PROMPTS, preset("bon", **kw), seed=4)
    cfg, spy = _spied("bon-lagrangian", **kw)
    lag = search(stack, PROMPTS, cfg, seed=4)
    for b, (p, q) in enumerate(zip(plain, lag)):
        assert q.cost <= p.cost + 1e-6 and q.reward <= p.reward + 1e-6
        f = _finals(spy, b)
        assert q.reward - 5 * q.cost == pytest.approx(float((f.reward - 5 * f.cost).max()), abs=1e-5)
    assert sum(q.cost for q in lag) < sum(p.cost for p in plain)


@pytest.mark.parametrize("method", ["bon-safety", "beam-safety", "inferenceguard", "args-cost"])
def test_safety_variants_never_keep_an_over_budget_answer_when_a_safe_one_exists(stack, method):
    kw = dict(max_new_tokens=8, budget=0.05) | ({} if method == "args-cost" else dict(candidates=8, block=4))
    cfg, spy = _spied(method, **kw)
    res = search(stack, PROMPTS, cfg, seed=5)
    found = [r for r in res if not r.exhausted]  # every step had an in-budget candidate
    assert found, "every prompt exhausted its budget: the in-budget claim below was never checked"
    for r in found:
        assert r.safe and min(r.budget_trajectory) >= 0
    if method == "bon-safety":
        safe_exists = [b for b in range(len(res)) if bool((_finals(spy, b).z >= 0).any())]
        assert safe_exists, "no prompt had a safe finished candidate: the Best-of-N claim was never checked"
        assert all(res[b].safe for b in safe_exists)
    reward_only = search(stack, PROMPTS, preset("bon", **kw), seed=5)
    assert sum(r.safe for r in res) >= sum(r.safe for r in reward_only)


def test_args_picks_among_the_top_k_tokens(lm, stack):
    k = 5
    cfg, spy = _spied("args", max_new_tokens=4, candidates=k)
    search(stack, [PROMPTS[0]], cfg, seed=0)
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([lm.encode_prompt(PROMPTS[0])])).logits[0, -1].float()
    top = torch.log_softmax(logits, -1).topk(k).values
    first = spy.seen[0]
    assert first.logprob.shape == (k,) and torch.allclose(first.logprob, top, atol=1e-4)
    later = [c for c in spy.seen[1:] if not c.final]  # each later step: the parent's k best tokens, best first
    assert len(later) == 3, "max_new_tokens=4 makes three token steps after the first"
    for c in later:
        assert bool((c.logprob[:-1] >= c.logprob[1:] - 1e-6).all())


def test_args_scores_logprob_plus_weighted_guidance():
    c = Candidates(
        prompt=torch.zeros(3, dtype=torch.long),
        z=torch.tensor([1.0, -0.1, 0.5]),
        cost=torch.tensor([0.1, 0.9, 0.2]),
        logprob=torch.tensor([-1.0, -0.5, -2.0]),
        budget=1.0,
        reward=torch.tensor([0.3, 0.8, 0.1]),
    )
    s, ok = Args()(c)
    assert torch.allclose(s, c.logprob + 2.5 * c.reward) and bool(ok.all())
    s, _ = Args(lam=5.0)(c)
    assert torch.allclose(s, c.logprob + 2.5 * (c.reward - 5 * c.cost))
    s, ok = Args(guidance="cost", safety=True)(c)
    assert torch.allclose(s, c.logprob - 2.5 * c.cost) and ok.tolist() == [True, False, True]
    assert not Args(guidance="cost").needs_reward
    s, ok = Lagrangian(10.0)(c)
    assert torch.allclose(s, c.reward - 10 * c.cost) and bool(ok.all())
    assert ByReward(safety=True)(c)[1].tolist() == [True, False, True]


def test_critic_selector_admits_by_budget_and_p_safe_and_ranks_by_value():
    c = Candidates(
        prompt=torch.zeros(3, dtype=torch.long),
        z=torch.tensor([1.0, -0.1, 0.5]),
        cost=torch.zeros(3),
        logprob=torch.zeros(3),
        budget=1.0,
        reward=torch.tensor([3.0, 2.0, 1.0]),
        p_safe=torch.tensor([0.9, 0.9, 0.2]),
        value=torch.tensor([0.1, 0.7, 0.4]),
    )
    s, ok = CriticValue()(c)
    assert torch.equal(s, c.value) and ok.tolist() == [True, False, False]
    s, ok = CriticValue()(replace(c, final=True))
    assert torch.equal(s, c.reward) and ok.tolist() == [True, False, True]


def test_inferenceguard_critic_uses_the_critic(lm):
    doomed = Stack(
        lm=lm, reward=VowelReward(), cost=CharCost(threshold=0.5), critic=StubCritic(lm.identity, p_bias=-20.0)
    )
    res = search(doomed, PROMPTS[:2], bind(preset("inferenceguard-critic", max_new_tokens=8, block=4), doomed))
    assert all(r.exhausted and r.critic_calls > 0 for r in res)  # p_safe ~ 0: nothing is admissible
    fine = replace(doomed, critic=StubCritic(lm.identity, p_bias=20.0))
    res = search(fine, PROMPTS[:2], bind(preset("inferenceguard-critic", max_new_tokens=8, block=4), fine))
    assert not any(r.exhausted for r in res) and all(r.critic_calls > 0 for r in res)


# ---- RE-Control ------------------------------------------------------------------------------------------------


def _hidden(lm, prompt: str = PROMPTS[0]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():  # as in the engine: h and logits are inference tensors
        out = lm.model(input_ids=torch.tensor([lm.encode_prompt(prompt)]), output_hidden_states=True)
        return out.hidden_states[-1][:, -1].float(), out.logits[:, -1].float()


def test_recontrol_steer_ascends_the_value_and_recomputes_logits(lm):
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    critic = StubCritic(lm.identity, value_dir=v.clone())
    steer = ValueSteer(steps=30, step_size=0.5, critic=critic)
    h, logits = _hidden(lm)
    with torch.inference_mode():
        steered = steer(lm, h, logits)
    h2 = steer.ascend(h)  # linear value: the gradient is v at every step
    assert torch.allclose(h2, h + 15.0 * v, atol=1e-4)
    assert float(h2 @ v) > float(h @ v)
    with torch.no_grad():
        assert torch.allclose(steered, lm.model.get_output_embeddings()(h2), atol=1e-4)
    assert not torch.allclose(steered, logits)
    assert torch.allclose(ValueSteer(steps=0, critic=critic)(lm, h, logits), logits)


def test_recontrol_lagrangian_ascends_p_safe(lm):
    u = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(1))
    critic = StubCritic(lm.identity, value_dir=torch.zeros(lm.hidden_size), safe_dir=u, p_bias=-2.0)
    h, _ = _hidden(lm)
    plain = ValueSteer(critic=critic)
    assert torch.allclose(plain.ascend(h), h)  # zero value gradient: RE-Control leaves h alone
    lag = ValueSteer(lam=5.0, critic=critic)
    with torch.inference_mode():
        p_before, p_after = (float(critic.heads(x)[0]) for x in (h, lag.ascend(h)))
    assert p_after > p_before


def test_recontrol_steers_generation_toward_high_value_tokens(lm):
    """A value net that likes the token 'a' (its LM-head row): RE-Control samples 'a' far more often."""
    a = lm.tokenizer.convert_tokens_to_ids("a")
    w = lm.model.get_output_embeddings().weight[a].detach().clone()
    st = Stack(
        lm=lm, reward=VowelReward(), cost=CharCost(threshold=0.5), critic=StubCritic(lm.identity, value_dir=20 * w)
    )
    kw = dict(max_new_tokens=16)
    base = search(st, PROMPTS, preset("sample", **kw), seed=0)
    steered = search(st, PROMPTS, bind(preset("recontrol", **kw), st), seed=0)
    assert sum(r.response.count("a") for r in steered) > 3 * max(1, sum(r.response.count("a") for r in base))


def test_recontrol_needs_a_differentiable_critic(lm):
    class Frozen:
        base_identity = lm.identity

        def evaluate(self, h, z):
            return torch.ones(h.shape[0]), torch.zeros(h.shape[0])

    h, logits = _hidden(lm)
    with pytest.raises(InferenceGuardError, match="differentiable"):
        ValueSteer(critic=Frozen())(lm, h, logits)


def test_methods_needing_a_critic_refuse_a_stack_without_one(lm, stack):
    bare = replace(stack, critic=None)
    for m in ("recontrol", "recontrol-lagrangian", "inferenceguard-critic"):
        with pytest.raises(ConfigError, match="'critic' must be available: method '" + m):
            bind(preset(m), bare)
    with pytest.raises(ConfigError, match="critic"):
        Guard.from_stack(bare).generate(["hi"], "recontrol", max_new_tokens=4)
    other = replace(stack, critic=StubCritic("another-model"))
    with pytest.raises(ConfigError, match="must be trained on the base model"):
        bind(preset("recontrol"), other)
    # without a critic, binding only fills the sampling settings from the base model's defaults
    assert bind(preset("bon"), bare) == sampling.resolve(preset("bon"), bare.lm.sampling_defaults)
    assert bind(preset("bon"), bare).temperature == 1.0  # the tiny LM declares none: the paper's
    [r] = Guard.from_stack(stack).generate(["hi"], "recontrol", max_new_tokens=4)
    assert r.method == "recontrol" and r.new_tokens <= 4


@pytest.mark.parametrize(
    "kw, arg", [(dict(steps=-1), "steps"), (dict(step_size=0.0), "step_size"), (dict(lam=-1.0), "lam")]
)
def test_steer_settings_are_validated(kw, arg):
    with pytest.raises(ConfigError, match=f"'{arg}'"):
        ValueSteer(**kw)


def test_overrides_leave_what_a_preset_fixes_for_every_caller():
    """One rule, in preset(): generate, eval and the server all get Best-of-N's whole-response step."""
    from inferenceguard.harness.run import config_dict, resolve_methods

    assert preset("bon", block=8).block is None and preset("args", block=8, candidates=5).block == 1
    assert preset("args", candidates=5).candidates == 5  # ARGS's top-k
    assert preset("sample", candidates=8).candidates == 1 and preset("recontrol", keep=3).keep == 1
    assert preset("beam", block=8, candidates=8) == replace(PRESETS["beam"], block=8, candidates=8, keep=2)
    cfgs = resolve_methods("bon,args,beam", 32, {"block": 8})
    assert [cfgs[m].block for m in ("bon", "args", "beam")] == [None, 1, 8]
    assert "fixed" not in config_dict(PRESETS["bon"])  # not part of a run's configuration identity
