"""Reports from an evaluation folder: summary.json, summary.md, pareto.png, rewards.png and report.html,
all regenerated from ``config.json`` and ``results.jsonl`` (``inferenceguard report DIR``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferenceguard._io import write_text
from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.harness.run import CONFIG, RESULTS, read_config, read_results, summarise_run


def build(out: str | Path, sample_per_set: int = 30) -> dict[str, Any]:
    """Write every report file of ``out``; returns {"summary": ..., "written": [paths], "warnings": [...]}.

    Without matplotlib the plots are skipped (a warning says how to install it) and the rest is written.
    """
    from inferenceguard.report.html import render
    from inferenceguard.report.summary import markdown, pareto_png, rewards_png

    out = Path(out)
    config = read_config(out) if out.is_dir() else None
    if config is None or not (out / RESULTS).is_file():
        raise ConfigError(
            "DIR",
            str(out),
            f"must be an evaluation folder holding {CONFIG} and {RESULTS} (written by `inferenceguard eval --out DIR`)",
        )
    summary = summarise_run(out)
    wanted = {(m, i) for m in config["methods"] for s in config["prompt_sets"].values() for i in s["ids"]}
    records = [r for r in read_results(out / RESULTS) if (r.get("method"), r.get("id")) in wanted]
    written, warnings = [out / "summary.json"], []
    md = out / "summary.md"
    write_text(md, markdown(summary))
    written.append(md)
    pareto = rewards = None
    try:
        pareto = pareto_png(summary, out / "pareto.png")
        rewards = rewards_png(records, list(config["methods"]), list(config["prompt_sets"]), out / "rewards.png")
        written += [pareto, rewards]
    except AssetError as e:
        warnings.append(str(e))
    page = out / "report.html"
    write_text(page, render(summary, records, config, pareto, rewards, sample_per_set=sample_per_set))
    written.append(page)
    return {"summary": summary, "written": [str(p) for p in written], "warnings": warnings}
