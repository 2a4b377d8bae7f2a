"""The OpenAI-compatible server: ``create_app(settings, guard)`` builds a FastAPI app that guards every answer.

How a request travels:
1. Checked at the boundary (the ``Gate`` middleware: API key on ``/v1``, body size; then pydantic, the
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

This module holds the routes, the queue and the worker; the other jobs have their own modules, which get the
settings and the metrics rather than the server: ``errors`` (the ``Gate``, errors in OpenAI's shape, the
exception handlers), ``metrics`` (the Prometheus registry) and ``responses`` (results as response bodies and
stream chunks). ``protocol`` is the wire format, ``settings`` the one settings schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from inferenceguard.engine.types import Result, SearchConfig
from inferenceguard.errors import ConfigError, InferenceGuardError
from inferenceguard.guard import Guard, load_stack
from inferenceguard.models import LM
from inferenceguard.models.loading import Prompt
from inferenceguard.scorers.base import resolve_budget
from inferenceguard.server.errors import Gate, as_api_error, error_body, install_handlers
from inferenceguard.server.metrics import Metrics
from inferenceguard.server.protocol import (
    APIError,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    ModerationRequest,
    ModerationResponse,
    SearchParams,
    error_responses,
)
from inferenceguard.server.responses import Chunks, StreamText, completion_response, moderation_response, sse
from inferenceguard.server.settings import ServerSettings
from inferenceguard.strategies import bind, preset

logger = logging.getLogger("inferenceguard.server")


def create_app(settings: ServerSettings | None = None, guard: Guard | None = None) -> FastAPI:
    """The app: routes, error handlers and the search worker. Without ``guard``, the stack named by the
    settings is loaded in the background at startup (``/health`` answers 503 until it is ready)."""
    server = _Server(settings or ServerSettings(), guard)
    app = FastAPI(title="inferenceguard", version="0.1.0", lifespan=server.lifespan)
    app.state.server = server
    app.add_middleware(Gate, settings=server.settings, metrics=server.metrics)

    chat_responses = _answer_responses(ChatCompletionResponse, ChatCompletionChunk)

    @app.post("/v1/chat/completions", response_model=None, responses=chat_responses)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await server.answer(request, body)

    @app.post("/v1/completions", response_model=None, responses=_answer_responses(CompletionResponse, CompletionChunk))
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await server.answer(request, body)

    @app.post(
        "/v1/moderations",
        response_model=ModerationResponse,
        responses=error_responses(400, 401, 404, 413, 500, 503),
    )
    async def moderations(body: ModerationRequest) -> ModerationResponse:
        return await server.moderate(body)

    @app.get("/v1/models", response_model=ModelList, responses=error_responses(401, 500))
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=server.settings.served_model_name, created=server.created)])

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Not ready"}})
    async def health() -> Response:
        status = server.status()
        body = Health(status=status, model=server.settings.served_model_name, queue=server.queue_depth())
        return JSONResponse(body.model_dump(), status_code=200 if status == "ok" else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses={200: {"description": "Prometheus text"}})
    async def metrics() -> Response:
        body, media_type = server.metrics.exposition()
        return Response(body, media_type=media_type)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    install_handlers(app)
    return app


def _answer_responses(model: type, chunk: type) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses of a completions route: JSON, or (``stream``) server-sent events whose ``data`` is
    a chunk, an in-band error or ``[DONE]``, or an error."""
    payload = {"anyOf": [{"$ref": f"#/components/schemas/{chunk.__name__}"}, _ref(ErrorResponse)]}
    data = {"anyOf": [{"const": "[DONE]"}, {"contentMediaType": "application/json", "contentSchema": payload}]}
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string", **data}}}
    stream = {"text/event-stream": {"schema": event}}
    return {200: {"model": model, "content": stream}, **error_responses(400, 401, 404, 413, 429, 500, 503, 504)}


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, plus the stream chunks (which no route returns as a model), without its 422s
    (validation errors are answered 400 in OpenAI's shape)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for operations in schema["paths"].values():
            for op in operations.values():
                op["responses"].pop("422", None)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for chunk in (ChatCompletionChunk, CompletionChunk):
            js = chunk.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
            components.update(js.pop("$defs", {}))
            components[chunk.__name__] = js
    return app.openapi_schema  # type: ignore[return-value]


def load_guard(settings: ServerSettings) -> Guard:
    """The stack the settings name (``model``, ``reward_model``, ``cost_model``, ``critic``, device)."""
    s = settings
    judge = s.judge if s.moderation_judge else None
    stack = load_stack(
        s.model, s.reward_model, s.cost_model, s.critic, judge, s.device, s.dtype, load_judge=s.moderation_judge
    )
    return Guard(stack=stack)


# -- one request's answers in flight ----------------------------------------------------------------------
def _counting_lm(lm: LM) -> LM:
    """The same model as ``lm`` with its own copy of the tokenizer, so the event loop can count prompt tokens
    while the worker thread uses the original (fast tokenizers are not safe to share across threads)."""
    return dataclasses.replace(lm, tokenizer=copy.deepcopy(lm.tokenizer))


@dataclasses.dataclass
class _Item:
    """One answer to search: choice index in its response, prompt, seed."""

    job: _Job
    choice: int
    prompt: Prompt  # a string, or a chat's messages (the LM reads them whole; the scorers its last user turn)
    seed: int


class _Job:
    """One request on its way: its items, and the events (commits, results, an error) its handler reads."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        params: SearchParams,
        cfg: SearchConfig,
        prompts: list[Prompt],
        stream: bool,
        timeout: float,
    ):
        self.loop, self.params, self.cfg, self.stream = loop, params, cfg, stream  # cfg: the method, resolved once
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
        self.guard: Guard | None = None  # set once loaded
        self.counter: LM | None = None  # a tokenizer copy for counting prompt tokens on the event loop
        self.metrics = Metrics(self.queue_depth, lambda: self.loop)
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
        self.counter = _counting_lm(guard.stack.lm)
        self.guard = guard
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
        cfg = self._check_method(guard, params)
        prompts = self._prompts(body, params)
        assert self.loop is not None and self.queue is not None
        job = _Job(self.loop, params, cfg, prompts, body.stream, self.settings.request_timeout)
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
        seconds = time.perf_counter() - t0
        return JSONResponse(completion_response(chat, rid, self.settings.served_model_name, params, results, seconds))

    async def moderate(self, body: ModerationRequest) -> ModerationResponse:
        """Score the texts as answers (to ``prompt``) with the cost model, the judge and the reward model, in
        the worker thread (so scoring never runs beside a search on the same models)."""
        self._check_model(body.model)
        prompts, texts = body.pairs(self.settings.limit_moderation_inputs, self.settings.limit_prompt_chars)
        guard = await self._ready()
        assert self.loop is not None
        scores = await self.loop.run_in_executor(self.executor, guard.score, prompts, texts)
        out = moderation_response(scores, guard.stack, self.settings.served_model_name)
        self.metrics.moderated.inc(len(out.results))
        return out

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.settings.served_model_name:
            raise APIError(
                404,
                f"The model '{model}' does not exist; this server serves '{self.settings.served_model_name}'",
                param="model",
                code="model_not_found",
            )

    def _check_method(self, guard: Guard, params: SearchParams) -> SearchConfig:
        """The request's method resolved once (strategies.preset, bound to the stack): the engine's own
        validation (ConfigError -> 400), the critic, and the budget limit."""
        stack = guard.stack
        try:
            cfg = bind(preset(params.method, **params.settings), stack)
        except ConfigError as e:
            if e.arg != "critic":
                raise
            message = f"'method' {params.method!r} needs a critic fitting the base model, and this server has none"
            raise APIError(400, message + " (start it with --critic FILE)", param="method", code="invalid_value") from e
        budget = params.settings.get("budget")
        if budget is not None:
            try:  # --limit-budget, else the server's own budget (--budget, else the cost model's threshold)
                limit = self.settings.limit_budget or resolve_budget(self.settings.budget, stack.cost)
            except ConfigError:  # a cost model without a threshold and no budget set: nothing to tighten
                limit = None
            if limit is not None and budget > limit:
                raise APIError(
                    400,
                    f"'budget' must be <= {limit:g} on this server, got {budget}",
                    param="budget",
                    code="invalid_value",
                )
        return cfg

    def _prompts(self, body: ChatCompletionRequest | CompletionRequest, params: SearchParams) -> list[Prompt]:
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
            named: list[tuple[str, Prompt]] = [("messages", messages)]  # type: ignore[list-item]
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
            try:
                counter.check_room(n_tokens, max_new, "max_tokens", f"'{param}'")
            except ConfigError as e:  # OpenAI's code for it, rather than the generic invalid_value
                raise APIError(400, str(e), param=e.arg, code="context_length_exceeded") from e
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

    async def _stream(self, job: _Job, chat: bool, rid: str, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: committed text as it comes, the rest of each answer, its verdict, [DONE]."""
        chunks, n = Chunks(chat, rid, self.settings.served_model_name), len(job.items)
        texts = [StreamText() for _ in range(n)]
        results: dict[int, Result] = {}
        try:
            if chat:
                for c in range(n):
                    yield chunks.choice(c, "", role=True)
            while len(results) < n:
                try:
                    kind, c, payload = await self._next(job, None)
                    if kind == "error":
                        raise payload
                except Exception as e:  # the stream has started: the error goes in-band, then [DONE]
                    yield sse(error_body(as_api_error(e)))
                    break
                if kind == "commit":
                    piece = texts[c].commit(payload)
                    if piece:
                        yield chunks.choice(c, piece)
                elif kind == "result":
                    results[c] = payload
                    piece = texts[c].finish(payload.response)
                    if piece:
                        yield chunks.choice(c, piece)
                    yield chunks.choice(c, None if chat else "", result=payload)
            else:
                job.done = True
                if include_usage:
                    yield chunks.usage([results[c] for c in range(n)], job.params.n)
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
                    groups.setdefault((job.cfg, item.seed), []).append(item)  # equal configurations batch
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

        def on_commit(i: int, text: str) -> None:
            items[i].job.commit(items[i].choice, text)

        streaming = any(it.job.stream for it in items)
        return self.guard.generate(
            [it.prompt for it in items],
            items[0].job.cfg,
            seed=items[0].seed,
            batch_size=len(items),
            on_commit=on_commit if streaming else None,
        )
