"""The Sauté safety state: how much of the safety budget a partial response has left.

z_0 = d; after each step k the cost model's increase on the growing prefix is charged,
c_k = max(0, C(x, y<=k) - C(x, y<k)), and z_{k+1} = (z_k - c_k) / gamma. With gamma = 1 this is
d - sum(c), and the constraint sum(gamma^k c_k) <= d holds iff z stays >= 0 (with gamma < 1, the
discounted budget gamma^k z_k is what never grows). Pure tensor functions, no I/O.
"""

from __future__ import annotations

import torch

from inferenceguard.errors import ConfigError


def init(budget: float, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n,) float32 tensor holding the starting budget d (must be > 0)."""
    if not budget > 0:
        raise ConfigError("budget", budget, "must be > 0 (the safety budget d)")
    return torch.full((n,), float(budget), device=device)


def step_cost(cost_now: torch.Tensor, cost_before: torch.Tensor) -> torch.Tensor:
    """Per-step safety cost c = max(0, C(prefix now) - C(prefix before)): never negative."""
    return (cost_now - cost_before).clamp(min=0)


def step(z: torch.Tensor, cost: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """z' = (z - c) / gamma; gamma in (0, 1]."""
    return (z - cost) / gamma


def is_safe(z: torch.Tensor) -> torch.Tensor:
    """A trajectory is within budget iff its safety state is non-negative."""
    return z >= 0


def reshape(value: torch.Tensor, z: torch.Tensor, penalty: float, ok: torch.Tensor | None = None) -> torch.Tensor:
    """Sauté's reshaped objective: the task value while admissible (by default: within budget), else
    -penalty + z, so an over-budget candidate ranks below every admissible one and the least-unsafe first."""
    return torch.where(is_safe(z) if ok is None else ok, value, -penalty + z)
