"""Critic training: a synthetic task with a known answer is learned; the split is by prompt; bad inputs fail
clearly; a critic trained on a tiny model's rollouts guides the search."""

import pytest
import torch

from inferenceguard.critic import load_critic, save_critic
from inferenceguard.engine import Stack, search
from inferenceguard.errors import ConfigError
from inferenceguard.strategies import preset
from inferenceguard.training.rollouts import RolloutConfig, RolloutData, collect_rollouts, load_rollouts
from inferenceguard.training.train_critic import TrainConfig, examples, split_prompts, train_critic
from tests.stubs import CharCost, VowelReward
from tests.utils.tiny import tiny_lm


def synthetic(P=60, R=4, S=3, H=16, seed=0) -> RolloutData:
    """Each prompt has a direction; a rollout is unsafe (final charge 1.0, over any budget in (0.3, 0.7)) iff
    its hidden states lean along w, safe (0.1) otherwise; its reward is that lean plus noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(H, generator=g)
    n = P * R
    base = torch.randn(n, 1, H, generator=g) * 2
    h = (base + 0.3 * torch.randn(n, S, H, generator=g)).reshape(n * S, H)
    lean = (base[:, 0] @ w) / w.norm()
    final = torch.where(lean > 0, 1.0, 0.1)
    frac = torch.arange(1, S + 1).float() / S
    return RolloutData(
        h=h,
        charge=(final[:, None] * frac).reshape(-1),
        step=torch.arange(S).repeat(n),
        rollout=torch.arange(n).repeat_interleave(S),
        prompt=torch.arange(P).repeat_interleave(R),
        reward=lean + 0.1 * torch.randn(n, generator=g),
        final_charge=final,
        steps=torch.full((n,), S),
        prompts=[f"p{i}" for i in range(P)],
        sources=["harmful" if i % 2 else "benign" for i in range(P)],
        meta={"budget": 0.5, "base_identity": "synthetic", "block": 4, "rollouts": R, "layer": "last"},
    )


def test_learns_a_known_synthetic_task():
    t = train_critic(synthetic(), TrainConfig(budget_range=(0.3, 0.7), epochs=60, patience=15), progress=False)
    assert t.metrics["p_safe_auc"] >= 0.97 and t.metrics["p_safe_auc_at_budget_ref"] >= 0.97
    assert t.metrics["value_spearman"] >= 0.8 and t.metrics["value_r2"] >= 0.5
    assert t.metrics["p_safe_ece"] <= 0.15
    assert t.history[0]["p_safe_auc"] < t.metrics["p_safe_auc"] or t.history[0]["loss"] > t.metrics["loss"]
    meta = t.critic.meta
    assert meta["data"]["val_prompts"] + meta["data"]["train_prompts"] == 60
    assert meta["budget_range"] == [0.3, 0.7] and meta["gamma"] == 0.999


def test_labels_follow_the_budget():
    d = synthetic(P=2, R=1, S=3)
    states = torch.arange(len(d.charge))
    lo = examples(d, states, torch.full((len(states), 1), 0.05), 1.0)  # below every first charge
    hi = examples(d, states, torch.full((len(states), 1), 2.0), 1.0)  # above every total
    assert len(lo.safe) == 0
    assert len(hi.safe) == len(states) and bool((hi.safe == 1).all())
    assert torch.allclose(hi.z_frac, (2.0 - d.charge) / 2.0)


def test_split_is_by_prompt_and_stratified():
    val = split_prompts(["a"] * 10 + ["b"] * 10, 0.2, seed=0)
    assert val[:10].sum() == 2 and val[10:].sum() == 2
    assert (split_prompts(["a"] * 10 + ["b"] * 10, 0.2, seed=0) == val).all()
    d = synthetic(P=10, R=3)
    t = train_critic(d, TrainConfig(epochs=2), progress=False)
    assert t.critic.meta["data"]["val_prompts"] == 2


def test_too_few_prompts_and_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="at least 2 prompts"):
        train_critic(synthetic(P=1, R=5), TrainConfig(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="budget_range"):
        TrainConfig(budget_range=(0.7, 0.3))
    with pytest.raises(ConfigError, match="no validation state"):
        train_critic(synthetic(P=6), TrainConfig(budget_range=(0.01, 0.02), epochs=1), progress=False)


def test_trained_on_tiny_rollouts_it_saves_loads_and_guides_the_search(tmp_path):
    lm = tiny_lm(eos_boost=1.0)
    stack = Stack(lm=lm, reward=VowelReward(), cost=CharCost(threshold=0.2))
    words = ["sea", "sky", "tree", "road", "cat", "dog", "fish", "moon"]
    prompts = [f"prompt number {i} about {w}" for i, w in enumerate(words)]
    collect_rollouts(
        stack, prompts, tmp_path / "r", RolloutConfig(rollouts=3, block=4, max_new_tokens=12), progress=False
    )
    t = train_critic(load_rollouts(tmp_path / "r"), TrainConfig(epochs=5, val_share=0.25), progress=False)
    assert t.critic.base_identity == lm.identity and t.critic.meta["block"] == 4
    stack.critic = load_critic(save_critic(t.critic, tmp_path / "c"), lm)
    kw = dict(max_new_tokens=12, block=4, candidates=8)
    ig = search(stack, prompts[:2], preset("inferenceguard", **kw), seed=1)
    cr = search(stack, prompts[:2], preset("inferenceguard-critic", **kw), seed=1)
    assert all(c.critic_calls > 0 and c.reward_calls < i.reward_calls for c, i in zip(cr, ig))
