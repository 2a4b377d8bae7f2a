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
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from inferenceguard.server.settings import ServerSettings

logger = logging.getLogger("inferenceguard.server")

MIN_TEMPERATURE = 0.01  # the engine samples (it has no greedy mode): temperature 0 is read as this
MIN_TOP_P = 1e-6  # top_p 0 (OpenAI allows it) keeps only the most likely token, as this does
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
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
    """Requests ignore fields they do not know (logged at debug level), like OpenAI-compatible servers.

    Types are strict, as OpenAI's are: ``"5"`` or ``true`` is not an integer, ``1`` is not a boolean (an
    integer is a number, though); NaN and infinities are refused."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _log_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict):
            ignored = sorted(set(data) - set(cls.model_fields))
            if ignored:
                logger.debug("%s: ignoring unsupported fields %s", cls.__name__, ignored)
        return data

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        """Refuse lone surrogates (a JSON escape such as \\ud800 can carry one): no tokenizer can encode them."""
        for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(text, str) and LONE_SURROGATE.search(text):
                raise ValueError("must be valid Unicode text, but holds a lone surrogate (U+D800-U+DFFF)")
        return value


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
# OpenAI fields the server validates (OpenAI's documented ranges) but does not use; docs/server.md lists them
IGNORED = "Validated and ignored (docs/server.md)."
penalty_field = Field(default=None, ge=-2, le=2, description=IGNORED)
logit_bias_field = Field(default=None, description=IGNORED)
stop_field = Field(default=None, description=IGNORED)
ignored_field = Field(default=None, description=IGNORED)
Bias = Annotated[int, Field(ge=-100, le=100)]
Stop = Annotated[list[str], Field(min_length=1, max_length=4)]
Metadata = Annotated[  # 16 pairs at most, keys <= 64 characters, values <= 512
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False
    include_obfuscation: bool | None = ignored_field


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


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
    # --- OpenAI fields validated and not used (a value that needs a missing feature is 400, see to_params) ---
    audio: dict[str, Any] | None = ignored_field
    frequency_penalty: float | None = penalty_field
    function_call: Literal["none", "auto"] | dict[str, Any] | None = ignored_field
    functions: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=128)] | None = ignored_field
    logit_bias: dict[str, Bias] | None = logit_bias_field
    logprobs: bool | None = ignored_field
    metadata: Metadata | None = ignored_field
    modalities: list[Literal["text", "audio"]] | None = ignored_field
    moderation: dict[str, Any] | None = ignored_field
    parallel_tool_calls: bool | None = ignored_field
    prediction: dict[str, Any] | None = ignored_field
    presence_penalty: float | None = penalty_field
    prompt_cache_key: str | None = ignored_field
    prompt_cache_options: dict[str, Any] | None = ignored_field
    prompt_cache_retention: Literal["in_memory", "24h"] | None = ignored_field
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = ignored_field
    response_format: ResponseFormat | None = ignored_field
    safety_identifier: Annotated[str, Field(max_length=64)] | None = ignored_field
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = ignored_field
    stop: str | Stop | None = stop_field
    store: bool | None = ignored_field
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = ignored_field
    tools: list[dict[str, Any]] | None = ignored_field
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = ignored_field
    verbosity: Literal["low", "medium", "high"] | None = ignored_field
    web_search_options: dict[str, Any] | None = ignored_field

    def to_params(self, s: ServerSettings) -> SearchParams:
        """The engine's settings for this request, with the server's defaults and limits."""
        _unsupported("response_format", self.response_format is not None and self.response_format.type != "text")
        _unsupported("tool_choice", isinstance(self.tool_choice, dict) or self.tool_choice == "required")
        _unsupported("function_call", isinstance(self.function_call, dict))
        _unsupported("modalities", "audio" in (self.modalities or []))
        _unsupported("audio", self.audio is not None)
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
    # --- OpenAI fields validated and not used (echo: true is 400, see to_params) ---
    best_of: Annotated[int, Field(ge=0, le=20)] | None = ignored_field
    echo: bool | None = ignored_field
    frequency_penalty: float | None = penalty_field
    logit_bias: dict[str, Bias] | None = logit_bias_field
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = ignored_field
    presence_penalty: float | None = penalty_field
    stop: str | Stop | None = stop_field
    suffix: str | None = ignored_field

    def to_params(self, s: ServerSettings) -> SearchParams:
        """The engine's settings for this request, with the server's defaults and limits."""
        _unsupported("echo", bool(self.echo))
        return _to_params(self, s, self.max_tokens, "max_tokens")


@dataclass(frozen=True)
class SearchParams:
    """A request at the engine's boundary: method, its settings, the first seed and answers per prompt."""

    method: str
    settings: dict[str, Any]
    seed: int
    n: int


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


def _unsupported(param: str, condition: bool) -> None:
    """400 for a value the server cannot honour and must not silently drop (the client relies on it)."""
    if condition:
        raise APIError(
            400, f"this server does not support that value of '{param}'", param=param, code="unsupported_value"
        )


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


class Health(BaseModel):
    """``GET /health``: 200 when ``ok``, 503 otherwise."""

    status: Literal["ok", "loading", "error", "stopped"]
    model: str
    queue: int = Field(ge=0, description="Requests waiting for the search worker.")


# Every status the server answers with, as documented in its OpenAPI schema (the fuzz run checks each
# response against it). 499 (the client left) is only counted in /metrics: no client ever receives it.
ERROR_STATUSES = {
    400: "Invalid request: malformed JSON, a schema error, a value over a server limit, a prompt too long",
    401: "Missing or wrong API key (only when the server has one)",
    404: "Unknown model",
    413: "Request body over --max-body-bytes",
    429: "The queue is full; retry later",
    500: "Internal error (details in the server log only)",
    503: "The models are loading, failed to load, or the server is shutting down",
    504: "The request took longer than --request-timeout",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each in OpenAI's error shape."""
    return {s: {"model": ErrorResponse, "description": ERROR_STATUSES[s]} for s in statuses}


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
