"""The paper-style table (summary.md) and the plots (pareto.png, rewards.png) of an evaluation folder.

Plots need matplotlib (the ``report`` extra); it is imported here only, with the Agg backend (no display).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from inferenceguard._io import write_atomic
from inferenceguard.errors import need_package

FAMILIES = ("sample", "bon", "beam", "args", "recontrol", "inferenceguard")
_COLOURS = {
    "sample": "#7f7f7f",
    "bon": "#1f77b4",
    "beam": "#2ca02c",
    "args": "#9467bd",
    "recontrol": "#ff7f0e",
    "inferenceguard": "#d62728",
}
COLUMNS = (
    ("n", "n", "{:d}"),
    ("reward_mean", "reward", "{:.3f}"),
    ("reward_sd", "± sd", "{:.3f}"),
    ("cost_mean", "cost", "{:.3f}"),
    ("safety_rate", "safety rate", "{:.1%}"),
    ("within_budget_rate", "within budget", "{:.1%}"),
    ("judge_safety_rate", "judge safety", "{:.1%}"),
    ("refusal_rate", "refusals", "{:.1%}"),
    ("exhausted_rate", "no safe cand.", "{:.1%}"),
    ("seconds_per_prompt", "s/prompt", "{:.2f}"),
    ("tokens_per_second", "tok/s", "{:.1f}"),
    ("lm_forward_passes", "LM passes", "{:.0f}"),
    ("scorer_calls", "scorer calls", "{:.0f}"),
)


READER_COLUMNS = (
    ("reader_n", "read", "{:d}"),
    ("reader_safety_rate", "safe by reading", "{:.1%}"),
    ("reader_refusal_rate", "reader: refusals", "{:.1%}"),
    ("reader_other_rate", "reader: off-topic", "{:.1%}"),
    ("reader_helpful_rate", "helpful by reading", "{:.1%}"),
)
"""Shown once a run has imported readings (harness/labels.py)."""


def columns(summary: Mapping[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """The per-set table's columns: the reader-based ones join when the run has readings."""
    return COLUMNS + READER_COLUMNS if summary.get("readers") else COLUMNS


def family(method: str) -> str:
    return next((f for f in reversed(FAMILIES) if method.startswith(f)), "sample")


def fmt(value: Any, pattern: str) -> str:
    if value is None:
        return "–"
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def table_rows(summary: Mapping[str, Any], prompt_set: str) -> list[tuple[str, list[str]]]:
    """(method, formatted cells) for one prompt set, in the summary's method order."""
    rows = []
    for method, per in summary["methods"].items():
        if prompt_set in per:
            rows.append((method, [fmt(per[prompt_set].get(k), p) for k, _, p in columns(summary)]))
    return rows


def prompt_sets(summary: Mapping[str, Any]) -> list[str]:
    sets = list(summary.get("sets", {}))
    for per in summary["methods"].values():
        sets += [s for s in per if s not in sets]
    return sets


def markdown(summary: Mapping[str, Any]) -> str:
    """summary.md: one table per prompt set (paper-style: reward ± sd, cost, safety rate, seconds/prompt)."""
    run = summary.get("run", {})
    models = run.get("models", {})
    lines = ["# Evaluation summary", ""]
    if run:
        lm = (models.get("lm") or {}).get("identity", "?")
        names = {k: (models.get(k) or {}).get("name", "–") for k in ("reward", "cost", "judge")}
        budget = (run.get("settings") or {}).get("budget")
        budget = budget if budget is not None else (models.get("cost") or {}).get("threshold")
        lines += [
            f"Base LM `{lm}`; reward `{names['reward']}`; cost `{names['cost']}` (budget d = {budget}); "
            f"judge `{names['judge']}`. Seed {run.get('seed')}, max {run.get('max_new_tokens')} new tokens; "
            f"{run.get('records')} of {run.get('expected')} answers.",
            "",
            "safety rate: share of final answers the cost model calls safe (cost <= its threshold; the same "
            "test for every method); within budget: share whose safety state stayed >= 0 (the search's "
            "guarantee, charged at each method's own steps); judge safety: share the independent judge calls "
            "safe; refusals: keyword detector (see "
            "harness/metrics.py); s/prompt: amortised over the batch; LM passes and scorer calls: per prompt.",
            "",
        ]
    lines += _headline(summary) + _agreement(summary)
    cols = columns(summary)
    header = "| method | " + " | ".join(c[1] for c in cols) + " |"
    rule = "|---|" + "---:|" * len(cols)
    for s in prompt_sets(summary):
        kind = summary.get("sets", {}).get(s, {}).get("kind")
        lines += [f"## {s}" + (f" ({kind})" if kind else ""), "", header, rule]
        lines += [f"| {m} | " + " | ".join(cells) + " |" for m, cells in table_rows(summary, s)]
        lines.append("")
    return "\n".join(lines)


HEADLINE = (
    ("harmful", "reader_safety_rate", "harmful: safe by reading", "{:.1%}"),
    ("harmful", "reader_refusal_rate", "harmful: reader refusals", "{:.1%}"),
    ("harmful", "safety_rate", "harmful: safety rate", "{:.1%}"),
    ("harmful", "within_budget_rate", "harmful: within budget", "{:.1%}"),
    ("harmful", "judge_safety_rate", "harmful: judge safety", "{:.1%}"),
    ("harmful", "reward_mean", "harmful: reward", "{:.3f}"),
    ("benign", "reward_mean", "benign: reward", "{:.3f}"),
    ("benign", "reader_helpful_rate", "benign: helpful by reading", "{:.1%}"),
    ("benign", "reader_refusal_rate", "benign: reader refusals", "{:.1%}"),
    ("benign", "refusal_rate", "benign: refusals", "{:.1%}"),
    ("benign", "safety_rate", "benign: safety rate", "{:.1%}"),
)


def headline_columns(summary: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """The headline's columns: those of the kinds the run has; reader-based ones only once it has readings."""
    kinds = summary.get("kinds") or {}
    present = {k for per in kinds.values() for k in per}
    if not {"harmful", "benign"} & present:
        return []
    return [c for c in HEADLINE if c[0] in present and (summary.get("readers") or not c[1].startswith("reader_"))]


def _agreement(summary: Mapping[str, Any]) -> list[str]:
    """How the cost model and the judge agree with the readers (harness/labels.reader_agreement)."""
    agree = summary.get("readers")
    if not agree:
        return []
    lines = [
        "## Agreement with the readers",
        "",
        "ROC-AUC of each score against the reader's harmful label (COMPLY or HARMFUL), and Cohen's kappa of "
        "each verdict with it, over the answers read (first reader).",
        "",
        "| answers | read | harmful by reading | cost AUC | cost κ | judge AUC | judge κ |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("all", "harmful", "benign", "custom"):
        b = agree.get(kind)
        if b:
            cells = [
                b["answers"],
                b["harmful_by_reading"],
                b["cost_auc"],
                b["cost_kappa"],
                b["judge_auc"],
                b["judge_kappa"],
            ]
            lines.append(f"| {kind} | " + " | ".join(fmt(c, "{}") for c in cells) + " |")
    r = agree.get("readers") or {}
    if r.get("double_read"):
        lines += [
            "",
            f"Read twice: {r['double_read']} answers; the readers agree on {fmt(r['agreement'], '{:.1%}')} "
            f"(κ {fmt(r['kappa'], '{}')}; harmful vs safe: κ {fmt(r['kappa_harmful'], '{}')}).",
        ]
    return [*lines, ""]


def _headline(summary: Mapping[str, Any]) -> list[str]:
    """One row per method pooled over the harmful and over the benign sets (when the run has both kinds)."""
    kinds = summary.get("kinds") or {}
    cols = headline_columns(summary)
    if not cols:
        return []
    lines = [
        "## Headline (pooled by kind)",
        "",
        "| method | " + " | ".join(c[2] for c in cols) + " | s/prompt |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for method, per in kinds.items():
        cells = [fmt((per.get(k) or {}).get(key), p) for k, key, _, p in cols]
        n = sum((c.get("n") or 0) for c in per.values())
        secs = sum((c.get("seconds_per_prompt") or 0) * (c.get("n") or 0) for c in per.values()) / max(n, 1)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {secs:.2f} |")
    return [*lines, ""]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise need_package("matplotlib", "Plotting the report", "pip install 'inferenceguard[report]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return (n + cols - 1) // cols, cols


class Label(NamedTuple):
    """A Pareto label: its text, the point it names, and where the text sits (x, y, horizontal alignment)."""

    text: str
    x: float
    y: float
    text_x: float
    text_y: float
    ha: str


def label_positions(
    points: Sequence[tuple[str, float, float]],
    y_gap: float,
    char_width: float = 1.3,
    left_from: float = 70.0,
) -> list[Label]:
    """Labels for a scatter's points, read without overlaps: methods at the same point share one label
    ("a = b"); a label is written right of its point, or left of it beyond x = ``left_from`` (so it stays inside
    the panel), spans about ``char_width`` x-units per character, and is pushed up by ``y_gap`` while it would
    overlap a label already placed (its point is then joined to it by a leader line)."""
    merged: dict[tuple[float, float], list[str]] = {}
    for name, x, y in points:
        merged.setdefault((round(x, 6), round(y, 6)), []).append(name)

    def span(text: str, text_x: float, ha: str) -> tuple[float, float]:
        width = char_width * len(text)
        return (text_x - width, text_x) if ha == "right" else (text_x, text_x + width)

    placed: list[Label] = []
    for (x, y), names in sorted(merged.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        text, ha = " = ".join(names), "right" if x > left_from else "left"
        text_x, text_y = (x - 2 if ha == "right" else x + 2), y
        lo, hi = span(text, text_x, ha)
        for other in sorted(placed, key=lambda p: p.text_y):
            o_lo, o_hi = span(other.text, other.text_x, other.ha)
            if lo < o_hi and o_lo < hi and abs(other.text_y - text_y) < y_gap:
                text_y = other.text_y + y_gap
        placed.append(Label(text, x, y, text_x, text_y, ha))
    return placed


def pareto_x(summary: Mapping[str, Any]) -> tuple[str, str]:
    """(metric, axis label) for the Pareto plot's x: the safety rate, unless the run set a budget below the cost
    model's threshold, where every guarded answer ends far below the threshold and what separates the methods
    is whether they kept the tighter budget (``within_budget_rate``)."""
    run = summary.get("run", {})
    budget = (run.get("settings") or {}).get("budget")
    threshold = ((run.get("models") or {}).get("cost") or {}).get("threshold")
    if budget is not None and threshold is not None and budget < threshold:
        return "within_budget_rate", f"within budget d = {budget:g} (%)"
    return "safety_rate", "safety rate by the cost model (%)"


def pareto_png(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Safety rate (x; see ``pareto_x``) against mean reward (y), one point per method, marker area ~ seconds
    per prompt; one panel per prompt set."""
    plt = _pyplot()
    sets = [s for s in prompt_sets(summary) if any(s in per for per in summary["methods"].values())]
    rows, cols = _grid(max(len(sets), 1))
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.6 * rows), squeeze=False)
    secs = [c.get("seconds_per_prompt") or 0 for per in summary["methods"].values() for c in per.values()]
    top = max([*secs, 1e-9])
    x_key, x_label = pareto_x(summary)
    for ax, s in zip(axes.flat, sets):
        points = []
        for method, per in summary["methods"].items():
            c = per.get(s)
            if not c or c.get(x_key) is None or c.get("reward_mean") is None:
                continue
            x, y = 100 * c[x_key], c["reward_mean"]
            points.append((method, x, y))
            ax.scatter(
                x,
                y,
                s=30 + 600 * (c.get("seconds_per_prompt") or 0) / top,
                color=_COLOURS[family(method)],
                alpha=0.7,
                edgecolors="black",
                linewidths=0.5,
            )
        ys = [y for _, _, y in points] or [0.0]
        gap = 0.055 * max(max(ys) - min(ys), 1.0)
        labels = label_positions(points, y_gap=gap)
        for lab in labels:
            ax.annotate(
                lab.text,
                (lab.x, lab.y),
                xytext=(lab.text_x, lab.text_y + 0.3 * gap),
                fontsize=7,
                ha=lab.ha,
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.4"} if lab.text_y != lab.y else None,
            )
        ax.set_ylim(min(ys) - gap, max([*ys, *(lab.text_y for lab in labels)]) + 2 * gap)
        kind = summary.get("sets", {}).get(s, {}).get("kind")
        ax.set_title(s + (f" ({kind})" if kind else ""))
        ax.set_xlabel(x_label)
        ax.set_ylabel("mean reward")
        ax.set_xlim(-5, 105)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(sets) :]:
        ax.axis("off")
    fig.suptitle("Safety vs reward (marker area ~ seconds per prompt)")
    fig.tight_layout()
    path = Path(path)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


def rewards_png(
    records: Sequence[Mapping[str, Any]], methods: Sequence[str], sets: Sequence[str], path: str | Path
) -> Path:
    """Per-method reward distributions (box plots with the points), one panel per prompt set."""
    plt = _pyplot()
    sets = [s for s in sets if any(r["set"] == s for r in records)]
    rows, cols = _grid(max(len(sets), 1))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 0.32 * len(methods) * rows + 1.6 * rows), squeeze=False)
    for ax, s in zip(axes.flat, sets):
        names = [m for m in methods if any(r["method"] == m and r["set"] == s for r in records)]
        data = [[float(r["reward"]) for r in records if r["method"] == m and r["set"] == s] for m in names]
        if not names:
            ax.axis("off")
            continue
        ax.boxplot(data, vert=False, showfliers=False, widths=0.6)
        for i, (m, xs) in enumerate(zip(names, data), 1):
            jitter = [i + 0.18 * ((k * 0.618) % 1 - 0.5) for k in range(len(xs))]
            ax.scatter(xs, jitter, s=6, color=_COLOURS[family(m)], alpha=0.6)
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(s)
        ax.set_xlabel("reward")
        ax.grid(alpha=0.3, axis="x")
    for ax in list(axes.flat)[len(sets) :]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path
