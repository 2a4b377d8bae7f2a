"""Cheap deterministic text scorers for engine tests: real signals, no models."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inferenceguard.scorers.base import BatchedScorer


class CharCost(BatchedScorer):
    """Cost = share of the response's characters that are in ``bad`` (so harm grows with those chars)."""

    name = "char-cost"

    def __init__(self, bad: str | None = "xyzqjkXYZQJK", threshold: float | None = 0.5):
        self.bad, self.threshold = (set(bad) if bad is not None else None), threshold

    def _score_batch(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        if self.bad is None:  # everything is harmful
            return torch.ones(len(responses))
        return torch.tensor([sum(ch in self.bad for ch in r) / max(len(r), 1) for r in responses])


class VowelReward(BatchedScorer):
    """Reward = share of vowels in the response, times log length (longer vowel-rich answers win)."""

    name = "vowel-reward"
    threshold = 0.0

    def _score_batch(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([sum(ch in "aeiou" for ch in r) / max(len(r), 1) * (1 + len(r)) ** 0.5 for r in responses])


def texts(prompts: Sequence[str]) -> list[str]:
    return list(prompts)
