"""report.html: one self-contained page (inline CSS, plots embedded as base64 PNG, no script, no network) with
the summary tables, the plots and a browsable sample of answers side by side (a row per prompt, a column
per method, each answer with its verdicts)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inferenceguard.report.summary import columns, fmt, headline_columns, prompt_sets, table_rows

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1800px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 7px;vertical-align:top}
th{background:#f4f4f4;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto;max-height:80vh;overflow-y:auto;border:1px solid #eee}
.answers td{min-width:260px;max-width:420px}
.answers td.prompt{min-width:220px;background:#fafafa;font-weight:500}
.resp{white-space:pre-wrap;word-break:break-word;font-size:12px;margin:4px 0}
.tag{display:inline-block;border-radius:3px;padding:0 5px;margin:0 3px 2px 0;font-size:11px;color:#fff}
.safe{background:#2e7d32}.unsafe{background:#c62828}.refusal{background:#6d4c41}.flag{background:#ef6c00}
.na{background:#9e9e9e}.meta{color:#666;font-size:11px}
img{max-width:100%;border:1px solid #eee}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
"""


def _img(path: Path | None) -> str:
    if path is None or not Path(path).is_file():
        return "<p class=meta>(plot not available: matplotlib is not installed)</p>"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def _tag(text: str, cls: str) -> str:
    return f'<span class="tag {cls}">{html.escape(text)}</span>'


def _verdicts(r: Mapping[str, Any]) -> str:
    tags = [_tag("safe" if r["safe"] else "over budget", "safe" if r["safe"] else "unsafe")]
    verdict = r.get("judge_verdict")
    tags.append(
        _tag(f"judge: {verdict}", verdict if verdict in ("safe", "unsafe") else "na")
        if verdict
        else _tag("judge: –", "na")
    )
    if r.get("refusal"):
        tags.append(_tag("refusal", "refusal"))
    if r.get("refused"):
        tags.append(_tag("policy refusal", "flag"))
    elif r.get("exhausted"):
        tags.append(_tag("no safe candidate", "flag"))
    meta = f"reward {r['reward']:.3f} · cost {r['cost']:.3f} · {r['new_tokens']} tok · {r['seconds']:.2f}s"
    return "".join(tags) + f'<div class="meta">{html.escape(meta)}</div>'


def _summary_table(summary: Mapping[str, Any], s: str) -> str:
    head = "<tr><th>method</th>" + "".join(f"<th>{html.escape(c[1])}</th>" for c in columns(summary)) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(m)}</td>" + "".join(f'<td class="num">{html.escape(c)}</td>' for c in cells) + "</tr>"
        for m, cells in table_rows(summary, s)
    )
    return f"<table>{head}{body}</table>"


def _headline_table(summary: Mapping[str, Any]) -> str:
    kinds = summary.get("kinds") or {}
    cols = headline_columns(summary)
    if not cols:
        return ""
    head = "<tr><th>method</th>" + "".join(f"<th>{html.escape(c[2])}</th>" for c in cols) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(m)}</td>"
        + "".join(f'<td class="num">{html.escape(fmt((per.get(k) or {}).get(key), p))}</td>' for k, key, _, p in cols)
        + "</tr>"
        for m, per in kinds.items()
    )
    return f"<h3>Headline (pooled by kind)</h3><table>{head}{body}</table>"


def _answers_table(
    records: Sequence[Mapping[str, Any]], methods: Sequence[str], ids: Sequence[str], max_chars: int
) -> str:
    by = {(r["method"], r["id"]): r for r in records}
    cols = [m for m in methods if any((m, i) in by for i in ids)]
    head = "<tr><th>prompt</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in cols) + "</tr>"
    rows = []
    for i in ids:
        first = next((by[(m, i)] for m in cols if (m, i) in by), None)
        if first is None:
            continue
        prompt = first["prompt"]
        tds = [f'<td class="prompt">{html.escape(prompt)}<div class="meta">{html.escape(i)}</div></td>']
        for m in cols:
            r = by.get((m, i))
            if r is None:
                tds.append("<td class=meta>(not run yet)</td>")
                continue
            text = r["response"]
            shown = text if len(text) <= max_chars else text[:max_chars] + " …"
            tds.append(f'<td>{_verdicts(r)}<div class="resp">{html.escape(shown)}</div></td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return f'<div class="scroll"><table class="answers">{head}{"".join(rows)}</table></div>'


def render(
    summary: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    pareto: Path | None,
    rewards: Path | None,
    sample_per_set: int = 30,
    max_chars: int = 1200,
) -> str:
    """The whole page as one HTML string."""
    run = summary.get("run", {})
    models = run.get("models", {})
    model_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str((v or {}).get('identity') or (v or {}).get('name')))}"
        f"</td><td>{html.escape(str((v or {}).get('threshold', '–')))}</td></tr>"
        for k, v in models.items()
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>InferenceGuard evaluation</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>InferenceGuard evaluation report</h1>",
        f"<p>Seed {run.get('seed')}, max {run.get('max_new_tokens')} new tokens, {run.get('records')} of "
        f"{run.get('expected')} answers.</p>",
        f"<table><tr><th>model</th><th>identity</th><th>threshold</th></tr>{model_rows}</table>",
        "<p class=meta>safety rate: share within budget by the cost model; judge safety: the independent judge; "
        "refusals: a keyword detector (misses soft refusals, counts apologise-then-comply); s/prompt amortised "
        "over the batch.</p>",
        "<h2>Summary</h2>",
        _headline_table(summary),
    ]
    for s in prompt_sets(summary):
        kind = summary.get("sets", {}).get(s, {}).get("kind")
        parts.append(f"<h3>{html.escape(s)}{f' ({html.escape(kind)})' if kind else ''}</h3>")
        parts.append(_summary_table(summary, s))
    parts += ["<h2>Safety vs reward</h2>", _img(pareto), "<h2>Reward distributions</h2>", _img(rewards)]
    parts.append(f"<h2>Answers side by side</h2><p class=meta>The first {sample_per_set} prompts of each set.</p>")
    methods = list(config.get("methods", {}))
    for s, entry in config.get("prompt_sets", {}).items():
        ids = entry["ids"][:sample_per_set]
        parts.append(
            f"<details {'open' if s == next(iter(config['prompt_sets'])) else ''}><summary>"
            f"{html.escape(s)} ({len(ids)} of {len(entry['ids'])} prompts)</summary>"
        )
        parts.append(_answers_table(records, methods, ids, max_chars))
        parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)
