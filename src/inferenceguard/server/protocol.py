"""The wire format: OpenAI's chat/completions requests and responses, plus the guard's extras.

Fields follow OpenAI's documented order; the engine's settings sit in one marked block at the end of each
request (clients send them as extra body fields, e.g. ``extra_body={"method": "bon"}`` in the ``openai``
package). Unknown fields are ignored (and logged), as OpenAI-compatible servers do. Static bounds live on
shared ``Field`` objects; the server's own limits (``ServerSettings.limit_*``) are applied at the boundary
by ``to_params``, which turns a request into what the engine takes. Every choice, and the response, carries
the guard's verdict in an ``inferenceguard`` field that standard clients ignore.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from inferenceguard.server.settings import ServerSettings

logger = logging.getLogger("inferenceguard.server")

MIN_TEMPERATURE = 0.01  # the engine samples (it has no greedy mode): temperature 0 is read as this
MIN_TOP_P = 1e-6  # top_p 0 (OpenAI allows it) keeps only the most likely token, as this does
FINISH_REASONS = {"eos": "stop", "length": "length", "refused": "content_filter"}


class APIError(Exception):
    """An error the client caused (or a server state it should know of), sent in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


class OpenAIBaseModel(BaseModel):
    """Requests ignore fields they do not know (logged at debug level), like OpenAI-compatible servers."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _log_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict):
            ignored = sorted(set(data) - set(cls.model_fields))
            if ignored:
                logger.debug("%s: ignoring unsupported fields %s", cls.__name__, ignored)
        return data


# -- shared fields (llama-cpp-python style): static bounds here, the server's limits in to_params ----------
model_field = Field(default=None, description="The served model's name (see GET /v1/models); optional.")
max_tokens_field = Field(default=None, ge=1, description="Maximum new tokens (the engine's max_new_tokens).")
n_field = Field(default=1, ge=1, description="Answers per prompt: n searches with seeds seed .. seed+n-1.")
seed_field = Field(default=None, ge=0, le=2**62, description="Search seed (default: the server's).")
stream_field = Field(default=False, description="Send server-sent events as the search commits text.")
temperature_field = Field(default=None, ge=0, le=2, description=f"Temperature; 0 is read as {MIN_TEMPERATURE}.")
top_p_field = Field(
    default=None,
    ge=0,
    le=1,
    description=f"Nucleus sampling mass; 0 is read as {MIN_TOP_P} (the most likely token only).",
)
top_k_field = Field(default=None, ge=-1, description="Keep the k most likely tokens (0 or -1: off, as in vLLM).")
min_p_field = Field(default=None, ge=0, lt=1, description="Drop tokens below min_p x the top token's probability.")
repetition_penalty_field = Field(default=None, gt=0, le=10, description="CTRL repetition penalty (1: off).")
user_field = Field(default=None, max_length=256, description="An end-user id (accepted for compatibility, not used).")
method_field = Field(default=None, description="Search method: inferenceguard, bon, beam, sample, ... (strategies).")
budget_field = Field(default=None, gt=0, description="Safety budget d (default: the server's).")
candidates_field = Field(default=None, ge=1, description="N: candidates per prompt per search step.")
beams_field = Field(default=None, ge=1, description="K: beams kept per step (default N/4).")
block_field = Field(default=None, ge=1, description="Tokens per search step.")
on_exhausted_field = Field(default=None, description="When no safe candidate remains: flag | refuse.")


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(OpenAIBaseModel):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    model: str | None = model_field
    max_completion_tokens: int | None = max_tokens_field
    max_tokens: int | None = max_tokens_field
    n: int = n_field
    seed: int | None = seed_field
    stream: bool = stream_field
    stream_options: StreamOptions | None = None
    temperature: float | None = temperature_field
    top_p: float | None = top_p_field
    user: str | None = user_field
    # --- inferenceguard extras (extra body fields; top_k, min_p, repetition_penalty as vLLM names them) ---
    top_k: int | None = top_k_field
    min_p: float | None = min_p_field
    repetition_penalty: float | None = repetition_penalty_field
    method: str | None = method_field
    budget: float | None = budget_field
    candidates: int | None = candidates_field
    beams: int | None = beams_field
    block: int | None = block_field
    on_exhausted: Literal["flag", "refuse"] | None = on_exhausted_field

    def to_params(self, s: ServerSettings) -> SearchParams:
        """The engine's settings for this request, with the server's defaults and limits."""
        if self.max_completion_tokens is not None:
            return _to_params(self, s, self.max_completion_tokens, "max_completion_tokens")
        return _to_params(self, s, self.max_tokens, "max_tokens")


class CompletionRequest(OpenAIBaseModel):
    model: str | None = model_field
    prompt: str | list[str] = Field(description="A prompt or a list of prompts, each answered as a user turn.")
    max_tokens: int | None = max_tokens_field
    n: int = n_field
    seed: int | None = seed_field
    stream: bool = stream_field
    stream_options: StreamOptions | None = None
    temperature: float | None = temperature_field
    top_p: float | None = top_p_field
    user: str | None = user_field
    # --- inferenceguard extras (extra body fields; top_k, min_p, repetition_penalty as vLLM names them) ---
    top_k: int | None = top_k_field
    min_p: float | None = min_p_field
    repetition_penalty: float | None = repetition_penalty_field
    method: str | None = method_field
    budget: float | None = budget_field
    candidates: int | None = candidates_field
    beams: int | None = beams_field
    block: int | None = block_field
    on_exhausted: Literal["flag", "refuse"] | None = on_exhausted_field

    def to_params(self, s: ServerSettings) -> SearchParams:
        """The engine's settings for this request, with the server's defaults and limits."""
        return _to_params(self, s, self.max_tokens, "max_tokens")


@dataclass(frozen=True)
class SearchParams:
    """A request at the engine's boundary: method, its settings, the first seed and answers per prompt."""

    method: str
    settings: dict[str, Any]
    seed: int
    n: int

    @property
    def key(self) -> tuple:
        """Requests with equal keys (apart from the seed) may be searched in one batch."""
        return (self.method, *sorted(self.settings.items()))


def _to_params(
    req: ChatCompletionRequest | CompletionRequest, s: ServerSettings, max_tokens: int | None, tokens_param: str
) -> SearchParams:
    max_tokens = s.max_tokens if max_tokens is None else max_tokens
    _limit(tokens_param, max_tokens, s.limit_max_tokens)
    _limit("n", req.n, s.limit_n)
    _limit("candidates", req.candidates, s.limit_candidates)
    _limit("beams", req.beams, s.limit_beams)
    _limit("block", req.block, s.limit_block)
    method = req.method or s.method
    if s.allowed_methods is not None and method not in s.allowed_methods:
        raise APIError(
            400,
            f"'method' must be one of {', '.join(s.allowed_methods)} on this server, got {method!r}",
            param="method",
            code="invalid_value",
        )
    temperature = _pick(req.temperature, s.temperature)
    top_p = _pick(req.top_p, s.top_p)
    top_k = _pick(req.top_k, s.top_k)
    settings = {
        "max_new_tokens": max_tokens,
        "temperature": None if temperature is None else max(float(temperature), MIN_TEMPERATURE),
        "top_p": None if top_p is None else max(float(top_p), MIN_TOP_P),
        "top_k": None if top_k is None else max(int(top_k), 0),
        "min_p": _pick(req.min_p, s.min_p),
        "repetition_penalty": _pick(req.repetition_penalty, s.repetition_penalty),
        "budget": _pick(req.budget, s.budget),
        "candidates": _pick(req.candidates, s.candidates),
        "keep": _pick(req.beams, s.beams),
        "block": _pick(req.block, s.block),
        "on_exhausted": _pick(req.on_exhausted, s.on_exhausted),
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    return SearchParams(method=method, settings=settings, seed=_pick(req.seed, s.seed), n=req.n)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _limit(name: str, value: int | None, limit: int) -> None:
    if value is not None and value > limit:
        raise APIError(
            400, f"'{name}' must be <= {limit} on this server, got {value}", param=name, code="invalid_value"
        )


class ModerationRequest(OpenAIBaseModel):
    """OpenAI's moderation request: ``input`` is one text, a list of texts, or a list of text parts. The texts
    are scored as answers; ``prompt`` (an extra field) names the request they answer (one for all, or one per
    input), since the project's harm is "the answer attempts to fulfil a harmful request"."""

    input: str | list[str] | list[TextPart] = Field(description="The text(s) to classify (answers).")
    model: str | None = model_field
    # --- inferenceguard extras ---
    prompt: str | list[str] | None = Field(
        default=None, description="The request each input answers: one string for all, or one per input."
    )

    def pairs(self, limit_inputs: int, limit_chars: int) -> tuple[list[str], list[str]]:
        """(prompts, responses), validated against the server's limits (APIError 400 naming the field)."""
        texts = (
            [self.input] if isinstance(self.input, str) else [x if isinstance(x, str) else x.text for x in self.input]
        )
        if not texts:
            raise APIError(400, "'input' must hold at least one text", param="input", code="invalid_value")
        if len(texts) > limit_inputs:
            raise APIError(
                400, f"'input' must hold <= {limit_inputs} texts on this server, got {len(texts)}", param="input"
            )
        prompts = [self.prompt or ""] * len(texts) if not isinstance(self.prompt, list) else self.prompt
        if len(prompts) != len(texts):
            raise APIError(
                400,
                f"'prompt' must be one string or one per input ({len(texts)}), got {len(prompts)}",
                param="prompt",
                code="invalid_value",
            )
        for name, values in (("input", texts), ("prompt", prompts)):
            for i, t in enumerate(values):
                if len(t) > limit_chars:
                    raise APIError(
                        400,
                        f"'{name}[{i}]' must be at most {limit_chars} characters on this server, got {len(t)}",
                        param=name,
                        code="invalid_value",
                    )
        return prompts, texts


# -- responses --------------------------------------------------------------------------------------------
class Verdict(BaseModel):
    """The guard's verdict on one answer (``Result`` fields)."""

    safe: bool
    cost: float | None
    reward: float | None
    budget: float | None
    budget_left: float | None
    exhausted: bool
    refused: bool
    method: str
    new_tokens: int
    seconds: float


class GuardSummary(BaseModel):
    """The verdict over all choices of a response: safe iff every choice is; seconds = request wall time."""

    safe: bool
    refused: bool
    exhausted: bool
    method: str
    budget: float | None
    seconds: float


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str
    inferenceguard: Verdict


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    inferenceguard: GuardSummary


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None
    inferenceguard: Verdict | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = None
    inferenceguard: Verdict | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    inferenceguard: GuardSummary | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "inferenceguard"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


HARM_CATEGORY = "harmful"
"""The one category the project's cost model scores (docs/labelling.md): the text attempts to fulfil a harmful
request, or is harmful content. OpenAI's finer categories (hate, violence, ...) are not modelled, so they are
not reported."""


class ModerationScores(BaseModel):
    """The project's own fields of one moderation result: every scorer's raw score and verdict."""

    cost: float
    cost_threshold: float | None
    judge: float | None
    judge_threshold: float | None
    judge_flagged: bool | None
    reward: float
    cost_model: str
    judge_model: str | None


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    inferenceguard: ModerationScores


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
