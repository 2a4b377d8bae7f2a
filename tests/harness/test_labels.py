"""Reading labels: a blinded sheet out of a run, labels back in, reader columns and agreement in the report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from inferenceguard.errors import ConfigError
from inferenceguard.harness import labels as L
from inferenceguard.harness.run import RESULTS, load_sources, read_results, run_eval
from inferenceguard.report import build
from inferenceguard.stats import auc, kappa
from tests.utils.stack import tiny_stack

KW = dict(max_new_tokens=6, batch_size=2, settings={"candidates": 4, "block": 3}, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labels") / "run"
    sources = load_sources(["advbench:3", "benign:3"])
    run_eval(tiny_stack(), sources, "sample,beam-safety", out, **KW)
    return out


def _records(run: Path) -> dict[tuple[str, str], dict]:
    return {(r["method"], r["id"]): r for r in read_results(run / RESULTS)}


def test_sheet_is_blind_shuffled_and_keyed_inside_the_run(run, tmp_path):
    got = L.export_sheet(run, tmp_path / "sheet.jsonl", seed=1)
    rows = [json.loads(x) for x in (tmp_path / "sheet.jsonl").read_text().splitlines()]
    assert got["items"] == len(rows) == 12
    assert all(set(r) == set(L.SHEET_FIELDS) for r in rows)  # no method, no scores
    methods = {r["method"] for r in read_results(run / RESULTS)}
    assert not any(m in json.dumps(rows) for m in methods)
    assert (tmp_path / "sheet.rubric.md").read_text() == L.RUBRIC.read_text()
    key = json.loads((run / "labels" / "sheet.key.json").read_text())["items"]
    recs = _records(run)
    for r in rows:  # every item maps back to its answer and kind
        k = key[r["item"]]
        assert recs[(k["method"], k["id"])]["response"] == r["response"]
        assert r["kind"] == k["kind"] == ("harmful" if k["set"] == "advbench" else "benign")
    order = [(key[r["item"]]["method"], key[r["item"]]["set"]) for r in rows]
    assert order != sorted(order)  # shuffled, not grouped by method
    again = L.export_sheet(run, tmp_path / "again.csv", methods=["sample"], per_cell=2, seed=1)
    with open(tmp_path / "again.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert again["items"] == len(csv_rows) == 4 and list(csv_rows[0]) == list(L.SHEET_FIELDS)


def _label_all(run: Path, sheet: Path, out: Path, labeller: str, flip: set[str] = frozenset()) -> dict[str, str]:
    """Label a sheet by a fixed rule (harmful kind: COMPLY when the answer has a 'z', else REFUSE)."""
    rows = [json.loads(x) for x in sheet.read_text().splitlines()]
    chosen = {}
    with out.open("w") as f:
        for r in rows:
            if r["kind"] == "harmful":
                lab = "COMPLY" if ("e" in r["response"]) != (r["item"] in flip) else "REFUSE"
            else:
                lab = "HELPFUL" if len(r["response"]) > 3 else "UNHELPFUL"
            chosen[r["item"]] = lab
            f.write(json.dumps({"item": r["item"], "label": lab.lower(), "labeller": labeller}) + "\n")
    return chosen


def test_imported_labels_give_reader_columns_and_agreement(run, tmp_path):
    sheet = tmp_path / "s.jsonl"
    L.export_sheet(run, sheet, seed=2)
    first = _label_all(run, sheet, tmp_path / "a.jsonl", "reader-a")
    items = sorted(first)
    flip = set(items[:3])
    second = _label_all(run, sheet, tmp_path / "b.jsonl", "reader-b", flip=flip)
    L.import_labels(run, [tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    built = build(run)
    summary = built["summary"]
    key = json.loads((run / "labels" / "s.key.json").read_text())["items"]
    recs = _records(run)
    # reader columns of one cell, by hand from reader-a (the first imported)
    cell = [i for i, k in key.items() if k["method"] == "sample" and k["set"] == "advbench"]
    got = summary["methods"]["sample"]["advbench"]
    assert got["reader_n"] == 3
    assert got["reader_safety_rate"] == pytest.approx(sum(first[i] != "COMPLY" for i in cell) / 3)
    assert summary["methods"]["sample"]["benign"]["reader_helpful_rate"] is not None
    # agreement of the cost model with reader-a, and of the readers with each other
    y = [int(first[i] == "COMPLY") for i, k in key.items() if k["kind"] == "harmful"]
    s = [recs[(k["method"], k["id"])]["cost"] for k in key.values() if k["kind"] == "harmful"]
    agree = summary["readers"]
    assert agree["harmful"]["cost_auc"] == auc(y, s)
    assert agree["readers"]["double_read"] == 12
    assert agree["readers"]["kappa"] == kappa([first[i] for i in items], [second[i] for i in items])
    md = (run / "summary.md").read_text()
    assert "safe by reading" in md and "Agreement with the readers" in md
    # relabelling replaces the labeller's own earlier label, never another reader's
    L.import_labels(run, [tmp_path / "a.jsonl"])
    assert len(L.read_readings(run)) == 24


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"item": "nope", "label": "COMPLY"}', "names item 'nope'"),
        ('{"item": "ITEM", "label": "HELPFUL"}', "one of COMPLY, REFUSE, OTHER"),
        ('{"item": "ITEM"}', "string 'label' field"),
        ("not json", "one JSON object per line"),
    ],
)
def test_bad_label_files_name_the_line(run, tmp_path, line, match):
    sheet = tmp_path / "bad.jsonl"
    L.export_sheet(run, sheet, sets=["advbench"], seed=3)
    item = json.loads(sheet.read_text().splitlines()[0])["item"]
    f = tmp_path / "labels.jsonl"
    f.write_text(json.dumps({"item": item, "label": "REFUSE"}) + "\n" + line.replace("ITEM", item) + "\n")
    with pytest.raises(ConfigError, match=match) as e:
        L.import_labels(run, [f])
    assert "labels.jsonl:2" in str(e.value)


def test_non_utf8_label_file_and_bad_sheet_requests(run, tmp_path):
    f = tmp_path / "x.csv"
    f.write_bytes(b"item,label\n\xff\xfe,COMPLY\n")
    with pytest.raises(ConfigError, match="must be UTF-8"):
        L.read_label_file(f)
    with pytest.raises(ConfigError, match="'--methods'"):
        L.export_sheet(run, tmp_path / "s.jsonl", methods=["bon"])
    with pytest.raises(ConfigError, match=r"\.jsonl or \.csv"):
        L.export_sheet(run, tmp_path / "s.txt")


def test_new_only_sheets_leave_out_what_earlier_sheets_hold(run, tmp_path):
    run = Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("labels")))
    L.export_sheet(run, tmp_path / "first.jsonl", sets=["advbench"], seed=4)
    got = L.export_sheet(run, tmp_path / "second.jsonl", seed=4, new_only=True)
    rows = [json.loads(x) for x in (tmp_path / "second.jsonl").read_text().splitlines()]
    assert got["items"] == 6 and {r["kind"] for r in rows} == {"benign"}
