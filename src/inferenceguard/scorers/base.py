"""The scorer contract: one small interface for reward models, cost models and judges.

A scorer maps a batch of (prompt, response) pairs to floats. Responses may be partial (the search scores
prefixes). Reward: higher is better. Cost: higher is more harmful. ``threshold`` separates the two classes
(cost: ``score > threshold`` is unsafe; reward: ``score >= threshold`` is an acceptable, non-refusing answer).

A scorer may also implement :class:`LatentScorer`: a head on the *base LM's own* hidden states. When the
engine's LM is the model the head was trained on, the engine hands it the pooled features it already
computed while generating, so scoring costs no extra forward pass (the text path re-encodes instead).

A scorer may also implement :class:`PrefixScorer`: a score at every token of the response (score models),
so the cost of every prefix comes from one forward pass. As the cost model, the engine then charges the safety
budget token by token (the paper's token-wise cost; docs/methods.md, "The safety state") instead of at block
boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from inferenceguard.errors import ConfigError


@runtime_checkable
class Scorer(Protocol):
    """score(prompts, responses) -> (N,) float32 tensor, plus a declared threshold."""

    name: str
    threshold: float | None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor: ...


@runtime_checkable
class LatentScorer(Scorer, Protocol):
    """A scorer that can also read pooled hidden states of a specific base LM.

    Features are the mean over response tokens of the hidden states of ``layers`` (indices into
    ``output_hidden_states``, 0 = embeddings), concatenated: (N, len(layers) * hidden); when ``prompt_pool``
    is set, the prompt's states at the same layers follow ('last': at its last token; 'mean': over its tokens).
    """

    base_identity: str
    layers: tuple[int, ...]
    prompt_pool: str | None

    def score_features(self, features: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class PrefixScores:
    """The score of every token prefix of one response, from one forward pass.

    ``scores[i]`` is the score of ``response[: ends[i]]``: ``ends`` are character offsets into the response,
    one per response token of the scorer's own tokenization, strictly increasing, the last = len(response).
    """

    ends: tuple[int, ...]
    scores: torch.Tensor  # (T,) float32, T = number of response tokens


@runtime_checkable
class PrefixScorer(Scorer, Protocol):
    """A scorer that emits a score per token (a score model): the score of every prefix in one pass.

    ``score(p, r)`` equals the last entry of ``score_prefixes([p], [r])[0].scores`` (for a non-empty ``r``), and
    ``scores[i]`` equals ``score(p, r[: ends[i]])`` wherever the scorer tokenizes that prefix as the start of
    ``r``'s own tokens. A cost model with this capability is charged token-wise by the engine.
    """

    def score_prefixes(self, prompts: Sequence[str], responses: Sequence[str]) -> list[PrefixScores]: ...


def check_batch(prompts: Sequence[str], responses: Sequence[str]) -> None:
    """The validation every scorer shares: same lengths, at least one pair, strings only."""
    if len(prompts) != len(responses):
        raise ConfigError("responses", f"<{len(responses)} items>", f"must match prompts ({len(prompts)} items)")
    if not prompts:
        raise ConfigError("prompts", [], "must hold at least one (prompt, response) pair to score")
    for arg, seq in (("prompts", prompts), ("responses", responses)):
        bad = next((x for x in seq if not isinstance(x, str)), None)
        if bad is not None:
            raise ConfigError(arg, bad, "must hold only strings")


class BatchedScorer:
    """Base for adapters: validation and batching written once; a backend implements ``_score_batch``."""

    name: str = "scorer"
    threshold: float | None = None
    batch_size: int = 32

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        check_batch(prompts, responses)
        out = [
            self._score_batch(list(prompts[i : i + self.batch_size]), list(responses[i : i + self.batch_size]))
            for i in range(0, len(prompts), self.batch_size)
        ]
        return torch.cat(out).float().cpu()

    def _score_batch(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        raise NotImplementedError


def require_threshold(scorer: Scorer, role: str) -> float:
    """A cost model must declare the threshold that separates safe from unsafe."""
    threshold = getattr(scorer, "threshold", None)
    if threshold is None:
        raise ConfigError(
            f"{role}.threshold",
            None,
            f"must be set: the {role} '{getattr(scorer, 'name', scorer)}' "
            "declares no threshold separating safe from unsafe",
        )
    return float(threshold)


def resolve_budget(budget: float | None, cost: Scorer) -> float:
    """The safety budget d a search (or a server's limit, or a rollout) uses: ``budget`` when given, else the
    cost model's threshold, which it must then declare (``require_threshold``). The one place "budget None"
    becomes the threshold."""
    if budget is not None:
        return float(budget)
    threshold = require_threshold(cost, "cost_model")
    if threshold <= 0:  # e.g. a beaver cost model (score > 0 = unsafe): 0 separates the classes, not a budget
        raise ConfigError(
            "budget",
            None,
            f"must be given: the cost model '{getattr(cost, 'name', cost)}' has threshold {threshold:g}, which "
            "cannot be the safety budget d (d must be > 0); pass --budget (e.g. the paper's 10 for beaver costs)",
        )
    return threshold
