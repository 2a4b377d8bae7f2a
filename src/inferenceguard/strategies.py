"""Every method is a configuration of the one engine: a selector (how candidates are ranked and which are
admissible) plus the search shape (block, N, K, resampling). Defaults follow the paper (method.md §3, §5),
scaled to a 2-core CPU; docs/methods.md gives each default and why.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from inferenceguard import safety
from inferenceguard.critic import require_critic
from inferenceguard.engine import sampling
from inferenceguard.engine.types import Candidates, SearchConfig, Stack
from inferenceguard.errors import ConfigError, InferenceGuardError

BLOCK, CANDIDATES, KEEP, ROUNDS = 16, 16, 4, 2  # paper: 32 / 128 / 32 / 2 (GPU, 7B model)


def _within(c: Candidates, safe: bool) -> torch.Tensor:
    return safety.is_safe(c.z) if safe else torch.ones_like(c.z, dtype=torch.bool)


@dataclass(frozen=True)
class Unranked:
    """Plain sampling: one candidate, nothing to rank."""

    needs_reward: bool = False
    needs_critic: bool = False

    def __call__(self, c: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(c.z), torch.ones_like(c.z, dtype=torch.bool)


@dataclass(frozen=True)
class ByReward:
    """Rank by the reward model; with ``safety``, only candidates within budget (z >= 0) are admissible."""

    safety: bool = False
    needs_reward: bool = True
    needs_critic: bool = False

    def __call__(self, c: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        return c.reward, _within(c, self.safety)


@dataclass(frozen=True)
class Lagrangian:
    """Rank by R - lambda * C: safety in expectation only (the paper's foil)."""

    lam: float = 5.0
    needs_reward: bool = True
    needs_critic: bool = False

    def __call__(self, c: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        return c.reward - self.lam * c.cost, _within(c, False)


@dataclass(frozen=True)
class Args:
    """ARGS: log-probability of the token + omega x guidance, guidance = R - lam*C (reward) or -C (cost).
    With ``safety``, only tokens keeping the budget are admissible."""

    omega: float = 2.5
    lam: float = 0.0
    guidance: str = "reward"  # reward | cost
    safety: bool = False
    needs_critic: bool = False

    @property
    def needs_reward(self) -> bool:
        return self.guidance == "reward"

    def __call__(self, c: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        g = c.reward - self.lam * c.cost if self.guidance == "reward" else -c.cost
        return c.logprob + self.omega * g, _within(c, self.safety)


@dataclass(frozen=True)
class CriticValue:
    """InferenceGuard with the critic: admissible iff z >= 0 and p_safe(h, z) >= threshold, ranked by
    V_task(h, z); finished answers are ranked by the reward model (method.md §3.5)."""

    threshold: float = 0.5
    needs_reward: bool = False
    needs_critic: bool = True

    def __call__(self, c: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        if c.final:
            return c.reward, safety.is_safe(c.z)
        if c.value is None or c.p_safe is None:
            raise InferenceGuardError("the critic selector needs the critic's heads: Candidates.value, p_safe unset")
        return c.value, safety.is_safe(c.z) & (c.p_safe >= self.threshold)


@dataclass(frozen=True)
class ValueSteer:
    """RE-Control (Kong et al. 2024) as an engine ``steer`` hook: before sampling each token, move the last
    hidden state h up the gradient of a value network, h <- h + step_size * grad V(h), ``steps`` times, then
    recompute the logits with the LM head: logits = lm.model.get_output_embeddings()(h').

    The value network is the critic's value head on [h, z/d] with z/d = 1 (a full budget): RE-Control trains
    its value net on rollouts of the base model labelled with the final reward, which is exactly the data the
    critic pipeline collects, so the critic's V_task head is reused rather than training a second network.
    With ``lam`` > 0 (RE-Control + Lagrangian) the ascent target is V - lam * (1 - p_safe).

    Paper (method.md §5): 30 steps, step size 0.5, kept as defaults: the critic is a small MLP, so the 30
    forward/backward passes on the (R, H) hidden states cost far less than the LM forward they follow.
    ``critic`` is filled in from the stack by :func:`bind`; it takes no part in comparisons or hashing.
    """

    steps: int = 30
    step_size: float = 0.5
    lam: float = 0.0
    critic: Any = field(default=None, compare=False, repr=False)
    needs_critic: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError("steps", self.steps, "must be an integer >= 0")
        if not self.step_size > 0:
            raise ConfigError("step_size", self.step_size, "must be > 0")
        if not self.lam >= 0:
            raise ConfigError("lam", self.lam, "must be >= 0")

    def objective(self, h: torch.Tensor) -> torch.Tensor:
        """h (R, H) float32 -> (R,) the quantity the ascent maximises, differentiable in h.

        ``Critic.evaluate`` usually runs under ``torch.inference_mode()`` (the engine's hot path); its
        undecorated function (``inspect.unwrap``) computes the same heads with autograd.
        """
        evaluate = self.critic.evaluate
        if hasattr(evaluate, "__func__"):
            evaluate = functools.partial(inspect.unwrap(evaluate.__func__), self.critic)
        p_safe, value = evaluate(h, torch.ones(h.shape[0], device=h.device))
        return value - self.lam * (1 - p_safe) if self.lam else value

    def ascend(self, h: torch.Tensor) -> torch.Tensor:
        """h (R, H) -> h' (R, H) after ``steps`` gradient-ascent steps, as an ordinary (non-inference) tensor.

        The engine runs under ``torch.inference_mode()``; autograd needs ordinary tensors, so the state is
        cloned with inference mode switched off and gradients switched on.
        """
        if self.critic is None:
            raise ConfigError("critic", None, "must be bound to the steer (strategies.bind) before RE-Control runs")
        with torch.inference_mode(False), torch.enable_grad():
            x = h.detach().clone().float()
            for _ in range(self.steps):
                x.requires_grad_(True)
                obj = self.objective(x)
                if not obj.requires_grad:
                    raise InferenceGuardError(
                        f"the critic '{type(self.critic).__name__}' returns no gradient for its input: RE-Control "
                        "needs a differentiable value network (evaluate() must not run under no_grad)"
                    )
                (grad,) = torch.autograd.grad(obj.sum(), x)
                x = (x + self.step_size * grad).detach()
        return x

    def __call__(self, lm: Any, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """h (R, H) float32 last hidden state, logits (R, V) float32 -> steered logits (R, V) float32."""
        if self.steps == 0:
            return logits
        x = self.ascend(h)
        head = lm.model.get_output_embeddings()
        return head(x.to(head.weight.dtype)).float()  # the head's own dtype (bf16 models), logits back in fp32


def needs_critic(cfg: SearchConfig) -> bool:
    """Whether the method reads the critic: in its selector (InferenceGuard + critic) or its steer (RE-Control)."""
    return bool(getattr(cfg.select, "needs_critic", False) or getattr(cfg.steer, "needs_critic", False))


def bind(cfg: SearchConfig, stack: Stack) -> SearchConfig:
    """The configuration ready for ``stack``: unset sampling settings take the base model's defaults, a method
    that needs a critic gets a clear error when the stack has none fitting its LM, and RE-Control's steer
    receives the stack's critic."""
    cfg = sampling.resolve(cfg, stack.lm.sampling_defaults)
    if not needs_critic(cfg):
        return cfg
    critic = require_critic(stack.critic, stack.lm, cfg.method)
    if isinstance(cfg.steer, ValueSteer) and cfg.steer.critic is not critic:
        cfg = replace(cfg, steer=replace(cfg.steer, critic=critic))
    return cfg


ONE_CANDIDATE = frozenset({"candidates", "keep"})  # sampling draws one answer: --candidates does not reach it


def _sample() -> SearchConfig:
    return SearchConfig("sample", Unranked(), block=BLOCK, candidates=1, keep=1, fixed=ONE_CANDIDATE)


def _bon(name: str, sel: Any) -> SearchConfig:
    """One whole-response step: --block does not reach it."""
    return SearchConfig(name, sel, block=None, candidates=CANDIDATES, keep=1, fixed=frozenset({"block"}))


def _beam(name: str, sel: Any) -> SearchConfig:
    return SearchConfig(name, sel, block=BLOCK, candidates=CANDIDATES, keep=KEEP)


def _args(name: str, sel: Args) -> SearchConfig:
    """Token-level: --block does not reach it; --candidates sets the top-k."""
    return SearchConfig(name, sel, block=1, candidates=10, keep=1, proposal="topk", fixed=frozenset({"block"}))


def _ig(name: str, sel: Any) -> SearchConfig:
    """InferenceGuard fails closed: when M rounds of penalised resampling leave no safe candidate, it refuses
    (``on_exhausted="flag"`` keeps the least-unsafe candidate instead)."""
    return SearchConfig(
        name, sel, block=BLOCK, candidates=CANDIDATES, keep=KEEP, resample_rounds=ROUNDS, on_exhausted="refuse"
    )


def _recontrol(name: str, steer: ValueSteer) -> SearchConfig:
    """Plain sampling (one candidate), every token drawn from the steered logits."""
    return SearchConfig(name, Unranked(), block=BLOCK, candidates=1, keep=1, steer=steer, fixed=ONE_CANDIDATE)


PRESETS: dict[str, SearchConfig] = {
    "sample": _sample(),
    "bon": _bon("bon", ByReward()),
    "bon-lagrangian": _bon("bon-lagrangian", Lagrangian(5.0)),
    "bon-safety": _bon("bon-safety", ByReward(safety=True)),
    "beam": _beam("beam", ByReward()),
    "beam-lagrangian": _beam("beam-lagrangian", Lagrangian(5.0)),
    "beam-safety": _beam("beam-safety", ByReward(safety=True)),
    "args": _args("args", Args()),
    "args-lagrangian": _args("args-lagrangian", Args(lam=5.0)),
    "args-cost": _args("args-cost", Args(guidance="cost", safety=True)),
    "inferenceguard": _ig("inferenceguard", ByReward(safety=True)),
    "inferenceguard-critic": _ig("inferenceguard-critic", CriticValue()),
    "recontrol": _recontrol("recontrol", ValueSteer()),
    "recontrol-lagrangian": _recontrol("recontrol-lagrangian", ValueSteer(lam=5.0)),
}
"""name -> frozen default configuration."""

_SHAPE = (
    "block",
    "candidates",
    "keep",
    "max_new_tokens",
    "budget",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "gamma",
    "resample_rounds",
    "resample_strength",
    "on_exhausted",
    "penalty",
    "refusal",
)


WEIGHTS = ("lam", "omega")
"""A method's own weights, set per method (a recipe's ``[methods.NAME]``), never shared: lambda of a Lagrangian
score (the selector's, or RE-Control's steer) and ARGS's omega."""


def weights(cfg: SearchConfig) -> dict[str, str]:
    """weight name -> the part of ``cfg`` that reads it ('select' or 'steer'), for the weights this method uses."""
    out: dict[str, str] = {}
    for part in ("select", "steer"):
        obj = getattr(cfg, part)
        for w in WEIGHTS:
            if hasattr(obj, w) and not (w == "lam" and getattr(obj, "guidance", "reward") != "reward"):
                out.setdefault(w, part)  # ARGS guided by the cost alone has no lambda to weigh
    return out


USER_NAMES = {"keep": "beams"}  # a setting users (flags, recipes, eval) name otherwise than the engine does: K


def user_name(key: str) -> str:
    """A preset setting as users name it (``keep`` is ``beams``: K, the beams kept): the one translation."""
    return USER_NAMES.get(key, key)


def preset_name(key: str) -> str:
    """The inverse of :func:`user_name`: a user's setting name as :func:`preset` takes it."""
    return next((k for k, v in USER_NAMES.items() if v == key), key)


def preset(method: str, **overrides: Any) -> SearchConfig:
    """The named method's configuration with user overrides (None values are ignored), validated.

    The one place overrides are resolved, for the CLI, the harness and the server alike: an override of a
    setting the preset fixes (``SearchConfig.fixed``) is left out, so one set of flags serves a run that mixes
    methods; ``candidates`` alone sets K = N/4 for beam methods. A weight (``WEIGHTS``) must be one the method
    reads: it is a per-method setting, so naming it for another method is an error rather than a no-op."""
    if method not in PRESETS:
        raise ConfigError("method", method, f"must be one of: {', '.join(PRESETS)}")
    unknown = set(overrides) - set(_SHAPE) - set(WEIGHTS)
    if unknown:
        raise ConfigError(
            sorted(unknown)[0],
            overrides[sorted(unknown)[0]],
            f"is not a search setting; valid: {', '.join(_SHAPE + WEIGHTS)}",
        )
    cfg = PRESETS[method]
    given = {k: v for k, v in overrides.items() if v is not None and k not in cfg.fixed and k not in WEIGHTS}
    if "candidates" in given and "keep" not in given and cfg.keep > 1:
        given["keep"] = max(1, given["candidates"] // 4)  # K = N/4, as in the paper
    cfg = replace(cfg, **given)
    reads = weights(cfg)
    for w in WEIGHTS:
        v = overrides.get(w)
        if v is None:
            continue
        if w not in reads:
            having = [m for m, c in PRESETS.items() if w in weights(c)]
            raise ConfigError(w, v, f"is not a setting of method '{method}' (methods with it: {', '.join(having)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ConfigError(w, v, "must be a number >= 0")
        part = reads[w]
        cfg = replace(cfg, **{part: replace(getattr(cfg, part), **{w: float(v)})})
    return cfg
