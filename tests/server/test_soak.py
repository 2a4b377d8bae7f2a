"""A short soak (benchmarks/soak_server.py, ~8 s of load): a real tiny server on a loopback port under
concurrent chats, completions, moderations and streams, with clients leaving mid-stream and mid-request.
The long run (docs/reliability.md) is the same script with ``--seconds 300``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "soak_server.py"


def test_short_soak_keeps_counts_queue_tasks_and_threads(capsys):
    spec = importlib.util.spec_from_file_location("soak_server", SCRIPT)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)  # type: ignore[union-attr]
    # RSS after a 2-second warm-up still settles (allocator, caches): only a gross leak fails here
    rc = soak.main(["--seconds", "8", "--warmup", "2", "--clients", "4", "--max-growth", "0.5"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0, result["checks"]
    assert result["metrics_match_clients"] and result["queue_depth_end"] == 0 and result["server_5xx"] == 0
    assert result["kinds"].get("stream_dropped", 0) + result["kinds"].get("abandoned", 0) > 0  # clients left
    assert result["requests"] >= 8
