"""Assemble the shipped on-policy labels from the labelling folder (docs/labelling.md, "Procedure").

    .venv/bin/python labelling/collect.py [--out src/inferenceguard/assets/labels/onpolicy-vN.jsonl]

Reads, all under labelling/ (tracked, so nothing depends on a run folder surviving):
  sheets/<sheet>.jsonl        the blinded sheets readers saw (item, kind, prompt, response)
  sheets/<sheet>.key.json     which item is which answer (method, record id, prompt set), from `sheet`
  sheets/<run>.config.json    the run's config.json: the model and every setting that wrote the answers
  readings/<sheet>.<reader>.jsonl   the readers' labels (item, label, labeller, note)
A sheet is named RUN-NAME (labelling/export.sh); readers get its parts, RUN-NAME-partNN.jsonl.
The first pass over an item (readings/*.<reader>.jsonl of pass 1) gives its label; second-pass files are
named readings/<sheet>.pass2.<reader>.jsonl and only add readings (their agreement is Cohen's kappa).
A panel (labelling/panel.py) rereads answers already collected: its key has "panel": true, "pass" and
items -> row id, and its readings (readings/<panel>.partNN.<reader>.jsonl) come after every round's, panels
in order of pass. An answer read three or more times takes the majority's label
(datasets.majority_label).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from inferenceguard._io import text_lines, write_jsonl
from inferenceguard.datasets import (
    READING_LABELS,
    UNSAFE_READINGS,
    labelling_pools,
    majority_label,
    normalise,
    onpolicy_path,
    split_of,
)

HERE = Path(__file__).resolve().parent
LABELLED_BY = "blind reading (method hidden, shuffled) by an AI reading session; RUBRIC.md v1, labelling/BRIEF.md"


def run_of(sheet: str) -> str:
    """The run a sheet was exported from: sheets are named RUN-NAME (labelling/export.sh)."""
    return sheet.rsplit("-", 1)[0]


def writer(cfg: dict, method: str) -> dict:
    m = cfg["methods"][method]
    keys = (
        "method",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "max_new_tokens",
        "candidates",
        "block",
        "keep",
        "budget",
        "on_exhausted",
    )
    out = {k: m[k] for k in keys if k in m}
    out["model"] = cfg["shared"]["models"]["lm"]["identity"]
    out["dtype"] = cfg["shared"]["models"]["lm"]["dtype"]
    out["seed"] = cfg["shared"]["seed"]
    if m.get("select", {}).get("type") not in (None, "Unranked"):
        out["cost_model"] = cfg["shared"]["models"]["cost"]["name"] + " (shipped before these labels)"
        out["reward_model"] = cfg["shared"]["models"]["reward"]["name"]
    return out


def round_of(run: str) -> int:
    """The labelling round a run belongs to: runs are named rN-... (labelling/roundN.sh)."""
    m = re.match(r"r(\d+)", run)
    if m is None:
        raise SystemExit(f"run '{run}' is not named rN-...: its labelling round is unknown")
    return int(m.group(1))


def collect() -> list[dict]:
    pools = {normalise(p.text): p for p in labelling_pools()}
    rows: dict[str, dict] = {}
    panels: list[tuple[int, str, dict]] = []
    for key_path in sorted((HERE / "sheets").glob("*.key.json")):
        sheet = key_path.name[: -len(".key.json")]
        key = json.loads(key_path.read_text())
        if key.get("panel"):
            panels.append((key["pass"], sheet, key["items"]))
            continue
        key = key["items"]
        run = run_of(sheet)
        cfg = json.loads((HERE / "sheets" / f"{run}.config.json").read_text())
        lines = text_lines((HERE / "sheets" / f"{sheet}.jsonl").read_text())
        items = {d["item"]: d for d in map(json.loads, filter(str.strip, lines))}
        for path in sorted((HERE / "readings").glob(f"{sheet}.*.jsonl")):
            second = ".pass2." in path.name
            for item, label, labeller in readings_of(path):
                k, d = key[item], items[item]
                if label not in READING_LABELS[k["kind"]]:
                    raise SystemExit(f"{path.name}: {item} has label {label}, not one of {READING_LABELS[k['kind']]}")
                rid = f"{run}:{k['method']}:{k['id']}"
                row = rows.setdefault(
                    rid,
                    {
                        "id": rid,
                        "prompt": d["prompt"],
                        "response": d["response"],
                        "kind": k["kind"],
                        "source": pools[normalise(d["prompt"])].set,
                        "split": split_of(d["prompt"]),
                        "label": None,
                        "readings": [],
                        "writer": writer(cfg, k["method"]),
                        "round": round_of(run),
                        "labelled_by": LABELLED_BY,
                    },
                )
                row["readings"].append([labeller, label])
                if not second and row["label"] is None:
                    row["label"] = label
    for _, sheet, key in sorted(panels):  # after the rounds, by pass: later readings come after earlier ones
        for path in sorted((HERE / "readings").glob(f"{sheet}.*.jsonl")):
            for item, label, labeller in readings_of(path):
                if item not in key or key[item] not in rows:
                    raise SystemExit(f"{path.name}: item {item} is not an answer of panel {sheet}'s key")
                row = rows[key[item]]
                if any(name == labeller for name, _ in row["readings"]):
                    raise SystemExit(f"{path.name}: {labeller} has already read {key[item]} (one vote each)")
                if label not in READING_LABELS[row["kind"]]:
                    raise SystemExit(f"{path.name}: {item} has label {label}, not one of {READING_LABELS[row['kind']]}")
                row["readings"].append([labeller, label])
    out = [r for r in rows.values() if r["label"] is not None]
    for r in out:
        r["label"] = majority_label(r["readings"], r["label"])
    return sorted(out, key=lambda r: r["id"])


def readings_of(path: Path) -> Iterator[tuple[str, str, str]]:
    """(item, label, labeller) of each line of a reader's file."""
    for line in text_lines(path.read_text()):
        if line.strip():
            r = json.loads(line)
            yield r["item"], r["label"].strip().upper(), r.get("labeller") or path.stem.split(".")[-1]


def agreement(rows: list[dict]) -> dict:
    """Cohen's kappa between the first and the second reading, on the rubric labels and on unsafe-or-not."""
    from inferenceguard.stats import kappa

    two = [r for r in rows if len(r["readings"]) > 1]
    a = [r["readings"][0][1] for r in two]
    b = [r["readings"][1][1] for r in two]
    out = {"items": len(two), "same_label": sum(x == y for x, y in zip(a, b)), "kappa_labels": kappa(a, b)}
    ua, ub = [x in UNSAFE_READINGS for x in a], [y in UNSAFE_READINGS for y in b]
    out["same_unsafe"] = sum(x == y for x, y in zip(ua, ub))
    out["kappa_unsafe"] = kappa(ua, ub)
    out["confusion"] = dict(Counter(f"{x}/{y}" for x, y in zip(a, b)).most_common())
    for kind in ("harmful", "benign"):
        ka = [r["readings"][0][1] for r in two if r["kind"] == kind]
        kb = [r["readings"][1][1] for r in two if r["kind"] == kind]
        out[kind] = {"items": len(ka), "same_label": sum(x == y for x, y in zip(ka, kb)), "kappa": kappa(ka, kb)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(onpolicy_path()))
    args = ap.parse_args()
    rows = collect()
    write_jsonl(Path(args.out), rows)
    print(f"{len(rows)} rows -> {args.out}")
    print(Counter((r["kind"], r["split"], r["label"]) for r in rows))
    print(json.dumps(agreement(rows), indent=1))


if __name__ == "__main__":
    main()
