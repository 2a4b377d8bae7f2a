"""Schemathesis against the server's own OpenAPI schema, in-process: the one home of the API fuzz run.

``fuzz(tiny_app(), cases)`` loads ``/openapi.json`` from the ASGI app, generates ``cases`` requests per operation and
generation mode (``positive``: bodies the schema accepts; ``negative``: bodies it rejects, wrong types,
missing fields), sends each through the app (its lifespan runs once, so the real queue and worker answer) and
runs schemathesis' response checks on it. Used by ``tests/server/test_fuzz.py`` (a bounded run in the suite)
and ``benchmarks/fuzz_server.py`` (the long run).

Checks: every built-in check except ``positive_data_acceptance``. That one expects every schema-valid body
to be answered 2xx, but the server refuses schema-valid requests for reasons a static schema cannot carry
(its own ``--limit-*`` settings, the prompt's length in tokens, a model name it does not serve); those 400s
and 404s are documented statuses, which ``status_code_conformance`` checks.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any

import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance

KEY = "sk-fuzz"
SETTINGS = {  # small limits keep each answered request to a few tiny-model steps
    "api_key": KEY,
    "max_tokens": 4,
    "limit_max_tokens": 8,
    "limit_n": 2,
    "limit_candidates": 4,
    "limit_beams": 2,
    "limit_block": 4,
    "limit_prompts": 2,
    "candidates": 2,
    "block": 4,
}
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
EXCLUDED_CHECKS = [positive_data_acceptance]


@dataclasses.dataclass
class FuzzReport:
    """What a fuzz run sent and saw: cases and statuses per operation, and every failed check."""

    cases: int = 0
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    per_operation: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    server_errors: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (statuses as strings, violations grouped by check title)."""
        return {
            "cases": self.cases,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "per_operation": {op: {str(k): v for k, v in sorted(c.items())} for op, c in self.per_operation.items()},
            "5xx": self.server_errors,
            "schema_violations": len(self.violations),
            "violation_kinds": dict(collections.Counter(v.split(":", 1)[0] for v in self.violations)),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 1),
        }


def tiny_app() -> Any:
    """The app under fuzz: the tiny random stack (tests/server/tiny_server.py) with ``SETTINGS``."""
    from inferenceguard.server import ServerSettings, create_app
    from tests.server.tiny_server import tiny_guard

    return create_app(ServerSettings(**SETTINGS), tiny_guard())


def fuzz(app: Any, cases: int, *, seed: int = 0, headers: dict[str, str] | None = None) -> FuzzReport:
    """Send ``cases`` generated requests per operation and mode to ``app``; return what was seen.

    Hypothesis runs derandomised from ``seed`` with no example database, so a run is repeatable; shrinking is
    off (a failure is recorded with the request that caused it, and the run goes on)."""
    headers = {"Authorization": f"Bearer {KEY}"} if headers is None else headers
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = FuzzReport()
    t0 = time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = operation.label
        counts = report.per_operation.setdefault(label, collections.Counter())
        for mode in MODES:
            _run_operation(operation, mode, cases, seed, headers, report, counts)
    report.seconds = time.perf_counter() - t0
    return report


def _run_operation(
    operation: Any,
    mode: schemathesis.GenerationMode,
    cases: int,
    seed: int,
    headers: dict[str, str],
    report: FuzzReport,
    counts: collections.Counter,
) -> None:
    @hypothesis.settings(
        max_examples=cases,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.seed(seed)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=headers, timeout=60)
        status = response.status_code
        try:
            case.validate_response(response, headers=headers, excluded_checks=EXCLUDED_CHECKS)
        except (Failure, FailureGroup) as e:
            for f in e.exceptions if isinstance(e, FailureGroup) else [e]:
                report.violations.append(f"{f.title}: {operation.label} [{mode.value}] {f.message[:300]!r}")
        report.cases += 1
        report.statuses[status] += 1
        counts[status] += 1
        if isinstance(status, int) and status >= 500:
            report.server_errors += 1

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # nothing to negate (e.g. GET /health takes no input)
        report.skipped.append(f"{operation.label} [{mode.value}]")
