"""The OpenAI-compatible server: ``create_app(settings, guard)`` builds a FastAPI app that guards every answer.

How a request travels:
1. Checked at the boundary (the ``_Gate`` middleware: API key on ``/v1``, body size; then pydantic, the
   request's ``to_params`` with the server's limits, the method's preset, the prompt's length in tokens):
   every known bad input is answered 4xx in OpenAI's error shape before anything is queued.
2. Queued (bounded: a full queue answers 429). One worker coroutine takes a request, waits ``batch_window``
   seconds for more (up to ``max_batch`` answers), groups what it took by (method, settings, seed) and runs
   each group as ONE ``Guard.generate`` call in a one-thread executor: torch releases the GIL, so the event
   loop keeps serving while the search runs. ``n`` answers are ``n`` items with seeds seed .. seed+n-1.
3. Streaming: the engine's ``on_commit`` runs in the worker thread; it hands each piece of committed text to
   the event loop with ``loop.call_soon_threadsafe`` and the SSE stream sends it at once. Then the rest of
   the final answer (which starts with the committed text; a refusal is committed text + the refusal),
   then a last chunk with ``finish_reason`` and the verdict.
4. Cancellation: a request whose client left, or that timed out (504), is marked cancelled. Still queued:
   it is skipped. Already in a running batch: torch cannot be interrupted, so the batch finishes and the
   result is dropped (both counted in ``inferenceguard_dropped_answers_total``); the server stays healthy.

A request's answer never depends on the batch it shared (the engine draws each prompt from its own
generator). No module-level state: everything lives on the ``_Server`` of one app.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferenceguard.engine.types import Result
from inferenceguard.errors import ConfigError, InferenceGuardError
from inferenceguard.guard import Guard, load_stack
from inferenceguard.models import LM
from inferenceguard.server.protocol import (
    FINISH_REASONS,
    HARM_CATEGORY,
    APIError,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    GuardSummary,
    ModelCard,
    ModelList,
    ModerationRequest,
    ModerationResponse,
    ModerationResult,
    ModerationScores,
    SearchParams,
    Usage,
    Verdict,
)
from inferenceguard.server.settings import ServerSettings
from inferenceguard.strategies import bind, preset

logger = logging.getLogger("inferenceguard.server")

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/moderations", "/v1/models", "/health", "/metrics")
ENGINE_PARAMS = {"keep": "beams", "max_new_tokens": "max_tokens"}  # engine argument -> request field


def create_app(settings: ServerSettings | None = None, guard: Guard | None = None) -> FastAPI:
    """The app: routes, error handlers and the search worker. Without ``guard``, the stack named by the
    settings is loaded in the background at startup (``/health`` answers 503 until it is ready)."""
    server = _Server(settings or ServerSettings(), guard)
    app = FastAPI(title="inferenceguard", version="0.1.0", lifespan=server.lifespan)
    app.state.server = server
    app.add_middleware(_Gate, server=server)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await server.answer(request, body)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await server.answer(request, body)

    @app.post("/v1/moderations", response_model=ModerationResponse)
    async def moderations(body: ModerationRequest) -> ModerationResponse:
        return await server.moderate(body)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=server.settings.served_model_name, created=server.created)])

    @app.get("/health", response_model=None)
    async def health() -> Response:
        status = server.status()
        body = {"status": status, "model": server.settings.served_model_name, "queue": server.queue_depth()}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", response_model=None)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_exception_handler(APIError, _api_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(InferenceGuardError, _api_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_handler)  # type: ignore[arg-type]
    return app


def load_guard(settings: ServerSettings) -> Guard:
    """The stack the settings name (``model``, ``reward_model``, ``cost_model``, ``critic``, device)."""
    s = settings
    judge = s.judge if s.moderation_judge else None
    stack = load_stack(
        s.model, s.reward_model, s.cost_model, s.critic, judge, s.device, s.dtype, load_judge=s.moderation_judge
    )
    return Guard(stack=stack)


# -- one request's answers in flight ----------------------------------------------------------------------
class _Conversation(str):
    """A chat as one prompt: its string value (what the reward and cost models see as the prompt) is the last
    user message; ``messages`` (what the LM sees, through its chat template) is the whole conversation."""

    messages: list[dict[str, str]]

    def __new__(cls, messages: list[dict[str, str]]) -> _Conversation:
        last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        obj = super().__new__(cls, last_user)
        obj.messages = messages
        return obj


class _ChatLM(LM):
    """The LM handle the server searches with: a ``_Conversation`` is formatted from all its messages."""

    def format_prompt(self, prompt: str | list[dict[str, str]]) -> str:
        return super().format_prompt(getattr(prompt, "messages", prompt))


def _chat_lm(lm: LM, own_tokenizer: bool = False) -> _ChatLM:
    """The same model as ``lm``; ``own_tokenizer`` copies the tokenizer, so the event loop can count prompt
    tokens while the worker thread uses the original (fast tokenizers are not safe to share across threads)."""
    values = {f.name: getattr(lm, f.name) for f in dataclasses.fields(lm)}
    if own_tokenizer:
        values["tokenizer"] = copy.deepcopy(lm.tokenizer)
    return _ChatLM(**values)


@dataclasses.dataclass
class _Item:
    """One answer to search: choice index in its response, prompt, seed."""

    job: _Job
    choice: int
    prompt: str
    seed: int


class _Job:
    """One request on its way: its items, and the events (commits, results, an error) its handler reads."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, params: SearchParams, prompts: list[str], stream: bool, timeout: float
    ):
        self.loop, self.params, self.stream = loop, params, stream
        self.items = [
            _Item(self, p * params.n + j, prompt, params.seed + j)
            for p, prompt in enumerate(prompts)
            for j in range(params.n)
        ]
        self.events: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        self.deadline = loop.time() + timeout
        self.cancelled = False
        self.done = False

    def commit(self, choice: int, text: str) -> None:
        """From the worker thread: the search committed ``text`` for this choice."""
        if self.cancelled or not self.stream:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is shutting down
            self.loop.call_soon_threadsafe(self.events.put_nowait, ("commit", choice, text))

    def cancel(self) -> None:
        self.cancelled = not self.done


# -- the server -------------------------------------------------------------------------------------------
class _Server:
    """State of one app: settings, the guard, the queue, the worker and the metrics."""

    def __init__(self, settings: ServerSettings, guard: Guard | None):
        self.settings, self.given = settings, guard
        self.guard: Guard | None = None  # the guard searching with _ChatLM (set once loaded)
        self.counter: _ChatLM | None = None  # a tokenizer copy for counting prompt tokens on the event loop
        self.metrics = _Metrics(self)
        self.created = int(time.time())
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue[_Job] | None = None
        self.loading: asyncio.Future[None] | None = None
        self.executor: ThreadPoolExecutor | None = None

    # -- lifecycle --
    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue(self.settings.queue_size)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="inferenceguard-search")
        self.loading = self.loop.run_in_executor(self.executor, self._load)
        worker = asyncio.create_task(self._work())
        try:
            yield
        finally:
            worker.cancel()
            while not self.queue.empty():
                job = self.queue.get_nowait()
                job.events.put_nowait(("error", -1, APIError(503, "the server is shutting down", "server_error")))
            self.executor.shutdown(wait=False, cancel_futures=True)  # a running batch finishes, then exits

    def _load(self) -> None:
        """Worker thread: the guard from the settings (unless given), then its chat-aware views."""
        try:
            guard = self.given or load_guard(self.settings)
        except InferenceGuardError as e:  # a missing or wrong asset: the message says how to fix it
            logger.error("the model stack failed to load: %s", e)
            raise
        except Exception:
            logger.exception("the model stack failed to load")
            raise
        view = copy.copy(guard)
        view.stack = dataclasses.replace(guard.stack, lm=_chat_lm(guard.stack.lm))
        self.counter = _chat_lm(guard.stack.lm, own_tokenizer=True)
        self.guard = view
        logger.info("model stack ready: %s", guard.stack.lm.identity)

    def status(self) -> str:
        if self.loading is None or not self.loading.done():
            return "loading" if self.loading is not None else "stopped"
        return "error" if self.loading.cancelled() or self.loading.exception() is not None else "ok"

    def queue_depth(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def _ready(self) -> Guard:
        if self.loading is None:
            raise APIError(503, "the server is not started", "server_error", code="not_started")
        if not self.loading.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.loading), self.settings.load_timeout)
            except TimeoutError:
                raise APIError(
                    503, "the models are still loading; retry shortly", "server_error", code="model_loading"
                ) from None
            except Exception:
                pass
        if self.status() != "ok" or self.guard is None:
            raise APIError(
                503, "the model stack failed to load (see the server log)", "server_error", code="model_unavailable"
            )
        return self.guard

    # -- a request --
    async def answer(self, request: Request, body: ChatCompletionRequest | CompletionRequest) -> Response:
        """Check, queue, then answer as JSON or stream as server-sent events."""
        t0 = time.perf_counter()
        chat = isinstance(body, ChatCompletionRequest)
        self._check_model(body.model)
        params = body.to_params(self.settings)
        guard = await self._ready()
        self._check_method(guard, params)
        prompts = self._prompts(body, params)
        assert self.loop is not None and self.queue is not None
        job = _Job(self.loop, params, prompts, body.stream, self.settings.request_timeout)
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise APIError(
                429,
                f"the server is busy ({self.settings.queue_size} requests waiting); retry later",
                "rate_limit_error",
                code="queue_full",
            ) from None
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                self._stream(job, chat, rid, usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        results = await self._collect(job, request)
        return JSONResponse(self._response(chat, rid, params, results, time.perf_counter() - t0))

    async def moderate(self, body: ModerationRequest) -> ModerationResponse:
        """Score the texts as answers (to ``prompt``) with the cost model, the judge and the reward model, in
        the worker thread (so scoring never runs beside a search on the same models)."""
        self._check_model(body.model)
        prompts, texts = body.pairs(self.settings.limit_moderation_inputs, self.settings.limit_prompt_chars)
        guard = await self._ready()
        assert self.loop is not None
        scores = await self.loop.run_in_executor(self.executor, guard.score, prompts, texts)
        stack = guard.stack
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
        self.metrics.moderated.inc(len(results))
        return ModerationResponse(id=f"modr-{uuid.uuid4().hex}", model=self.settings.served_model_name, results=results)

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.settings.served_model_name:
            raise APIError(
                404,
                f"The model '{model}' does not exist; this server serves '{self.settings.served_model_name}'",
                param="model",
                code="model_not_found",
            )

    def _check_method(self, guard: Guard, params: SearchParams) -> None:
        """The engine's own validation (ConfigError -> 400), the critic, and the budget limit."""
        stack = guard.stack
        try:
            bind(preset(params.method, **params.settings), stack)
        except ConfigError as e:
            if e.arg != "critic":
                raise
            message = f"'method' {params.method!r} needs a critic fitting the base model, and this server has none"
            raise APIError(400, message + " (start it with --critic FILE)", param="method", code="invalid_value") from e
        budget = params.settings.get("budget")
        if budget is not None:
            limit = self.settings.limit_budget or self.settings.budget or getattr(stack.cost, "threshold", None)
            if limit is not None and budget > limit:
                raise APIError(
                    400,
                    f"'budget' must be <= {limit:g} on this server, got {budget}",
                    param="budget",
                    code="invalid_value",
                )

    def _prompts(self, body: ChatCompletionRequest | CompletionRequest, params: SearchParams) -> list[str]:
        """The request's prompts, each checked for length (characters, then tokens with the chat template)."""
        s = self.settings
        if isinstance(body, ChatCompletionRequest):
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
            ]
            if not any(m["role"] == "user" and m["content"].strip() for m in messages):
                raise APIError(
                    400, "'messages' must contain a user message with text", param="messages", code="invalid_value"
                )
            named: list[tuple[str, str]] = [("messages", _Conversation(messages))]
            chars = [sum(len(m["content"]) for m in messages)]
        else:
            raw = [body.prompt] if isinstance(body.prompt, str) else body.prompt
            if not raw:
                raise APIError(400, "'prompt' must hold at least one prompt", param="prompt", code="invalid_value")
            if len(raw) > s.limit_prompts:
                raise APIError(
                    400,
                    f"'prompt' must hold <= {s.limit_prompts} prompts on this server, got {len(raw)}",
                    param="prompt",
                    code="invalid_value",
                )
            one = isinstance(body.prompt, str)
            named = [("prompt" if one else f"prompt[{i}]", p) for i, p in enumerate(raw)]
            chars = [len(p) for p in raw]
        counter = self.counter
        assert counter is not None
        max_new = params.settings["max_new_tokens"]
        for (param, prompt), n_chars in zip(named, chars):
            if n_chars > s.limit_prompt_chars:
                raise APIError(
                    400,
                    f"'{param}' must be <= {s.limit_prompt_chars} characters on this server, got {n_chars}",
                    param=param,
                    code="context_length_exceeded",
                )
            n_tokens = len(counter.encode_prompt(prompt, arg=param))  # ConfigError (empty, too long) -> 400
            if n_tokens > s.limit_prompt_tokens:
                raise APIError(
                    400,
                    f"'{param}' must be <= {s.limit_prompt_tokens} tokens on this server, got {n_tokens}",
                    param=param,
                    code="context_length_exceeded",
                )
            if n_tokens + max_new > counter.max_context:
                raise APIError(
                    400,
                    f"'max_tokens' ({max_new}) plus the prompt ({n_tokens} tokens) must fit the "
                    f"model's context of {counter.max_context} tokens",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
        return [p for _, p in named]

    async def _next(self, job: _Job, request: Request | None) -> tuple[str, int, Any]:
        """The job's next event; 504 past its deadline; 499 when a non-streaming client has left."""
        assert self.loop is not None
        while True:
            left = job.deadline - self.loop.time()
            if left <= 0:
                timeout = self.settings.request_timeout
                raise APIError(504, f"the request took longer than {timeout:g} s", "timeout_error", code="timeout")
            try:
                return await asyncio.wait_for(job.events.get(), min(left, 0.5))
            except TimeoutError:
                if request is not None and await request.is_disconnected():
                    raise APIError(499, "the client closed the request", code="client_closed") from None

    async def _collect(self, job: _Job, request: Request) -> list[Result]:
        results: dict[int, Result] = {}
        try:
            while len(results) < len(job.items):
                kind, choice, payload = await self._next(job, request)
                if kind == "result":
                    results[choice] = payload
                elif kind == "error":
                    raise payload
            job.done = True
        finally:
            job.cancel()
        return [results[c] for c in range(len(job.items))]

    def _response(self, chat: bool, rid: str, params: SearchParams, results: list[Result], seconds: float) -> dict:
        name, created = self.settings.served_model_name, int(time.time())
        usage, summary = _usage(results, params.n), _summary(results, params.method, seconds)
        if chat:
            choices = [
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=r.response),
                    finish_reason=_finish(r),
                    inferenceguard=_verdict(r),
                )
                for i, r in enumerate(results)
            ]
            out: Any = ChatCompletionResponse(
                id=rid, created=created, model=name, choices=choices, usage=usage, inferenceguard=summary
            )
        else:
            choices_ = [
                CompletionChoice(index=i, text=r.response, finish_reason=_finish(r), inferenceguard=_verdict(r))
                for i, r in enumerate(results)
            ]
            out = CompletionResponse(
                id=rid, created=created, model=name, choices=choices_, usage=usage, inferenceguard=summary
            )
        return out.model_dump(mode="json")

    async def _stream(self, job: _Job, chat: bool, rid: str, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: committed text as it comes, the rest of each answer, its verdict, [DONE]."""
        name, created, n = self.settings.served_model_name, int(time.time()), len(job.items)

        def chunk(choice: int, text: str | None = None, result: Result | None = None, role: bool = False) -> str:
            finish = _finish(result) if result is not None else None
            verdict = _verdict(result) if result is not None else None
            if chat:
                delta = DeltaMessage(role="assistant" if role else None, content=text)
                c: Any = ChatCompletionChunk(
                    id=rid,
                    created=created,
                    model=name,
                    choices=[ChatChunkChoice(index=choice, delta=delta, finish_reason=finish, inferenceguard=verdict)],
                )
            else:
                c = CompletionChunk(
                    id=rid,
                    created=created,
                    model=name,
                    choices=[
                        CompletionChoice(index=choice, text=text or "", finish_reason=finish, inferenceguard=verdict)
                    ],
                )
            data = c.model_dump(mode="json", exclude_none=True)  # chunks omit empty fields, as OpenAI's do
            if verdict is not None:  # ... but the verdict keeps its nulls (a NaN score is null)
                data["choices"][0]["inferenceguard"] = verdict.model_dump(mode="json")
            return _sse(data)

        texts = [_StreamText() for _ in range(n)]
        results: dict[int, Result] = {}
        try:
            if chat:
                for c in range(n):
                    yield chunk(c, "", role=True)
            while len(results) < n:
                try:
                    kind, c, payload = await self._next(job, None)
                    if kind == "error":
                        raise payload
                except Exception as e:  # the stream has started: the error goes in-band, then [DONE]
                    err = _as_api_error(e)
                    yield _sse(_error_body(err))
                    break
                if kind == "commit":
                    piece = texts[c].commit(payload)
                    if piece:
                        yield chunk(c, piece)
                elif kind == "result":
                    results[c] = payload
                    piece = texts[c].finish(payload.response)
                    if piece:
                        yield chunk(c, piece)
                    yield chunk(c, None if chat else "", result=payload)
            else:
                job.done = True
                if include_usage:
                    usage = _usage([results[c] for c in range(n)], job.params.n)
                    cls: Any = ChatCompletionChunk if chat else CompletionChunk
                    last = cls(id=rid, created=created, model=name, choices=[], usage=usage)
                    yield _sse(last.model_dump(mode="json"))
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # the client left early (or an error): its search result will be dropped

    # -- the worker --
    async def _work(self) -> None:
        """Take requests, batch those with equal settings and seed, search each group in the worker thread."""
        assert self.queue is not None and self.loading is not None
        try:
            await self.loading
        except Exception:
            return  # nothing will be queued: requests are answered 503
        while True:
            jobs = await self._take()
            groups: dict[tuple, list[_Item]] = {}
            for job in jobs:
                for item in job.items:
                    groups.setdefault((job.params.key, item.seed), []).append(item)
            for items in groups.values():
                for i in range(0, len(items), self.settings.max_batch):
                    chunk = items[i : i + self.settings.max_batch]
                    try:
                        await self._run(chunk)
                    except Exception as e:  # never let the worker die: fail this chunk's requests instead
                        logger.exception("search worker error")
                        for job in {id(it.job): it.job for it in chunk}.values():
                            job.events.put_nowait(("error", -1, e))

    async def _take(self) -> list[_Job]:
        """The next request, and whatever else arrives within the batch window (up to max_batch answers)."""
        assert self.queue is not None and self.loop is not None
        jobs = [await self.queue.get()]
        end = self.loop.time() + self.settings.batch_window
        while sum(len(j.items) for j in jobs) < self.settings.max_batch:
            left = end - self.loop.time()
            try:
                jobs.append(self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left))
            except (asyncio.QueueEmpty, TimeoutError):
                break
        return jobs

    async def _run(self, items: list[_Item]) -> None:
        """One search call for items sharing settings and seed; results of cancelled requests are dropped."""
        assert self.loop is not None
        live = [it for it in items if not it.job.cancelled]
        self.metrics.dropped.inc(len(items) - len(live))  # their clients left while they were queued
        items = live
        if not items:
            return
        jobs = list({id(it.job): it.job for it in items}.values())
        self.metrics.batch.observe(len(items))
        try:
            results = await self.loop.run_in_executor(self.executor, self._search, items)
        except Exception as e:
            if len(jobs) > 1:  # one request's failure must not fail the others: search each alone
                for job in jobs:
                    await self._run([it for it in items if it.job is job])
                return
            jobs[0].events.put_nowait(("error", -1, e))  # its handler maps it (400, or a logged generic 500)
            return
        for it, r in zip(items, results):
            self.metrics.observe(r, dropped=it.job.cancelled)
            if not it.job.cancelled:
                it.job.events.put_nowait(("result", it.choice, r))

    def _search(self, items: list[_Item]) -> list[Result]:
        """Worker thread: one batched search; on_commit forwards committed text to each request's stream."""
        assert self.guard is not None
        params = items[0].job.params

        def on_commit(i: int, text: str) -> None:
            items[i].job.commit(items[i].choice, text)

        streaming = any(it.job.stream for it in items)
        return self.guard.generate(
            [it.prompt for it in items],
            params.method,
            seed=items[0].seed,
            batch_size=len(items),
            on_commit=on_commit if streaming else None,
            **params.settings,
        )


class _StreamText:
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


# -- responses and errors ---------------------------------------------------------------------------------
def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _verdict(r: Result) -> Verdict:
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


def _summary(results: list[Result], method: str, seconds: float) -> GuardSummary:
    return GuardSummary(
        safe=all(r.safe for r in results),
        refused=any(r.refused for r in results),
        exhausted=any(r.exhausted for r in results),
        method=method,
        budget=_finite(results[0].budget),
        seconds=round(seconds, 4),
    )


def _usage(results: list[Result], n: int) -> Usage:
    prompt = sum(int(r.extra.get("prompt_tokens", 0)) for r in results[::n])
    completion = sum(r.new_tokens for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _finish(r: Result) -> str:
    return "content_filter" if r.refused else FINISH_REASONS.get(r.finish_reason, "stop")


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error_body(e: APIError) -> dict:
    return ErrorResponse(error=ErrorInfo(message=e.message, type=e.type, param=e.param, code=e.code)).model_dump()


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(_error_body(e), status_code=e.status)


def _as_api_error(e: BaseException) -> APIError:
    """Every exception as an APIError: bad settings are 400 naming the request field; bugs a generic 500."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ConfigError):
        param = ENGINE_PARAMS.get(e.arg, e.arg)
        return APIError(400, f"'{param}' {e.expected}, got {e.value!r}", param=param, code="invalid_value")
    if isinstance(e, InferenceGuardError):
        logger.error("guard error: %s", e)
        return APIError(503, str(e), "server_error", code="model_unavailable")
    logger.error("internal error", exc_info=e)
    return APIError(500, "internal server error (logged on the server)", "server_error", code="internal_error")


async def _api_error_handler(request: Request, e: Exception) -> JSONResponse:
    return _error_response(_as_api_error(e))


async def _validation_handler(request: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as OpenAI's 400, ``param`` naming the failing field (``messages[0].role``)."""
    err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [p for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return _error_response(APIError(400, "The request body is not valid JSON", code="invalid_json"))
    if not loc and err.get("type") == "missing":
        return _error_response(APIError(400, "The request body is missing: send a JSON object", code="invalid_json"))
    param = _param(loc)
    msg = f"'{param}': {err.get('msg')}" if param else str(err.get("msg"))
    return _error_response(APIError(400, msg, param=param, code="invalid_value"))


def _param(loc: list[Any]) -> str | None:
    """('messages', 0, 'content', 'list[TextPart]', 1, 'type') -> 'messages[0].content[1].type'."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and p.isidentifier() and p not in ("str", "int", "float", "bool", "list", "dict"):
            out += f".{p}" if out else p
    return out or None


async def _http_handler(request: Request, e: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    return _error_response(APIError(e.status_code, str(e.detail), code=codes.get(e.status_code)))


# -- the gate: API key, body size, metrics, last-resort 500 ----------------------------------------------
class _Gate:
    """Pure ASGI middleware around every request: /v1 needs the API key when one is set; bodies over
    ``max_body_bytes`` get 413; every request is counted; an unhandled exception becomes a generic 500 (the
    traceback goes to the log, never to the client)."""

    def __init__(self, app: Any, server: _Server):
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status, t0 = [0], time.perf_counter()
        limit, seen = self.server.settings.max_body_bytes, [0]

        async def send_(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def receive_() -> dict:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:  # a chunked body without Content-Length
                raise HTTPException(413, f"the request body must be <= {limit} bytes")
            return message

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await _send_error(send_, refusal)
            else:
                await self.app(scope, receive_, send_)
        except Exception as e:
            err = e if isinstance(e, APIError) else None
            if err is None:
                logger.exception("unhandled error on %s %s", scope.get("method"), path)
                err = APIError(
                    500, "internal server error (logged on the server)", "server_error", code="internal_error"
                )
            if not status[0]:
                await _send_error(send_, err)
        finally:
            self.server.metrics.requests.labels(endpoint, str(status[0] or 499)).inc()
            self.server.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    def _refusal(self, scope: dict, path: str) -> APIError | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.server.settings.max_body_bytes:
            return APIError(
                413,
                f"the request body must be <= {self.server.settings.max_body_bytes} bytes",
                code="request_too_large",
            )
        key = self.server.settings.api_key
        if key is not None and path.startswith("/v1/"):
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), key.get_secret_value().encode()
            ):
                return APIError(
                    401,
                    "Incorrect or missing API key: send 'Authorization: Bearer KEY'",
                    "authentication_error",
                    code="invalid_api_key",
                )
        return None


async def _send_error(send: Any, e: APIError) -> None:
    body = json.dumps(_error_body(e)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if e.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- metrics ----------------------------------------------------------------------------------------------
class _Metrics:
    """Prometheus metrics in a registry of this app's own (two apps in one process never share counters)."""

    def __init__(self, server: _Server):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "inferenceguard_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "inferenceguard_request_seconds",
            "Request latency (streams: until the last byte).",
            ["endpoint"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf")),
        )
        self.tokens = Counter("inferenceguard_generated_tokens", "New tokens in searched answers.", registry=r)
        self.answers = Counter(
            "inferenceguard_answers",
            "Searched answers by safety outcome (safe, unsafe, refused).",
            ["outcome"],
            registry=r,
        )
        self.exhausted = Counter(
            "inferenceguard_exhausted_searches", "Searches where some step found no admissible candidate.", registry=r
        )
        self.dropped = Counter(
            "inferenceguard_dropped_answers",
            "Answers never delivered because the request had left (disconnect, timeout): skipped or discarded.",
            registry=r,
        )
        self.batch = Histogram(
            "inferenceguard_batch_answers",
            "Answers searched together in one search call.",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, float("inf")),
        )
        self.moderated = Counter("inferenceguard_moderated_texts", "Texts scored by /v1/moderations.", registry=r)
        self.queue = Gauge("inferenceguard_queue_depth", "Requests waiting for the search worker.", registry=r)
        self.queue.set_function(server.queue_depth)
        for outcome in ("safe", "unsafe", "refused"):
            self.answers.labels(outcome)

    def observe(self, r: Result, dropped: bool) -> None:
        self.tokens.inc(r.new_tokens)
        self.answers.labels("refused" if r.refused else "safe" if r.safe else "unsafe").inc()
        if r.exhausted:
            self.exhausted.inc()
        if dropped:
            self.dropped.inc()
