"""Every method is a configuration of the one engine: a selector (how candidates are ranked and which are
admissible) plus the search shape (block, N, K, resampling). Defaults follow the paper (method.md §3, §5),
scaled to a 2-core CPU; docs/methods.md gives each default and why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from inferenceguard import safety
from inferenceguard.engine.types import Candidates, SearchConfig
from inferenceguard.errors import ConfigError

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
        return c.reward, _within(c, self.safety)  # type: ignore[return-value]


@dataclass(frozen=True)
class Lagrangian:
    """Rank by R - lambda * C: safety in expectation only (the paper's foil)."""

    lam: float = 5.0
    needs_reward: bool = True
    needs_critic: bool = False

    def __call__(self, c: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        return c.reward - self.lam * c.cost, _within(c, False)  # type: ignore[operator]


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
        g = c.reward - self.lam * c.cost if self.guidance == "reward" else -c.cost  # type: ignore[operator]
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
            return c.reward, safety.is_safe(c.z)  # type: ignore[return-value]
        return c.value, safety.is_safe(c.z) & (c.p_safe >= self.threshold)  # type: ignore[return-value,operator]


def _sample() -> SearchConfig:
    return SearchConfig("sample", Unranked(), block=BLOCK, candidates=1, keep=1)


def _bon(name: str, sel: Any) -> SearchConfig:
    return SearchConfig(name, sel, block=None, candidates=CANDIDATES, keep=1)


def _beam(name: str, sel: Any) -> SearchConfig:
    return SearchConfig(name, sel, block=BLOCK, candidates=CANDIDATES, keep=KEEP)


def _args(name: str, sel: Args) -> SearchConfig:
    return SearchConfig(name, sel, block=1, candidates=10, keep=1, proposal="topk")


def _ig(name: str, sel: Any) -> SearchConfig:
    return SearchConfig(name, sel, block=BLOCK, candidates=CANDIDATES, keep=KEEP, resample_rounds=ROUNDS)


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
}
"""name -> frozen default configuration."""

_SHAPE = (
    "block",
    "candidates",
    "keep",
    "max_new_tokens",
    "budget",
    "temperature",
    "gamma",
    "resample_rounds",
    "resample_strength",
    "on_exhausted",
    "penalty",
    "refusal",
)


def preset(method: str, **overrides: Any) -> SearchConfig:
    """The named method's configuration with user overrides (None values are ignored), validated."""
    if method not in PRESETS:
        raise ConfigError("method", method, f"must be one of: {', '.join(PRESETS)}")
    unknown = set(overrides) - set(_SHAPE)
    if unknown:
        raise ConfigError(
            sorted(unknown)[0], overrides[sorted(unknown)[0]], f"is not a search setting; valid: {', '.join(_SHAPE)}"
        )
    cfg = PRESETS[method]
    given = {k: v for k, v in overrides.items() if v is not None}
    if "candidates" in given and "keep" not in given and cfg.keep > 1:
        given["keep"] = max(1, given["candidates"] // 4)  # K = N/4, as in the paper
    if method == "sample":
        given.pop("candidates", None), given.pop("keep", None)
    return replace(cfg, **given)
