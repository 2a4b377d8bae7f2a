"""A tiny evaluation stack shared by the tests: a random LM, stub scorers, a stub critic and a judge."""

from __future__ import annotations

import time

import torch

from inferenceguard.engine import Stack
from tests.stubs import CharCost, VowelReward
from tests.utils.tiny import tiny_lm


class StubCritic(torch.nn.Module):
    """A differentiable stand-in critic: p_safe = sigmoid(u.h + b), value = v.h (linear heads on h).

    ``evaluate`` runs under inference mode, like the real critic's, so RE-Control must unwrap it.
    """

    def __init__(
        self,
        base_identity: str,
        hidden: int = 64,
        seed: int = 0,
        p_bias: float = 0.0,
        value_dir: torch.Tensor | None = None,
        safe_dir: torch.Tensor | None = None,
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.base_identity = base_identity
        self.u = torch.nn.Parameter(safe_dir if safe_dir is not None else torch.randn(hidden, generator=g) / 8)
        self.v = torch.nn.Parameter(value_dir if value_dir is not None else torch.randn(hidden, generator=g) / 8)
        self.b = p_bias

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(h @ self.u + self.b), h @ self.v

    @torch.inference_mode()
    def evaluate(self, h: torch.Tensor, z_frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p_safe, value = self.heads(h.float())
        return torch.where(z_frac >= 0, p_safe, torch.zeros_like(p_safe)), value


class SlowJudge(CharCost):
    """The stub cost model as an independent judge, optionally slowed down (to kill a run mid-way)."""

    name = "slow-judge"

    def __init__(self, delay: float = 0.0):
        super().__init__(bad="xyzXYZ", threshold=0.1)
        self.delay = delay

    def _score_batch(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        time.sleep(self.delay)
        return super()._score_batch(prompts, responses)


def tiny_stack(delay: float = 0.0, critic: bool = True) -> Stack:
    lm = tiny_lm(eos_boost=1.0)
    return Stack(
        lm=lm,
        reward=VowelReward(),
        cost=CharCost(threshold=0.1),
        critic=StubCritic(lm.identity) if critic else None,
        judge=SlowJudge(delay),
    )
