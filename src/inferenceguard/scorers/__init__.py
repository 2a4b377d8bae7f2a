"""Reward models, cost models and harm judges behind one small interface (see ``base``)."""

from inferenceguard.scorers.base import BatchedScorer, LatentScorer, PrefixScorer, Scorer, require_threshold
from inferenceguard.scorers.defaults import default_stack_info, load_scorer

__all__ = [
    "BatchedScorer",
    "LatentScorer",
    "PrefixScorer",
    "Scorer",
    "default_stack_info",
    "load_scorer",
    "require_threshold",
]
