"""Soak: the tiny server under steady concurrent load for a bounded time, with clients that leave mid-request.

    python benchmarks/soak_server.py                       # 600 s, 8 clients
    python benchmarks/soak_server.py --seconds 10 --clients 4

Starts ``tests.server.tiny_server`` (uvicorn, 127.0.0.1 only, a free port) and runs ``--clients`` loops that
each send, until ``--seconds`` have passed (and at most ``--max-requests`` each), a seeded mix of chat
completions, completions, moderations, streamed chats, and disconnects: a stream dropped after its first
event, or a request abandoned before its answer. Reports the server's RSS and thread count at start, after
warm-up (the first ``--warmup`` seconds, default 10 % of the run) and at the end, event-loop tasks, the
queue depth once the load stops, and whether ``/metrics`` counts match what the clients saw: per endpoint
and status, exactly, except that each abandoned request is counted 200 or 499 (whichever the server reached
first), or not at all when the client gave up before its request reached the app. The last line is one
JSON object; exit 1 when a check fails (RSS growth after warm-up over ``--max-growth``, a 5xx, a traceback
in the log, the queue or the tasks not back to idle, a metrics mismatch).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_load import _free_port, _start_server, _wait_healthy

MSG = [{"role": "user", "content": "Tell me about the sea."}]
SERVER_FLAGS = ["--host", "127.0.0.1", "--max-tokens", "8", "--candidates", "2", "--block", "4", "--limit-n", "2"]
KINDS = {  # request kind -> share of the mix
    "chat": 0.40,
    "completion": 0.15,
    "moderation": 0.10,
    "stream": 0.15,
    "stream_dropped": 0.10,
    "abandoned": 0.10,
}
ENDPOINT = {
    "chat": "/v1/chat/completions",
    "stream": "/v1/chat/completions",
    "stream_dropped": "/v1/chat/completions",
    "abandoned": "/v1/chat/completions",
    "completion": "/v1/completions",
    "moderation": "/v1/moderations",
}


def _proc_status(pid: int) -> dict[str, int]:
    """RSS (bytes) and thread count of a process, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "threads": int(fields["Threads"])}


def _metrics(url: str) -> dict[str, float]:
    """The server's metric samples, ``name{labels}`` -> value."""
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _requests_seen(metrics: dict[str, float]) -> collections.Counter:
    """(endpoint, status) -> count, from inferenceguard_requests_total."""
    seen: collections.Counter = collections.Counter()
    for key, value in metrics.items():
        if key.startswith("inferenceguard_requests_total{"):
            labels = dict(p.split("=", 1) for p in key[key.index("{") + 1 : -1].split(","))
            seen[(labels["endpoint"].strip('"'), labels["status"].strip('"'))] += int(value)
    return seen


class Clients:
    """What the clients sent and saw: (endpoint, status) of completed requests, abandoned ones per endpoint."""

    def __init__(self) -> None:
        self.completed: collections.Counter = collections.Counter()
        self.abandoned: collections.Counter = collections.Counter()
        self.kinds: collections.Counter = collections.Counter()
        self.errors: list[str] = []


async def _one(client: httpx.AsyncClient, kind: str, rng: random.Random, seen: Clients) -> None:
    """One request of this kind; the (endpoint, status) it got, or that it was abandoned."""
    endpoint = ENDPOINT[kind]
    seen.kinds[kind] += 1
    if kind == "completion":
        body: dict = {"prompt": ["Hello there", "Name a colour"][: rng.randint(1, 2)], "seed": rng.randint(0, 3)}
    elif kind == "moderation":
        body = {"input": ["some text", "more text"], "prompt": "a request"}
    else:
        body = {"messages": MSG, "seed": rng.randint(0, 3), "n": rng.randint(1, 2)}
    if kind in ("stream", "stream_dropped"):
        body["stream"] = True
        async with client.stream("POST", endpoint, json=body) as r:
            async for line in r.aiter_lines():
                if kind == "stream_dropped" and line:
                    break  # leave mid-stream: the connection is closed with the answer still coming
            status = r.status_code
        if kind == "stream_dropped":
            seen.abandoned[endpoint] += 1  # counted 499 by the server (or 200 if its answer was already out)
            return
        seen.completed[(endpoint, str(status))] += 1
        return
    if kind == "abandoned":
        try:
            r = await asyncio.wait_for(client.post(endpoint, json=body), timeout=rng.uniform(0.01, 0.1))
        except asyncio.TimeoutError:
            seen.abandoned[endpoint] += 1
            return
        seen.completed[(endpoint, str(r.status_code))] += 1  # answered before the client gave up
        return
    r = await client.post(endpoint, json=body)
    seen.completed[(endpoint, str(r.status_code))] += 1


async def _client_loop(url: str, i: int, deadline: float, max_requests: int, seed: int, seen: Clients) -> None:
    rng = random.Random(seed * 1000 + i)
    kinds, weights = list(KINDS), list(KINDS.values())
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(max_requests):  # bounded in count, and in time below
            if time.monotonic() >= deadline:
                return
            try:
                await _one(client, rng.choices(kinds, weights)[0], rng, seen)
            except httpx.HTTPError as e:  # a transport error: recorded, the loop goes on
                seen.errors.append(f"{type(e).__name__}: {e}")


async def _load(url: str, clients: int, seconds: float, max_requests: int, seed: int) -> Clients:
    seen = Clients()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(_client_loop(url, i, deadline, max_requests, seed, seen) for i in range(clients)))
    return seen


def _check_counts(before: collections.Counter, after: collections.Counter, seen: Clients) -> dict:
    """Server-side (endpoint, status) increments during the load against the clients' own records."""
    delta = after - before
    problems, unseen = [], {}
    for endpoint in sorted(set(ENDPOINT.values())):  # not /health, /metrics: this script's own polls
        server = {s: n for (e, s), n in delta.items() if e == endpoint}
        client = {s: n for (e, s), n in seen.completed.items() if e == endpoint}
        extra = {s: server.get(s, 0) - client.get(s, 0) for s in set(server) | set(client)}
        extra = {s: n for s, n in extra.items() if n}
        ok = (
            all(n > 0 and s in ("200", "499") for s, n in extra.items())
            and sum(extra.values()) <= seen.abandoned[endpoint]
        )
        unseen[endpoint] = seen.abandoned[endpoint] - sum(extra.values())
        if not ok:
            problems.append(
                {"endpoint": endpoint, "server": server, "clients": client, "abandoned": seen.abandoned[endpoint]}
            )
    return {"match": not problems, "problems": problems, "abandoned_never_reached_the_app": unseen}


def _settle(url: str, idle_tasks: int) -> tuple[dict, dict[str, float]]:
    """/health and /metrics once the queue is empty and the event loop is back to its idle tasks (bounded:
    at most ~10 s for the last answers and dropped streams to finish)."""
    for _ in range(100):
        health = httpx.get(f"{url}/health", timeout=30).json()
        metrics = _metrics(url)
        if health["queue"] == 0 and int(metrics["inferenceguard_event_loop_tasks"]) <= idle_tasks:
            break
        time.sleep(0.1)
    return health, metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600, help="Load duration (every loop stops by then).")
    ap.add_argument("--warmup", type=float, default=None, help="Seconds before the warm RSS sample (10%%).")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=100_000, help="Most requests per client.")
    ap.add_argument("--max-growth", type=float, default=0.10, help="Largest RSS growth after warm-up.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--startup-timeout", type=float, default=300)
    args = ap.parse_args(argv)
    for name in ("seconds", "clients", "max_requests"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    warmup = min(args.seconds / 2, args.seconds * 0.1 if args.warmup is None else args.warmup)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    proc = _start_server(True, port, SERVER_FLAGS, log, threads=1)
    try:
        _wait_healthy(url, proc, args.startup_timeout, log)
        start = _proc_status(proc.pid)
        m0 = _metrics(url)
        idle_tasks = int(m0["inferenceguard_event_loop_tasks"])
        t0 = time.monotonic()
        seen_warm = asyncio.run(_load(url, args.clients, warmup, args.max_requests, args.seed))
        warm = _proc_status(proc.pid)
        before = _requests_seen(_settle(url, idle_tasks)[1])
        seen = asyncio.run(_load(url, args.clients, args.seconds - warmup, args.max_requests, args.seed + 1))
        load_seconds = time.monotonic() - t0
        health, m1 = _settle(url, idle_tasks)
        end = _proc_status(proc.pid)
        after = _requests_seen(m1)
        counts = _check_counts(before, after, seen)
    finally:
        proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
    log_text = log.read_text()
    sent = sum(seen.kinds.values()) + sum(seen_warm.kinds.values())
    server_5xx = sum(n for (_, s), n in after.items() if s.startswith("5"))
    growth = (end["rss"] - warm["rss"]) / warm["rss"]
    result = {
        "seconds": round(load_seconds, 1),
        "clients": args.clients,
        "requests": sent,
        "requests_per_s": round(sent / load_seconds, 1),
        "kinds": dict(seen.kinds + seen_warm.kinds),
        "rss_mb": {k: round(v["rss"] / 2**20, 1) for k, v in (("start", start), ("warm", warm), ("end", end))},
        "rss_growth_after_warmup": round(growth, 4),
        "threads": {"start": start["threads"], "warm": warm["threads"], "end": end["threads"]},
        "event_loop_tasks": {"idle": idle_tasks, "end": int(m1["inferenceguard_event_loop_tasks"])},
        "queue_depth_end": health["queue"],
        "dropped_answers": m1.get("inferenceguard_dropped_answers_total", 0.0),
        "server_5xx": server_5xx,
        "client_transport_errors": len(seen.errors) + len(seen_warm.errors),
        "metrics_match_clients": counts["match"],
        "metrics_problems": counts["problems"],
        "abandoned_never_reached_the_app": counts["abandoned_never_reached_the_app"],
        "traceback_in_log": "Traceback" in log_text,
    }
    checks = {
        "rss_growth": growth <= args.max_growth,
        "no_5xx": server_5xx == 0,
        "no_transport_errors": not (seen.errors or seen_warm.errors),
        "queue_back_to_0": health["queue"] == 0,
        "tasks_back_to_idle": result["event_loop_tasks"]["end"] <= idle_tasks,
        # a lazily started pool thread or two is not a leak; a thread per request would be hundreds
        "threads_flat": end["threads"] <= warm["threads"] + 2,
        "metrics_match": counts["match"],
        "no_traceback": not result["traceback_in_log"],
    }
    result["checks"] = checks
    print(f"{sent} requests in {load_seconds:.0f} s from {args.clients} clients; kinds {result['kinds']}")
    print(f"RSS MB start/warm/end: {result['rss_mb']}; growth after warm-up {growth:+.1%}")
    print(f"threads {result['threads']}; tasks {result['event_loop_tasks']}; queue at end {health['queue']}")
    failed = [k for k, v in checks.items() if not v]
    print(f"metrics match clients: {counts['match']}; 5xx: {server_5xx}; failed checks: {failed}")
    if seen.errors:
        print("transport errors:", seen.errors[:5])
    if result["traceback_in_log"]:
        print(log_text[-3000:])
    print(json.dumps(result))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
