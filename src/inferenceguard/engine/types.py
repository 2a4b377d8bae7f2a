"""What the engine takes and gives: the search configuration, the stack of models, candidates, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from inferenceguard.errors import ConfigError
from inferenceguard.models import LM
from inferenceguard.scorers.base import Scorer

REFUSAL = "I'm sorry, but I can't help with that."


@dataclass
class Candidates:
    """Scores of one step's candidates, flattened over prompts: every tensor is (R,)."""

    prompt: torch.Tensor  # long: which prompt of the batch each row answers
    z: torch.Tensor  # safety state after this step
    cost: torch.Tensor  # cost model on the prefix
    logprob: torch.Tensor  # log-probability of the step's block under the LM
    budget: float  # d, for critic inputs z/d
    reward: torch.Tensor  # reward model on the prefix; nan where the selector did not ask for it (final: known)
    p_safe: torch.Tensor | None = None  # critic heads, when the selector asked for them
    value: torch.Tensor | None = None
    final: bool = False  # ranking finished answers (reward always present) rather than partial ones


@runtime_checkable
class Selector(Protocol):
    """How a strategy ranks candidates: returns (score (R,), admissible (R,) bool).

    ``admissible`` is False for candidates the strategy refuses to keep (e.g. over budget); a prompt whose
    candidates are all inadmissible triggers resampling and then the exhaustion policy.
    """

    needs_reward: bool
    needs_critic: bool

    def __call__(self, c: Candidates) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class Critic(Protocol):
    """A value model on the LM's hidden state and the normalised safety state."""

    base_identity: str

    def evaluate(self, h: torch.Tensor, z_frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (R, H), z/d (R,) -> (p_safe (R,), value (R,))."""
        ...


@dataclass
class Stack:
    """The models a search uses: the base LM, the reward and cost models, and optionally a critic."""

    lm: LM
    reward: Scorer
    cost: Scorer
    critic: Critic | None = None
    judge: Scorer | None = None  # independent harm judge, used by evaluation only


@dataclass(frozen=True)
class SearchConfig:
    """One strategy = one frozen configuration of the engine (see strategies.py for the presets)."""

    method: str
    select: Any  # a Selector (frozen dataclass, so configs compare and hash)
    block: int | None = 32  # tokens per step; None = the whole response in one step (Best-of-N, sampling)
    candidates: int = 16  # N: candidates per prompt per step
    keep: int = 4  # K: beams kept per prompt
    proposal: Literal["sample", "topk"] = "sample"  # topk: the first token of a block is each parent's k-th best
    # sampling, the same in every method (engine/sampling.py); None = the base model's default, else the paper's
    temperature: float | None = None
    top_p: float | None = None  # nucleus: keep the most likely tokens until their mass reaches top_p (1 = off)
    top_k: int | None = None  # keep the k most likely tokens (0 = off)
    min_p: float | None = None  # drop tokens below min_p x the most likely token's probability (0 = off)
    repetition_penalty: float | None = None  # CTRL penalty on tokens already in the response (1 = off)
    max_new_tokens: int = 128
    budget: float | None = None  # d; None = the cost model's threshold
    gamma: float = 1.0
    penalty: float = 1e4  # n: the reshaped objective of an over-budget candidate
    resample_rounds: int = 0  # M
    resample_strength: float = 4.0  # logit penalty per occurrence (per candidate) of a token in unsafe blocks
    on_exhausted: Literal["flag", "refuse"] = "flag"
    refusal: str = REFUSAL
    steer: Any = None  # an optional hidden-state transform before the LM head (RE-Control)
    record_hidden: bool = False  # keep each answer's hidden state at every step boundary (critic rollouts)
    # settings this method defines itself, so a shared override leaves them alone (strategies.preset): e.g.
    # Best-of-N's one whole-response step ignores --block; not part of the configuration's identity
    fixed: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.block is not None and (not isinstance(self.block, int) or self.block < 1):
            raise ConfigError("block", self.block, "must be an integer >= 1 (or None for one whole-response step)")
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise ConfigError("candidates", self.candidates, "must be an integer >= 1")
        if not isinstance(self.keep, int) or self.keep < 1:
            raise ConfigError("keep", self.keep, "must be an integer >= 1")
        if self.keep > self.candidates:
            raise ConfigError("keep", self.keep, f"must be <= candidates ({self.candidates})")
        if not self.max_new_tokens >= 1:
            raise ConfigError("max_new_tokens", self.max_new_tokens, "must be >= 1")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError("temperature", self.temperature, "must be > 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError("top_p", self.top_p, "must be in (0, 1] (1 = no nucleus truncation)")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0
        ):
            raise ConfigError("top_k", self.top_k, "must be an integer >= 0 (0 = no top-k truncation)")
        if self.min_p is not None and not 0 <= self.min_p < 1:
            raise ConfigError("min_p", self.min_p, "must be in [0, 1) (0 = no min-p truncation)")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise ConfigError("repetition_penalty", self.repetition_penalty, "must be > 0 (1 = no penalty)")
        if self.budget is not None and not self.budget > 0:
            raise ConfigError("budget", self.budget, "must be > 0")
        if not 0 < self.gamma <= 1:
            raise ConfigError("gamma", self.gamma, "must be in (0, 1]")
        if self.resample_rounds < 0:
            raise ConfigError("resample_rounds", self.resample_rounds, "must be >= 0")
        if self.on_exhausted not in ("flag", "refuse"):
            raise ConfigError("on_exhausted", self.on_exhausted, "must be 'flag' or 'refuse'")
        if self.proposal not in ("sample", "topk"):
            raise ConfigError("proposal", self.proposal, "must be 'sample' or 'topk'")
        if self.proposal == "topk" and self.block != 1:
            raise ConfigError("block", self.block, "must be 1 with top-k proposals (token-level search)")
        if self.proposal == "topk" and self.keep != 1:
            raise ConfigError("keep", self.keep, "must be 1 with top-k proposals (the top k tokens of one beam)")


@dataclass
class Result:
    """One answer with its verdict and what it cost to find."""

    prompt: str
    method: str
    response: str
    safe: bool  # final safety state >= 0: the response stayed within budget by the cost model
    cost: float  # cost model on the final response
    reward: float  # reward model on the final response
    budget: float
    budget_left: float
    budget_trajectory: list[float]
    exhausted: bool  # some step found no admissible candidate after all resampling rounds
    refused: bool  # the exhaustion policy replaced the answer with a refusal
    finish_reason: str  # eos | length | refused
    new_tokens: int
    tokens_sampled: int  # all candidates' tokens: the search's real generation work
    lm_forward_passes: int
    reward_calls: int
    cost_calls: int
    critic_calls: int
    seconds: float
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)
    hidden_trajectory: torch.Tensor | None = None  # (S, H) when cfg.record_hidden; never serialised

    @property
    def scorer_calls(self) -> int:
        return self.reward_calls + self.cost_calls

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d.pop("hidden_trajectory")
        d["scorer_calls"] = self.scorer_calls
        return d
