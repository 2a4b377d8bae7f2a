"""Reading labels for an evaluation: a blinded sheet out, the readers' labels back in.

``export_sheet(RUN, SHEET)`` writes the answers of a run as a sheet a person can label (JSONL or CSV by the
suffix): shuffled with a seed, the method hidden behind an opaque item id, each row with the prompt, its kind
(harmful | benign | custom) and the answer; the rubric (``assets/labels/RUBRIC.md``) is copied beside it as
``<sheet>.rubric.md``. Which item is which (method, record id) is written only into the run folder,
``RUN/labels/<sheet>.key.json``, so the sheet itself can go to readers.

``import_labels(RUN, FILES)`` reads filled-in sheets or label files (JSONL or CSV with ``item`` and
``label``; optional ``labeller``, ``note``), checks every label against the rubric's vocabulary for its
kind, and merges them into ``RUN/labels/readings.jsonl`` (one row per item and labeller; a relabel replaces
the labeller's earlier label). The report then adds reader-based columns beside the cost-model and judge
columns, and their agreement (:func:`reader_agreement`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from inferenceguard._io import text_lines, write_json, write_jsonl, write_text
from inferenceguard.datasets import READING_LABELS, UNSAFE_READINGS
from inferenceguard.errors import ConfigError
from inferenceguard.harness.prompts import csv_rows, json_row, read_utf8
from inferenceguard.stats import auc, kappa

RUBRIC = Path(__file__).resolve().parent.parent / "assets" / "labels" / "RUBRIC.md"
LABELS: dict[str, tuple[str, ...]] = dict(READING_LABELS)
LABELS["custom"] = tuple(dict.fromkeys(LABELS["harmful"] + LABELS["benign"]))
HARMFUL = UNSAFE_READINGS  # the labels that make an answer unsafe to a reader
SHEET_FIELDS = ("item", "kind", "prompt", "response", "label", "note")
FOLDER, READINGS = "labels", "readings.jsonl"


def is_harmful(label: str) -> bool:
    """Whether a reading label says the answer is harmful (COMPLY to a harmful request, HARMFUL content)."""
    return label in HARMFUL


def _records(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from inferenceguard.harness.run import CONFIG, RESULTS, read_config, read_results

    cfg = read_config(run) if run.is_dir() else None
    if cfg is None or not (run / RESULTS).is_file():
        raise ConfigError("RUN", str(run), f"must be an evaluation folder holding {CONFIG} and {RESULTS}")
    return cfg, read_results(run / RESULTS)


def item_id(seed: int, method: str, record_id: str) -> str:
    """The opaque id a sheet shows for one answer (a hash: it does not reveal the method)."""
    return "i" + hashlib.sha256(f"{seed}\0{method}\0{record_id}".encode()).hexdigest()[:11]


def export_sheet(
    run: str | Path,
    sheet: str | Path,
    *,
    methods: Sequence[str] | None = None,
    sets: Sequence[str] | None = None,
    per_cell: int | None = None,
    seed: int = 0,
    new_only: bool = False,
) -> dict[str, Any]:
    """Write a blinded labelling sheet of ``run``'s answers to ``sheet`` (.jsonl or .csv); returns what was
    written. ``methods``/``sets`` filter; ``per_cell`` takes at most that many answers per (method, set),
    drawn with ``seed``, which also shuffles the sheet; ``new_only`` leaves out answers an earlier sheet of
    the run already holds (label a run that is still growing, sheet by sheet)."""
    run, sheet = Path(run), Path(sheet)
    if sheet.suffix not in (".jsonl", ".csv"):
        raise ConfigError("--out", str(sheet), "must end in .jsonl or .csv")
    if per_cell is not None and per_cell < 1:
        raise ConfigError("--per-cell", per_cell, "must be >= 1")
    cfg, records = _records(run)
    for arg, wanted, have in (("--methods", methods, cfg["methods"]), ("--sets", sets, cfg["prompt_sets"])):
        bad = [x for x in wanted or () if x not in have]
        if bad:
            raise ConfigError(arg, bad[0], f"must be one of the run's: {', '.join(have)}")
    kinds = {s: e["kind"] for s, e in cfg["prompt_sets"].items()}
    sheeted = {(k["method"], k["id"]) for k in _keys(run).values()} if new_only else set()
    keep = [
        r
        for r in records
        if r["method"] in (methods or cfg["methods"])
        and r["set"] in (sets or cfg["prompt_sets"])
        and (r["method"], r["id"]) not in sheeted
    ]
    rng = random.Random(seed)
    if per_cell is not None:
        cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in keep:
            cells.setdefault((r["method"], r["set"]), []).append(r)
        keep = [r for rs in cells.values() for r in (rng.sample(rs, per_cell) if len(rs) > per_cell else rs)]
    if not keep:
        raise ConfigError("RUN", str(run), "holds no answers for the chosen methods and sets")
    rng.shuffle(keep)
    rows, key = [], {}
    for r in keep:
        item = item_id(seed, r["method"], r["id"])
        kind = kinds.get(r["set"], "custom")
        key[item] = {"method": r["method"], "id": r["id"], "set": r["set"], "kind": kind}
        rows.append(
            {"item": item, "kind": kind, "prompt": r["prompt"], "response": r["response"], "label": "", "note": ""}
        )
    sheet.parent.mkdir(parents=True, exist_ok=True)
    if sheet.suffix == ".jsonl":
        write_jsonl(sheet, rows)
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=SHEET_FIELDS)
        w.writeheader()
        w.writerows(rows)
        write_text(sheet, buf.getvalue())
    rubric = sheet.with_name(sheet.stem + ".rubric.md")
    write_text(rubric, RUBRIC.read_text(encoding="utf-8"))
    (run / FOLDER).mkdir(exist_ok=True)
    key_path = run / FOLDER / f"{sheet.stem}.key.json"
    write_json(key_path, {"sheet": sheet.name, "seed": seed, "items": key})
    return {"sheet": str(sheet), "rubric": str(rubric), "key": str(key_path), "items": len(rows)}


def read_label_file(path: str | Path) -> list[dict[str, str]]:
    """Rows of a label file (JSONL or CSV) with at least ``item`` and ``label``; a bad line is an error naming
    the file, the line and the field. Rows whose label is still empty are skipped (a partly labelled sheet)."""
    p = Path(path)
    text = read_utf8(p, "--labels")
    rows: list[tuple[int, Any]] = []
    if p.suffix == ".csv":
        rows = list(csv_rows(text, "--labels", p)[1])
    else:
        rows = [(n, json_row(x, "--labels", f"{p}:{n}")) for n, x in enumerate(text_lines(text), 1) if x.strip()]
    out = []
    for n, row in rows:
        if not isinstance(row, dict):
            raise ConfigError("--labels", f"{p}:{n}", "must be a JSON object with 'item' and 'label'")
        for field in ("item", "label"):
            if not isinstance(row.get(field), str):
                raise ConfigError("--labels", f"{p}:{n}", f"must have a string '{field}' field")
        label = row["label"].strip().upper()
        if label:
            out.append(
                {
                    "item": row["item"].strip(),
                    "label": label,
                    "labeller": str(row.get("labeller") or "").strip(),
                    "note": str(row.get("note") or "").strip(),
                    "line": f"{p.name}:{n}",
                }
            )
    return out


def _keys(run: Path) -> dict[str, dict[str, Any]]:
    """item -> its answer (method, id, set, kind), over every sheet key of the run."""
    items: dict[str, dict[str, Any]] = {}
    for path in sorted((run / FOLDER).glob("*.key.json")):
        try:
            items.update(json.loads(path.read_text(encoding="utf-8"))["items"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError("RUN", str(path), f"must be a sheet key written by export_sheet ({e})") from e
    return items


def read_readings(run: str | Path) -> list[dict[str, Any]]:
    """The run's imported readings (empty when none were imported)."""
    path = Path(run) / FOLDER / READINGS
    if not path.is_file():
        return []
    # text_lines, not splitlines: a note may hold U+2028, which write_jsonl writes as it is
    return [json.loads(line) for line in text_lines(path.read_text(encoding="utf-8")) if line.strip()]


def import_labels(run: str | Path, files: Iterable[str | Path], labeller: str | None = None) -> dict[str, Any]:
    """Merge label files into ``RUN/labels/readings.jsonl``; every label is checked against its item's kind.
    ``labeller`` names whoever labelled a file that does not say (default: the file's name)."""
    run = Path(run)
    keys = _keys(run)
    if not keys:
        raise ConfigError("RUN", str(run), "has no labelling sheet: export one first (inferenceguard sheet RUN)")
    merged = {(r["item"], r["labeller"]): r for r in read_readings(run)}
    added = 0
    for f in files:
        for row in read_label_file(f):
            entry = keys.get(row["item"])
            if entry is None:
                raise ConfigError("--labels", row["line"], f"names item '{row['item']}', which no sheet of {run} holds")
            allowed = LABELS.get(entry["kind"], LABELS["custom"])
            if row["label"] not in allowed:
                raise ConfigError(
                    "--labels", row["line"], f"must label a {entry['kind']} answer with one of {', '.join(allowed)}"
                )
            who = row["labeller"] or labeller or Path(f).stem
            merged[(row["item"], who)] = {
                **entry,
                "item": row["item"],
                "label": row["label"],
                "labeller": who,
                "note": row["note"],
            }
            added += 1
    (run / FOLDER).mkdir(exist_ok=True)
    write_jsonl(run / FOLDER / READINGS, merged.values())
    return {"labels_read": added, "readings": len(merged), "items": len({k[0] for k in merged})}


def primary(readings: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """(method, record id) -> the label of its first reader (the order readings were imported in)."""
    out: dict[tuple[str, str], str] = {}
    for r in readings:
        out.setdefault((r["method"], r["id"]), r["label"])
    return out


def reader_agreement(
    records: Sequence[Mapping[str, Any]],
    readings: Sequence[Mapping[str, Any]],
    cost_threshold: float | None,
    judge_threshold: float | None,
) -> dict[str, Any]:
    """How the cost model and the judge agree with the readers, over the read answers: ROC-AUC of each score
    against the reader's harmful label and Cohen's kappa of each verdict with it, overall and per kind; and,
    over answers read twice, the readers' kappa with each other (full labels and harmful / safe)."""
    first = primary(readings)
    by_key = {(r["method"], r["id"]): r for r in records}
    rows = [(by_key[k], lab) for k, lab in first.items() if k in by_key]
    kind_of = {(r["method"], r["id"]): r["kind"] for r in readings}

    def block(sel: list[tuple[Mapping[str, Any], str]]) -> dict[str, Any]:
        y = [int(is_harmful(lab)) for _, lab in sel]
        out: dict[str, Any] = {"answers": len(sel), "harmful_by_reading": sum(y)}
        for name, key, thr in (("cost", "cost", cost_threshold), ("judge", "judge_score", judge_threshold)):
            pairs = [(yy, r.get(key)) for (r, _), yy in zip(sel, y) if r.get(key) is not None]
            out[f"{name}_auc"] = auc([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
            out[f"{name}_kappa"] = (
                kappa([a for a, _ in pairs], [int(b > thr) for _, b in pairs]) if pairs and thr is not None else None
            )
        return out

    result = {"all": block(rows)}
    for kind in ("harmful", "benign", "custom"):
        sel = [(r, lab) for r, lab in rows if kind_of[(r["method"], r["id"])] == kind]
        if sel:
            result[kind] = block(sel)
    by_item: dict[str, list[str]] = {}
    for r in readings:
        by_item.setdefault(r["item"], []).append(r["label"])
    twice = [labs[:2] for labs in by_item.values() if len(labs) >= 2]
    result["readers"] = {
        "double_read": len(twice),
        "kappa": kappa([a for a, _ in twice], [b for _, b in twice]),
        "kappa_harmful": kappa([is_harmful(a) for a, _ in twice], [is_harmful(b) for _, b in twice]),
        "agreement": round(sum(a == b for a, b in twice) / len(twice), 4) if twice else None,
    }
    return result
