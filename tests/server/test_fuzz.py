"""A bounded schemathesis run against the app's OpenAPI schema (tests/server/fuzz.py; the long run is
benchmarks/fuzz_server.py): every generated request gets a documented status, never a 5xx, and every
response matches the schema."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("schemathesis")

CASES = 20  # per operation and generation mode: about 130 requests, a few seconds


def test_fuzz_the_api_from_its_schema():
    from tests.server.fuzz import fuzz, tiny_app

    report = fuzz(tiny_app(), CASES)
    summary = report.summary()
    assert report.server_errors == 0, summary
    assert not report.violations, report.violations[:10]
    ops = report.per_operation
    assert set(ops) == {
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/moderations",
        "GET /v1/models",
        "GET /health",
        "GET /metrics",
    }
    posts = ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/moderations")
    assert all(ops[op][400] > 0 for op in posts), summary  # refused cases on every route ...
    assert sum(ops[op][200] for op in posts) > 0, summary  # ... and answered ones (searched, scored)
    assert report.cases >= 100, summary
