"""Response shaping: the engine's results as OpenAI chat, completions and moderations bodies, and as the
server-sent-event chunks of a stream. Pure functions of the results and the few names they carry (the served
model's name, the request id), so nothing here touches the queue or the models.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

from inferenceguard.engine.types import Result, Stack
from inferenceguard.guard import Scores
from inferenceguard.server.protocol import (
    FINISH_REASONS,
    HARM_CATEGORY,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionChunk,
    CompletionResponse,
    DeltaMessage,
    GuardSummary,
    ModerationResponse,
    ModerationResult,
    ModerationScores,
    SearchParams,
    Usage,
    Verdict,
)

logger = logging.getLogger("inferenceguard.server")


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def verdict(r: Result) -> Verdict:
    """One answer's ``inferenceguard`` field (a NaN or infinite score is null)."""
    return Verdict(
        safe=bool(r.safe),
        cost=_finite(r.cost),
        reward=_finite(r.reward),
        budget=_finite(r.budget),
        budget_left=_finite(r.budget_left),
        exhausted=r.exhausted,
        refused=r.refused,
        method=r.method,
        new_tokens=r.new_tokens,
        seconds=round(r.seconds, 4),
    )


def summary(results: list[Result], method: str, seconds: float) -> GuardSummary:
    """The response's ``inferenceguard`` field: safe only if every choice is."""
    return GuardSummary(
        safe=all(r.safe for r in results),
        refused=any(r.refused for r in results),
        exhausted=any(r.exhausted for r in results),
        method=method,
        budget=_finite(results[0].budget),
        seconds=round(seconds, 4),
    )


def usage(results: list[Result], n: int) -> Usage:
    """Token counts; each prompt's tokens counted once though it has ``n`` choices."""
    prompt = sum(int(r.extra.get("prompt_tokens", 0)) for r in results[::n])
    completion = sum(r.new_tokens for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def finish_reason(r: Result) -> str:
    return "content_filter" if r.refused else FINISH_REASONS.get(r.finish_reason, "stop")


def sse(data: dict) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def completion_response(
    chat: bool, rid: str, model: str, params: SearchParams, results: list[Result], seconds: float
) -> dict:
    """A whole (non-streamed) chat or completions response as JSON-ready data."""
    created = int(time.time())
    usage_, summary_ = usage(results, params.n), summary(results, params.method, seconds)
    if chat:
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=r.response),
                finish_reason=finish_reason(r),
                inferenceguard=verdict(r),
            )
            for i, r in enumerate(results)
        ]
        out: Any = ChatCompletionResponse(
            id=rid, created=created, model=model, choices=choices, usage=usage_, inferenceguard=summary_
        )
    else:
        choices_ = [
            CompletionChoice(index=i, text=r.response, finish_reason=finish_reason(r), inferenceguard=verdict(r))
            for i, r in enumerate(results)
        ]
        out = CompletionResponse(
            id=rid, created=created, model=model, choices=choices_, usage=usage_, inferenceguard=summary_
        )
    return out.model_dump(mode="json")


class Chunks:
    """The server-sent events of one streamed response (chat or completions): one id, one creation time."""

    def __init__(self, chat: bool, rid: str, model: str) -> None:
        self.chat, self.rid, self.model, self.created = chat, rid, model, int(time.time())

    def choice(self, choice: int, text: str | None = None, result: Result | None = None, role: bool = False) -> str:
        """A chunk for one choice: a piece of text, or (with ``result``) its finish reason and verdict."""
        finish = finish_reason(result) if result is not None else None
        verdict_ = verdict(result) if result is not None else None
        if self.chat:
            delta = DeltaMessage(role="assistant" if role else None, content=text)
            c: Any = ChatCompletionChunk(
                id=self.rid,
                created=self.created,
                model=self.model,
                choices=[ChatChunkChoice(index=choice, delta=delta, finish_reason=finish, inferenceguard=verdict_)],
            )
        else:
            c = CompletionChunk(
                id=self.rid,
                created=self.created,
                model=self.model,
                choices=[
                    CompletionChoice(index=choice, text=text or "", finish_reason=finish, inferenceguard=verdict_)
                ],
            )
        data = c.model_dump(mode="json", exclude_none=True)  # chunks omit empty fields, as OpenAI's do
        if verdict_ is not None:  # ... but the verdict keeps its nulls (a NaN score is null)
            data["choices"][0]["inferenceguard"] = verdict_.model_dump(mode="json")
        return sse(data)

    def usage(self, results: list[Result], n: int) -> str:
        """The last chunk of ``include_usage``: no choices, the usage of all of them."""
        cls: Any = ChatCompletionChunk if self.chat else CompletionChunk
        last = cls(id=self.rid, created=self.created, model=self.model, choices=[], usage=usage(results, n))
        return sse(last.model_dump(mode="json"))


class StreamText:
    """What one streamed answer has sent: committed text as it comes, then the rest of the final answer.

    Committed text is final; the one exception is a commit that ends inside a multi-byte character (the
    decoded text ends in U+FFFD). That tail is held back, and after it the engine's later pieces cannot be
    trusted to continue the text exactly, so the answer's remainder is sent with the final result instead.
    """

    def __init__(self) -> None:
        self.engine, self.sent, self.frozen = "", "", False

    def commit(self, piece: str) -> str:
        if self.frozen or self.engine.endswith("\ufffd"):
            self.frozen = True
            return ""
        self.engine += piece
        ready = self.engine.rstrip("\ufffd")
        out, self.sent = ready[len(self.sent) :], ready
        return out

    def finish(self, final: str) -> str:
        if final.startswith(self.sent):
            return final[len(self.sent) :]
        logger.warning("streamed text is not a prefix of the final answer; sending the rest after the common part")
        common = 0
        while common < min(len(final), len(self.sent)) and final[common] == self.sent[common]:
            common += 1
        return final[common:]


def moderation_response(scores: Sequence[Scores], stack: Stack, model: str) -> ModerationResponse:
    """``/v1/moderations``: each text flagged by the cost model (the judge's and reward's scores beside it)."""
    results = []
    for sc in scores:
        flagged = bool(sc.unsafe)
        results.append(
            ModerationResult(
                flagged=flagged,
                categories={HARM_CATEGORY: flagged},
                category_scores={HARM_CATEGORY: sc.cost},
                category_applied_input_types={HARM_CATEGORY: ["text"]},
                inferenceguard=ModerationScores(
                    cost=sc.cost,
                    cost_threshold=sc.cost_threshold,
                    judge=sc.judge,
                    judge_threshold=sc.judge_threshold,
                    judge_flagged=sc.judge_unsafe,
                    reward=sc.reward,
                    cost_model=str(getattr(stack.cost, "name", type(stack.cost).__name__)),
                    judge_model=None if stack.judge is None else str(getattr(stack.judge, "name", "judge")),
                ),
            )
        )
    return ModerationResponse(id=f"modr-{uuid.uuid4().hex}", model=model, results=results)
