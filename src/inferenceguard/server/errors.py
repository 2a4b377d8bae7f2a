"""Errors and admission: every failure answered in OpenAI's error shape, and the ``Gate`` that admits requests.

- ``as_api_error`` maps any exception to an ``APIError`` (a ``ConfigError`` is a 400 naming the request field;
  a guard error a 503; a bug a generic 500 whose traceback goes to the log, never to the client).
- ``install_handlers`` answers FastAPI's own errors (validation 422 -> 400, 404, 405, 413) in that shape.
- ``Gate`` is the ASGI middleware in front of every route: API key on ``/v1``, body size, request metrics and
  a last-resort 500. It reads only the settings and the metrics it is given.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferenceguard.errors import ConfigError, InferenceGuardError
from inferenceguard.server.metrics import Metrics
from inferenceguard.server.protocol import APIError, ErrorInfo, ErrorResponse
from inferenceguard.server.settings import ServerSettings
from inferenceguard.strategies import USER_NAMES

logger = logging.getLogger("inferenceguard.server")

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/moderations", "/v1/models", "/health", "/metrics")
ENGINE_PARAMS = {**USER_NAMES, "max_new_tokens": "max_tokens"}  # engine argument -> request field


def error_body(e: APIError) -> dict:
    """The JSON body of an error: ``{"error": {message, type, param, code}}``."""
    return ErrorResponse(error=ErrorInfo(message=e.message, type=e.type, param=e.param, code=e.code)).model_dump()


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e), status_code=e.status)


def _internal_error() -> APIError:
    return APIError(500, "internal server error (logged on the server)", "server_error", code="internal_error")


def as_api_error(e: BaseException) -> APIError:
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
    return _internal_error()


def install_handlers(app: FastAPI) -> None:
    """Answer the app's exceptions, and FastAPI's own errors, in OpenAI's error shape."""
    app.add_exception_handler(APIError, _api_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(InferenceGuardError, _api_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_handler)  # type: ignore[arg-type]


async def _api_error_handler(request: Request, e: Exception) -> JSONResponse:
    return error_response(as_api_error(e))


async def _validation_handler(request: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as OpenAI's 400, ``param`` naming the failing field (``messages[0].role``)."""
    err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [p for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return error_response(APIError(400, "The request body is not valid JSON", code="invalid_json"))
    if not loc and err.get("type") == "missing":
        return error_response(APIError(400, "The request body is missing: send a JSON object", code="invalid_json"))
    param = _param(loc)
    msg = f"'{param}': {err.get('msg')}" if param else str(err.get("msg"))
    return error_response(APIError(400, msg, param=param, code="invalid_value"))


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
    response = error_response(APIError(e.status_code, str(e.detail), code=codes.get(e.status_code)))
    response.headers.update(e.headers or {})  # e.g. 405's Allow
    return response


# -- the gate: API key, body size, metrics, last-resort 500 ----------------------------------------------
class Gate:
    """Pure ASGI middleware around every request: /v1 needs the API key when one is set; bodies over
    ``max_body_bytes`` get 413; every request is counted; an unhandled exception becomes a generic 500 (the
    traceback goes to the log, never to the client)."""

    def __init__(self, app: Any, settings: ServerSettings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status, t0 = [0], time.perf_counter()
        limit, seen = self.settings.max_body_bytes, [0]
        complete, left = [False], [False]  # the response was sent whole; the client left before that

        async def send_(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete[0] = True
            await send(message)

        async def receive_() -> dict:
            message = await receive()
            if message["type"] == "http.disconnect" and not complete[0]:
                left[0] = True  # mid-upload, while waiting, or mid-stream: counted 499, whatever was sent
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
                err = _internal_error()
            if not status[0]:
                await _send_error(send_, err)
        finally:
            self.metrics.requests.labels(endpoint, str(499 if left[0] or not status[0] else status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    def _refusal(self, scope: dict, path: str) -> APIError | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            return APIError(
                413,
                f"the request body must be <= {self.settings.max_body_bytes} bytes",
                code="request_too_large",
            )
        key = self.settings.api_key
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
    body = json.dumps(error_body(e)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if e.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
