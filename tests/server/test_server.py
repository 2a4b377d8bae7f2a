"""The OpenAI-compatible server, driven like a user would: a real uvicorn subprocess on a loopback port and the
official ``openai`` client (plus raw httpx for malformed input); in-process ``TestClient`` checks with scripted
guards for the paths a random model cannot hit on demand (refusals, split characters, timeouts, crashes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-key"
MSG = [{"role": "user", "content": "Tell me about the sea."}]
SMALL = {"max_tokens": 8, "extra_body": {"candidates": 4, "block": 4}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Proc:
    def __init__(self, *flags: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "tests.server.tiny_server", "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(
            [*cmd, *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def wait(self, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError("the server did not become healthy")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


@pytest.fixture(scope="module")
def servers():
    """Two tiny servers started together: 'main' (API key, small defaults) and 'busy' (a queue of one)."""
    procs = {
        "main": _Proc("--api-key", KEY, "--max-tokens", "8", "--limit-n", "3"),
        "busy": _Proc("--queue-size", "1", "--max-batch", "1", "--batch-window", "0", "--max-tokens", "24"),
    }
    try:
        for p in procs.values():
            p.wait()
        yield {k: p.url for k, p in procs.items()}
    finally:
        logs = {k: p.stop() for k, p in procs.items()}
    for name, out in logs.items():
        assert "Traceback" not in out, f"{name} server logged a traceback:\n{out}"


@pytest.fixture(scope="module")
def url(servers):
    return servers["main"]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)


def _post(url: str, path: str, body: object, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        return httpx.post(url + path, content=body, headers={**headers, "content-type": "application/json"})
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


def _verdict(obj) -> dict:
    v = obj.model_extra["inferenceguard"]
    assert {"safe", "cost", "reward", "budget", "budget_left", "exhausted", "refused", "method"} <= set(v)
    return v


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


# -- the real server, the real client ---------------------------------------------------------------------
def test_chat_completion_carries_the_verdict(client):
    r = client.chat.completions.create(model="inferenceguard", messages=MSG, seed=1, **SMALL)
    [choice] = r.choices
    assert r.object == "chat.completion" and r.model == "inferenceguard"
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length", "content_filter")
    v = _verdict(choice)
    assert v["method"] == "inferenceguard" and v["new_tokens"] <= 8 and v["budget"] == pytest.approx(0.5)
    assert r.usage.completion_tokens == v["new_tokens"] and r.usage.prompt_tokens > 0
    assert r.model_extra["inferenceguard"]["safe"] == v["safe"]


def test_completions_with_prompt_list_and_n(client):
    r = client.completions.create(
        model="inferenceguard",
        prompt=["hello", "write a poem"],
        n=2,
        seed=5,
        max_tokens=6,
        extra_body={"method": "bon", "candidates": 3},
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(_verdict(c)["method"] == "bon" for c in r.choices)
    assert r.choices[0].text != r.choices[1].text  # n answers of one prompt: seeds 5 and 6
    alone = client.completions.create(
        model="inferenceguard",
        prompt="write a poem",
        seed=6,
        max_tokens=6,
        extra_body={"method": "bon", "candidates": 3},
    )
    assert alone.choices[0].text == r.choices[3].text  # the batch never changes an answer


def test_streaming_sends_committed_text_then_the_rest_and_the_verdict(client):
    kw = {
        "model": "inferenceguard",
        "messages": MSG,
        "seed": 3,
        "max_tokens": 12,
        "extra_body": {"method": "beam-safety", "candidates": 4, "beams": 2, "block": 3},
    }
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and _verdict(final[0].choices[0])["method"] == "beam-safety"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    whole = client.chat.completions.create(**kw)
    assert text == whole.choices[0].message.content
    assert final[0].choices[0].finish_reason == whole.choices[0].finish_reason


def test_streamed_completions_with_several_choices(client):
    kw = {
        "model": "inferenceguard",
        "prompt": ["hello", "a poem"],
        "n": 2,
        "seed": 9,
        "max_tokens": 6,
        "extra_body": {"method": "sample", "block": 2},
    }
    texts: dict[int, str] = {}
    finished = set()
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finished.add(c.index)
                assert _verdict(c)["method"] == "sample"
    whole = client.completions.create(**kw)
    assert finished == {0, 1, 2, 3} and [texts[i] for i in range(4)] == [c.text for c in whole.choices]


def test_models_and_health(url, client):
    assert [m.id for m in client.models.list().data] == ["inferenceguard"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # no key needed


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"messages": [', 400, None),  # malformed JSON
        (b"", 400, None),  # no body
        ({"messages": MSG, "model": "gpt-4"}, 404, "model"),
        ({"messages": MSG, "max_tokens": "lots"}, 400, "max_tokens"),
        ({"messages": MSG, "max_tokens": -1}, 400, "max_tokens"),
        ({"messages": MSG, "max_tokens": 10**12}, 400, "max_tokens"),
        ({"messages": []}, 400, "messages"),
        ({"messages": "hi"}, 400, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "   "}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 40_000}]}, 400, "messages"),
        ({"messages": MSG, "n": 9}, 400, "n"),
        ({"messages": MSG, "temperature": 7}, 400, "temperature"),
        ({"messages": MSG, "top_p": 7}, 400, "top_p"),
        ({"messages": MSG, "top_p": -0.1}, 400, "top_p"),
        ({"messages": MSG, "top_k": -2}, 400, "top_k"),
        ({"messages": MSG, "min_p": 1.0}, 400, "min_p"),
        ({"messages": MSG, "repetition_penalty": 0}, 400, "repetition_penalty"),
        ({"messages": MSG, "candidates": 10_000}, 400, "candidates"),
        ({"messages": MSG, "candidates": 4, "beams": 8}, 400, "beams"),
        ({"messages": MSG, "method": "no-such-method"}, 400, "method"),
        ({"messages": MSG, "budget": -1}, 400, "budget"),
        ({"messages": MSG, "budget": 100}, 400, "budget"),  # requests may only tighten the server's budget
        ({"messages": MSG, "on_exhausted": "panic"}, 400, "on_exhausted"),
        ({"messages": MSG, "method": "inferenceguard-critic"}, 400, "method"),  # no critic on this server
        ({"messages": [{"role": "user", "content": "x" * 1_100_000}]}, 413, None),  # body over max_body_bytes
    ],
)
def test_bad_requests_get_openai_errors(url, body, status, param):
    r = _post(url, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]
    assert "Traceback" not in r.text


def test_sampling_fields_are_honoured(client):
    """top_p, top_k, min_p and repetition_penalty reach the engine: top_k = 1 makes the answer greedy, so two
    seeds agree, where plain sampling with those seeds does not."""
    greedy = [
        client.chat.completions.create(
            model="inferenceguard", messages=MSG, seed=s, max_tokens=8, extra_body={"top_k": 1, "method": "sample"}
        )
        for s in (1, 2)
    ]
    assert greedy[0].choices[0].message.content == greedy[1].choices[0].message.content
    ok = client.chat.completions.create(
        model="inferenceguard",
        messages=MSG,
        max_tokens=8,
        top_p=0.9,
        extra_body={"min_p": 0.05, "repetition_penalty": 1.2},
    )
    assert ok.choices[0].message.content is not None


def test_moderations_openai_shape_and_own_fields(client, url):
    texts = ["zzzz xxxx qqqq", "a calm and harmless answer"]
    r = client.moderations.create(model="inferenceguard", input=texts)
    assert r.model == "inferenceguard" and len(r.results) == 2 and r.id.startswith("modr-")
    raw = _post(url, "/v1/moderations", {"input": texts, "prompt": "say something"}).json()
    for res in raw["results"]:
        own = res["inferenceguard"]
        assert res["flagged"] == (own["cost"] > own["cost_threshold"]) == res["categories"]["harmful"]
        assert res["category_scores"]["harmful"] == own["cost"]
        assert own["judge"] is not None and own["judge_flagged"] == (own["judge"] > own["judge_threshold"])
        assert res["category_applied_input_types"] == {"harmful": ["text"]}
    assert raw["results"][0]["flagged"] and not raw["results"][1]["flagged"]  # rare letters are the stub's harm
    one = _post(url, "/v1/moderations", {"input": [{"type": "text", "text": texts[0]}]}).json()
    assert one["results"][0]["category_scores"] == raw["results"][0]["category_scores"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": 5}, 400, "input"),
        ({"input": [{"type": "image_url", "image_url": "x"}]}, 400, "input"),
        ({"input": ["a"] * 65}, 400, "input"),
        ({"input": "x" * 40_000}, 400, "input"),
        ({"input": ["a", "b"], "prompt": ["p"]}, 400, "prompt"),
        ({"input": "a", "model": "omni-moderation-latest"}, 404, "model"),
        (b'{"input": ', 400, None),
    ],
)
def test_bad_moderation_requests_get_openai_errors(url, body, status, param):
    r = _post(url, "/v1/moderations", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and (param is None or err["param"].startswith(param))


def test_bad_completion_prompts(url):
    assert _post(url, "/v1/completions", {"prompt": []}).json()["error"]["param"] == "prompt"
    assert _post(url, "/v1/completions", {"prompt": [1, 2]}).json()["error"]["param"] == "prompt"
    r = _post(url, "/v1/completions", {"prompt": ["ok", ""]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt[1]"


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=MSG)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="inferenceguard", messages=MSG, extra_body={"block": 10_000})
    assert e.value.body["param"] == "block"


def test_api_key_is_required(url):
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="inferenceguard", messages=MSG)
    r = _post(url, "/v1/chat/completions", {"messages": MSG}, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models").status_code == 401


def test_concurrent_requests_succeed_and_share_batches(url, client):
    before = _metric(url, "inferenceguard_batch_answers_count")

    async def run() -> list:
        aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
        prompts = [f"question {i}" for i in range(8)]
        return await asyncio.gather(
            *[
                aclient.chat.completions.create(
                    model="inferenceguard", messages=[{"role": "user", "content": p}], **SMALL
                )
                for p in prompts
            ]
        )

    results = asyncio.run(run())
    assert all(r.choices[0].message.content is not None for r in results)
    assert _metric(url, "inferenceguard_batch_answers_count") - before < 8  # some requests were searched together


def test_metrics_after_requests(url, client):
    client.chat.completions.create(model="inferenceguard", messages=MSG, **SMALL)
    _post(url, "/v1/chat/completions", {"messages": []})
    text = httpx.get(f"{url}/metrics").text
    assert 'inferenceguard_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert 'inferenceguard_requests_total{endpoint="/v1/chat/completions",status="400"}' in text
    assert "inferenceguard_request_seconds_bucket" in text and "inferenceguard_queue_depth" in text
    assert _metric(url, "inferenceguard_generated_tokens_total") > 0
    assert (
        _metric(url, 'inferenceguard_answers_total{outcome="safe"}')
        + _metric(url, 'inferenceguard_answers_total{outcome="unsafe"}')
        > 0
    )
    assert 'inferenceguard_answers_total{outcome="refused"}' in text
    assert "inferenceguard_exhausted_searches_total" in text


def test_full_queue_answers_429_and_a_client_leaving_midstream_is_harmless(servers):
    url = servers["busy"]

    async def run() -> list:
        aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        calls = [aclient.chat.completions.create(model="inferenceguard", messages=MSG, seed=i) for i in range(8)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(run())
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert limited and limited[0].body["code"] == "queue_full"
    assert all(isinstance(r, openai.RateLimitError) or r.choices for r in results)
    # a streaming client that leaves after the first chunk: its answer is dropped, the server stays healthy
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={"messages": MSG, "stream": True}) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    end = time.monotonic() + 30
    while _metric(url, "inferenceguard_dropped_answers_total") < 1 and time.monotonic() < end:
        time.sleep(0.2)
    assert _metric(url, "inferenceguard_dropped_answers_total") >= 1
    ok = _post(url, "/v1/chat/completions", {"messages": MSG, "max_tokens": 4}, key=None)
    assert ok.status_code == 200 and httpx.get(f"{url}/health").status_code == 200


# -- in process: scripted guards --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_stack():
    from inferenceguard.engine import Stack
    from tests.stubs import CharCost, VowelReward
    from tests.utils.tiny import tiny_lm

    return Stack(lm=tiny_lm(), reward=VowelReward(), cost=CharCost(threshold=0.5))


def _scripted(
    stack, pieces: list[str], final: str, refused: bool = False, sleep: float = 0.0, crash: bool = False, seen=None
):
    """A guard whose search commits ``pieces`` and answers ``final`` (or sleeps, or crashes); ``seen`` collects
    (scorer prompt, LM text) of every prompt it is given."""
    from inferenceguard.engine import Result
    from inferenceguard.guard import Guard
    from inferenceguard.models.loading import prompt_text

    class Scripted(Guard):
        def generate(self, prompts, method="inferenceguard", *, seed=0, batch_size=4, on_commit=None, **settings):
            time.sleep(sleep)
            if seen is not None:
                seen.extend((prompt_text(p), self.stack.lm.format_prompt(p)) for p in prompts)
            if crash:
                raise RuntimeError("secret internal detail")
            for i in range(len(prompts)):
                for p in pieces:
                    if on_commit:
                        on_commit(i, p)
            return [
                Result(
                    prompt=prompt_text(p),
                    method=getattr(method, "method", method),  # the server passes its resolved SearchConfig
                    response=final,
                    safe=not refused,
                    cost=0.1,
                    reward=float("nan"),
                    budget=0.5,
                    budget_left=0.4,
                    budget_trajectory=[0.4],
                    exhausted=refused,
                    refused=refused,
                    finish_reason="refused" if refused else "eos",
                    new_tokens=3,
                    tokens_sampled=3,
                    lm_forward_passes=3,
                    reward_calls=1,
                    cost_calls=1,
                    critic_calls=0,
                    seconds=0.01,
                    seed=seed,
                )
                for p in prompts
            ]

    return Scripted.from_stack(stack)


def _app_client(guard, **settings):
    from fastapi.testclient import TestClient

    from inferenceguard.server import ServerSettings, create_app

    return TestClient(create_app(ServerSettings(**settings), guard))


def _stream_events(tc, body: dict) -> list:
    with tc.stream("POST", "/v1/chat/completions", json={"messages": MSG, "stream": True, **body}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: ") :]) for line in lines[:-1]]


def _content(events: list) -> list[str]:
    return [
        e["choices"][0]["delta"]["content"]
        for e in events
        if e.get("choices") and e["choices"][0]["delta"].get("content")
    ]


def test_stream_of_a_refusal_is_committed_text_then_the_refusal(tiny_stack):
    from inferenceguard.engine.types import REFUSAL

    final = "Sure, here " + REFUSAL  # the engine's refusal: the committed prefix, a space, the refusal
    with _app_client(_scripted(tiny_stack, ["Sure, ", "here"], final, refused=True)) as tc:
        events = _stream_events(tc, {})
    assert _content(events) == ["Sure, ", "here", " " + REFUSAL]
    last = events[-1]["choices"][0]
    assert last["finish_reason"] == "content_filter" and last["inferenceguard"]["refused"] is True
    assert last["inferenceguard"]["reward"] is None  # NaN is not JSON: sent as null


def test_stream_holds_back_a_split_character(tiny_stack):
    # the engine may commit up to half a character (decoded as U+FFFD) and then skip the piece that fixes it
    with _app_client(_scripted(tiny_stack, ["ab", "c\ufffd", "fg"], "abcé fg")) as tc:
        events = _stream_events(tc, {})
    assert _content(events) == ["ab", "c", "é fg"]


def test_a_conversation_reaches_the_lm_whole_and_the_scorers_as_its_last_user_turn(tiny_stack):
    seen: list = []
    conversation = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a story"}]},
    ]
    with _app_client(_scripted(tiny_stack, [], "ok", seen=seen)) as tc:
        unknown = {"tools": [], "logit_bias": {"1": 2}, "frequency_penalty": 0.5, "not_a_field": 1}  # ignored
        assert tc.post("/v1/chat/completions", json={"messages": conversation, **unknown}).status_code == 200
        assert tc.post("/v1/completions", json={"prompt": "plain"}).status_code == 200
    assert seen[0] == ("Tell me a story", "<system>Be brief.<user>Hi<assistant>Hello!<user>Tell me a story<assistant>")
    assert seen[1] == ("plain", "<user>plain<assistant>")


def test_timeout_is_504_and_the_server_recovers(tiny_stack):
    with _app_client(_scripted(tiny_stack, [], "late", sleep=1.0), request_timeout=0.3) as tc:
        r = tc.post("/v1/chat/completions", json={"messages": MSG})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        time.sleep(1.0)  # the running batch finishes; its result is dropped
        assert tc.get("/health").status_code == 200
        assert "inferenceguard_dropped_answers_total 1.0" in tc.get("/metrics").text


def test_internal_errors_are_generic_500s(tiny_stack, caplog):
    with _app_client(_scripted(tiny_stack, [], "", crash=True)) as tc:
        r = tc.post("/v1/chat/completions", json={"messages": MSG})
        s = tc.post("/v1/chat/completions", json={"messages": MSG, "stream": True})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret" not in s.text and '"server_error"' in s.text and s.text.endswith("data: [DONE]\n\n")
    assert "secret internal detail" in caplog.text  # logged on the server side


def test_settings_bounds_are_checked():
    from inferenceguard.errors import ConfigError
    from inferenceguard.server import ServerSettings

    with pytest.raises(ValueError, match="limit_max_tokens"):
        ServerSettings(max_tokens=10_000)
    with pytest.raises(ValueError, match="method"):
        ServerSettings(method="nope")
    s = ServerSettings.from_cli(["--port", "9", "--api-key", "sk-secret-42", "--allowed-methods", '["inferenceguard"]'])
    assert s.port == 9 and s.api_key.get_secret_value() == "sk-secret-42" and s.allowed_methods == ["inferenceguard"]
    assert s.host == "127.0.0.1" and "sk-secret-42" not in repr(s)
    assert issubclass(ConfigError, ValueError)
