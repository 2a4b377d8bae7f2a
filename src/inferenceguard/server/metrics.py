"""The server's Prometheus metrics (``/metrics``): one registry per app, so two apps in one process never
share counters.

The app passes in what the gauges read (the queue depth, the event loop) as callables rather than itself, so
this module knows nothing of the server's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from inferenceguard.engine.types import Result


class Metrics:
    """The counters, histograms and gauges of one app, in a registry of its own."""

    def __init__(self, queue_depth: Callable[[], int], loop: Callable[[], asyncio.AbstractEventLoop | None]) -> None:
        """``queue_depth``: requests waiting now; ``loop``: the app's event loop once started (else None)."""
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
        self.queue.set_function(queue_depth)
        self.tasks = Gauge("inferenceguard_event_loop_tasks", "Tasks alive on the event loop (leak check).", registry=r)
        self.tasks.set_function(lambda: _tasks(loop()))
        for outcome in ("safe", "unsafe", "refused"):
            self.answers.labels(outcome)

    def observe(self, r: Result, dropped: bool) -> None:
        """Count one searched answer: its tokens, its outcome, an exhausted search, a dropped delivery."""
        self.tokens.inc(r.new_tokens)
        self.answers.labels("refused" if r.refused else "safe" if r.safe else "unsafe").inc()
        if r.exhausted:
            self.exhausted.inc()
        if dropped:
            self.dropped.inc()

    def exposition(self) -> tuple[bytes, str]:
        """The registry in Prometheus' text format, and its content type (the ``/metrics`` body)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _tasks(loop: asyncio.AbstractEventLoop | None) -> int:
    return len(asyncio.all_tasks(loop)) if loop is not None else 0
