"""Hostile and extreme requests against the real app and the tiny random stack (in-process): each gets a
documented 4xx in OpenAI's error shape or a normal answer, never a 5xx, and the server keeps answering.

Also the regressions of what the fuzz run (tests/server/test_fuzz.py) found: wrong types coerced (``"5"`` as
an integer, ``true`` as ``n``), NaN/infinity accepted, undocumented statuses in the OpenAPI schema, a 405
without its ``Allow`` header."""

from __future__ import annotations

import contextlib
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

MSG = [{"role": "user", "content": "Tell me about the sea."}]
LIMITS = {
    "max_tokens": 4,
    "limit_max_tokens": 16,
    "limit_n": 2,
    "limit_candidates": 4,
    "limit_beams": 2,
    "limit_block": 4,
    "limit_prompts": 3,
    "candidates": 2,
    "block": 4,
}


@pytest.fixture(scope="module")
def tc():
    from fastapi.testclient import TestClient

    from inferenceguard.server import ServerSettings, create_app
    from tests.server.tiny_server import tiny_guard

    with TestClient(create_app(ServerSettings(**LIMITS), tiny_guard())) as client:
        yield client


def _chat(tc, **body):
    return tc.post("/v1/chat/completions", json={"messages": MSG, **body})


def _error(r, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def _tokens(tc, prompt) -> int:
    return len(tc.app.state.server.counter.encode_prompt(prompt))


# -- long prompts, big bodies ----------------------------------------------------------------------------
def test_prompt_at_and_past_the_context_limit(tc):
    """The tiny LM's context is 512 tokens (byte tokenizer): a prompt that leaves exactly max_tokens free is
    answered, one byte more is 400 context_length_exceeded naming max_tokens."""
    context, max_new = tc.app.state.server.counter.max_context, LIMITS["max_tokens"]
    overhead = _tokens(tc, "a") - 1
    fits = "a" * (context - max_new - overhead)
    assert _tokens(tc, fits) + max_new == context
    r = tc.post("/v1/completions", json={"prompt": fits})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == context - max_new
    _error(tc.post("/v1/completions", json={"prompt": fits + "a"}), 400, "max_tokens", "context_length_exceeded")
    # past the model's whole context (refused by the LM's own check), and past the character limit
    _error(tc.post("/v1/completions", json={"prompt": "a" * 600}), 400, "prompt", "invalid_value")
    _error(tc.post("/v1/completions", json={"prompt": "a" * 32_001}), 400, "prompt", "context_length_exceeded")


def test_one_megabyte_bodies(tc):
    """Just under the 1,000,000-byte limit: parsed, then refused for its length (400); over it: 413, with and
    without a Content-Length (a chunked upload is cut off as it arrives)."""
    under = json.dumps({"prompt": "x" * (1_000_000 - 20)}).encode()
    assert len(under) <= 1_000_000
    headers = {"content-type": "application/json"}
    _error(tc.post("/v1/completions", content=under, headers=headers), 400, "prompt", "context_length_exceeded")
    over = json.dumps({"prompt": "x" * 1_000_001}).encode()
    _error(tc.post("/v1/completions", content=over, headers=headers), 413, code="request_too_large")

    def chunks():
        for i in range(0, len(over), 65_536):
            yield over[i : i + 65_536]

    _error(tc.post("/v1/completions", content=chunks(), headers=headers), 413)
    assert _chat(tc).status_code == 200  # still serving


def test_thousands_of_messages(tc):
    """5,000 short turns: under the character limit, far over the model's context: one 400 naming them."""
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(5_000)]
    _error(tc.post("/v1/chat/completions", json={"messages": many}), 400, "messages")


# -- malformed bodies ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeply nested JSON (deeper than Python's recursion limit)
        b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"messages": [{"role": "user", "content": "\xff\xfe caf\xc3"}]}',  # invalid UTF-8
        b'{"messages": [{"role": "user", "content": "hi"}], "n": NaN}',
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}',
        b'{"messages": "',
        b"",
        b"null",
        b"42",
        b'"a string"',
    ],
    ids=["nested", "nested-field", "bad-utf8", "nan", "infinity", "truncated", "empty", "null", "int", "str"],
)
def test_malformed_bodies_are_400(tc, body):
    err = _error(tc.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}), 400)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "text",
    ["\ud800 lone high surrogate", "lone low \udfff", "\x00\x01\x1b[31m\x7f control characters", "\u202e\ufeff\u200b"],
    ids=["high-surrogate", "low-surrogate", "controls", "bidi-bom-zwsp"],
)
def test_surrogates_and_control_characters(tc, text):
    """JSON escapes can carry lone surrogates (not encodable as UTF-8) and control characters: answered
    (controls) or refused 400 (surrogates; regression: the tokenizer raised, a 500), on every endpoint."""
    raw = json.dumps(text)  # ensure_ascii: the surrogate travels as a \\ud800 escape
    bodies = {
        "/v1/chat/completions": f'{{"messages": [{{"role": "user", "content": {raw}}}]}}',
        "/v1/completions": f'{{"prompt": {raw}}}',
        "/v1/moderations": f'{{"input": {raw}}}',
    }
    surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    for path, body in bodies.items():
        r = tc.post(path, content=body.encode(), headers={"content-type": "application/json"})
        if surrogate:
            _error(r, 400, code="invalid_value")
        else:
            assert r.status_code == 200, (path, r.text)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": ""}], "messages"),
        ([{"role": "user", "content": " \n\t "}], "messages"),
        ([{"role": "user", "content": []}], "messages"),
        ([{"role": "user", "content": None}], "messages"),
        ([{"role": "system", "content": "Be brief."}], "messages"),
        ([], "messages"),
    ],
)
def test_empty_and_whitespace_messages(tc, messages, param):
    _error(tc.post("/v1/chat/completions", json={"messages": messages}), 400, param)


@pytest.mark.parametrize("prompt", ["", "   ", [], [""], ["ok", " \t"]])
def test_empty_and_whitespace_prompts(tc, prompt):
    err = _error(tc.post("/v1/completions", json={"prompt": prompt}), 400)
    assert err["param"].startswith("prompt")


# -- values at and past their limits -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("n", "limit_n"),
        ("max_tokens", "limit_max_tokens"),
        ("candidates", "limit_candidates"),
        ("beams", "limit_beams"),
    ],
)
def test_values_at_the_limit_are_answered_and_one_past_is_400(tc, field, limit):
    at = LIMITS[limit]
    extra = {"candidates": 4} if field == "beams" else {}
    r = _chat(tc, **{field: at, **extra})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == (at if field == "n" else 1)
    _error(_chat(tc, **{field: at + 1, **extra}), 400, field, "invalid_value")


def test_prompt_list_at_and_past_its_limit(tc):
    assert len(tc.post("/v1/completions", json={"prompt": ["a b"] * 3}).json()["choices"]) == 3
    _error(tc.post("/v1/completions", json={"prompt": ["a b"] * 4}), 400, "prompt")


# -- types and ranges ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": "5"}, "max_tokens"),  # regression: strings were coerced to numbers
        ({"max_tokens": 5.0}, "max_tokens"),
        ({"n": True}, "n"),  # regression: booleans were read as integers
        ({"stream": "true"}, "stream"),  # regression: strings and 0/1 were read as booleans
        ({"stream": 1}, "stream"),
        ({"temperature": "0.5"}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
        ({"messages": {"role": "user", "content": "x"}}, "messages"),
        ({"model": 7}, "model"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ],
)
def test_wrong_types_are_400_naming_the_field(tc, extra, param):
    err = _error(_chat(tc, **extra), 400, code="invalid_value")
    if param is not None:
        assert err["param"] == param


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("chat", {"top_p": 7}, "top_p"),
        ("chat", {"top_p": -0.1}, "top_p"),
        ("chat", {"temperature": 2.01}, "temperature"),
        ("chat", {"frequency_penalty": 2.5}, "frequency_penalty"),
        ("chat", {"presence_penalty": -3}, "presence_penalty"),
        ("chat", {"logit_bias": {"50256": -101}}, "logit_bias"),
        ("chat", {"top_logprobs": 21}, "top_logprobs"),
        ("chat", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("chat", {"stop": []}, "stop"),
        ("chat", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ("chat", {"metadata": {"k": "v" * 513}}, "metadata"),
        ("chat", {"safety_identifier": "x" * 65}, "safety_identifier"),
        ("chat", {"reasoning_effort": "extreme"}, "reasoning_effort"),
        ("chat", {"service_tier": "gold"}, "service_tier"),
        ("chat", {"tool_choice": "sometimes"}, "tool_choice"),
        ("chat", {"response_format": {"type": "yaml"}}, "response_format.type"),
        ("chat", {"n": 0}, "n"),
        ("chat", {"max_completion_tokens": 0}, "max_completion_tokens"),
        ("completions", {"logprobs": 6}, "logprobs"),
        ("completions", {"best_of": 21}, "best_of"),
        ("completions", {"frequency_penalty": -2.01}, "frequency_penalty"),
        ("completions", {"top_p": 7}, "top_p"),
    ],
)
def test_values_outside_openais_ranges_are_400(tc, path, extra, param):
    r = _chat(tc, **extra) if path == "chat" else tc.post("/v1/completions", json={"prompt": "Hello", **extra})
    err = _error(r, 400, code="invalid_value")
    assert err["param"].startswith(param), err


def test_openai_fields_in_range_are_accepted_and_ignored(tc):
    ignored = {
        "frequency_penalty": -2,
        "presence_penalty": 2,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 20,
        "stop": ["\n", "END"],
        "metadata": {"k": "v"},
        "store": False,
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "response_format": {"type": "text"},
        "reasoning_effort": "low",
        "verbosity": "low",
        "safety_identifier": "u1",
        "prompt_cache_key": "k",
        "modalities": ["text"],
        "stream_options": None,
        "user": "someone",
        "some_future_field": {"anything": [1, 2]},  # unknown: ignored
    }
    r = _chat(tc, **ignored)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["logprobs"] is None
    extra = {"best_of": 2, "echo": False, "logprobs": 5, "suffix": "!", "stop": "\n", "logit_bias": {}}
    assert tc.post("/v1/completions", json={"prompt": "Hello", **extra}).status_code == 200


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
        ("chat", {"tool_choice": "required", "tools": [{"type": "function"}]}, "tool_choice"),
        ("chat", {"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ("chat", {"function_call": {"name": "f"}}, "function_call"),
        ("chat", {"modalities": ["text", "audio"]}, "modalities"),
        ("chat", {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ("completions", {"echo": True}, "echo"),
    ],
)
def test_values_the_server_cannot_honour_are_400_unsupported(tc, path, extra, param):
    """Dropping these silently would break a client that relies on them (JSON, a tool call, audio, echo)."""
    r = _chat(tc, **extra) if path == "chat" else tc.post("/v1/completions", json={"prompt": "Hi", **extra})
    _error(r, 400, param, "unsupported_value")


# -- the schema and the HTTP layer (regressions of the fuzz run) ---------------------------------------
def test_openapi_documents_every_status_the_server_answers(tc):
    paths = tc.get("/openapi.json").json()["paths"]
    chat = paths["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat and {"200", "400", "401", "404", "413", "429", "500", "503", "504"} <= set(chat)
    assert {"application/json", "text/event-stream"} <= set(chat["200"]["content"])
    assert set(paths["/health"]["get"]["responses"]) == {"200", "503"}
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


def test_wrong_method_is_405_with_allow(tc):
    r = tc.delete("/v1/models")
    _error(r, 405, code="method_not_allowed")
    assert r.headers["allow"] == "GET"


def _count(tc, status: str) -> float:
    key = f'inferenceguard_requests_total{{endpoint="/v1/chat/completions",status="{status}"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in tc.get("/metrics").text.splitlines() if line.startswith(key))


def test_a_client_leaving_mid_upload_is_counted_499(tc):
    """Regression (the soak's count check): half a body, then the client is gone: that was counted 400 (the
    partial body read as malformed JSON); it is 499, the client left."""
    messages = iter([{"type": "http.request", "body": b'{"messages": [{"role": "us', "more_body": True}])
    sent = []

    async def receive() -> dict:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    path = "/v1/chat/completions"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    before = {s: _count(tc, s) for s in ("400", "499")}
    with contextlib.suppress(Exception):  # whatever the app raises at a vanished client
        tc.portal.call(tc.app, scope, receive, send)
    assert _count(tc, "499") == before["499"] + 1
    assert _count(tc, "400") == before["400"]


def test_still_healthy_after_all_that(tc):
    assert tc.get("/health").json() == {"status": "ok", "model": "inferenceguard", "queue": 0}
    text = tc.get("/metrics").text
    assert 'inferenceguard_requests_total{endpoint="/v1/chat/completions",status="500"}' not in text
