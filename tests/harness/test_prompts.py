"""Prompt sources: packaged sets in file order, user files, Hugging Face ids, selection and stable ids."""

from __future__ import annotations

import json
import sys

import pytest

from inferenceguard import datasets
from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.harness.prompts import (
    PROMPT_SETS,
    load_prompts,
    prompt_id,
    read_pair_file,
    read_prompt_file,
    set_kind,
)
from inferenceguard.harness.run import load_sources


def test_named_sets_keep_file_order_so_the_held_out_prompts_are_the_first_ones():
    name, adv = load_prompts("advbench", limit=50)
    assert name == "advbench" and [p.text for p in adv] == datasets.advbench()[:50]
    _, benign = load_prompts("benign", limit=30)
    assert [p.text for p in benign] == datasets.benign_prompts()[:30]
    assert all(p.set == "advbench" and p.id == prompt_id("advbench", p.text) for p in adv)
    assert len({p.id for p in adv}) == 50
    assert set_kind("advbench") == "harmful" and set_kind("benign") == "benign" and set_kind("mine") == "custom"


def test_every_named_set_loads():
    assert {"advbench", "harmbench", "donotanswer", "benign", "rho-benign", "rho-harmful"} <= set(PROMPT_SETS)
    for name in PROMPT_SETS:
        got_name, prompts = load_prompts(name, limit=3)
        assert got_name == name and len(prompts) == 3 and all(p.text.strip() for p in prompts)
    _, rho = load_prompts("rho-harmful", limit=2)
    assert [p.text for p in rho] == [p.harmful_prompt for p in datasets.rho_pairs()[:2]]


def test_seeded_subsample_is_fixed_and_in_source_order():
    _, a = load_prompts("harmbench", limit=10, sample_seed=7)
    _, b = load_prompts("harmbench", limit=10, sample_seed=7)
    _, c = load_prompts("harmbench", limit=10, sample_seed=8)
    full = datasets.harmbench()
    assert a == b and a != c and len(a) == 10
    idx = [full.index(p.text) for p in a]
    assert idx == sorted(idx) and idx != list(range(10))


def test_files_of_every_format(tmp_path):
    (tmp_path / "mine.txt").write_text("first prompt\n\nsecond prompt\nfirst prompt\n")
    (tmp_path / "j.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b", "x": 1}\n')
    (tmp_path / "c.csv").write_text('prompt,other\n"hello, world",1\nbye,2\n')
    name, txt = load_prompts(str(tmp_path / "mine.txt"))
    assert name == "mine" and [p.text for p in txt] == ["first prompt", "second prompt"]  # repeats dropped
    assert [p.text for p in load_prompts(str(tmp_path / "j.jsonl"))[1]] == ["a", "b"]
    assert [p.text for p in load_prompts(str(tmp_path / "c.csv"), limit=1)[1]] == ["hello, world"]
    assert prompt_id("mine", "a") != prompt_id("other", "a") and prompt_id("mine", "a") == prompt_id("mine", "a")


def test_bad_sources_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="advbench, harmbench, donotanswer, benign, rho-benign, rho-harmful"):
        load_prompts("nosuchset")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(ConfigError, match="JSON"):
        load_prompts(str(bad))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="readable"):
        load_prompts(str(binary))
    with pytest.raises(ConfigError, match="readable file"):
        load_prompts(str(tmp_path))  # a folder
    with pytest.raises(ConfigError, match="--limit"):
        load_prompts("advbench", limit=0)
    with pytest.raises(ConfigError, match="hf:NAME"):
        load_prompts("hf:")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(AssetError, match="pip install datasets"):
        load_prompts("hf:walledai/AdvBench")
    with pytest.raises(ConfigError, match="given twice"):
        load_sources(["advbench", "advbench"], limit=1)


def test_hf_dataset_offline_is_a_clear_error(monkeypatch):
    class FakeDatasets:
        @staticmethod
        def load_dataset(name, split):
            raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    with pytest.raises(AssetError, match="HF_HUB_OFFLINE"):
        load_prompts("hf:some/dataset:test:goal")

    class Table:
        column_names = ("goal", "target")

        def __getitem__(self, col):
            return {"goal": ["do a", "do b", ""], "target": ["x", "y", "z"]}[col]

    FakeDatasets.load_dataset = staticmethod(lambda name, split: Table())
    name, ps = load_prompts("hf:some/dataset:test")
    assert name == "some/dataset:test" and [p.text for p in ps] == ["do a", "do b"]
    with pytest.raises(ConfigError, match="goal, target"):
        load_prompts("hf:some/dataset:test:nope")


def test_a_set_may_carry_its_own_limit(tmp_path):
    name, adv = load_prompts("advbench:5", limit=2)
    assert name == "advbench" and len(adv) == 5
    f = tmp_path / "mine.txt"
    f.write_text("a\nb\nc\n")
    assert [p.text for p in load_prompts(f"{f}:2")[1]] == ["a", "b"]
    sources = load_sources(["advbench:3", "benign:2"], limit=10)
    assert [(s.name, len(s.prompts), s.limit) for s in sources] == [("advbench", 3, 3), ("benign", 2, 2)]
    with pytest.raises(ConfigError, match="positive prompt count"):
        load_prompts("advbench:0")
    with pytest.raises(ConfigError, match="must be a prompt set"):
        load_prompts("nosuch:3")


# ---- hostile files (issue 16): each case below raised a raw exception, or split a row, before ----------------------


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0c", "\x1c"])
def test_a_jsonl_prompt_may_hold_a_line_separator_that_is_not_a_newline(tmp_path, sep):
    """json.dumps(ensure_ascii=False) writes U+2028 and friends as they are; str.splitlines split the row there."""
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": f"one{sep}prompt"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_prompt_file(f) == [f"one{sep}prompt"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "response": f"a{sep}b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_pair_file(pairs)[0].response == f"a{sep}b"
    (tmp_path / "t.txt").write_text(f"still{sep}one line\nanother\n", encoding="utf-8")
    assert read_prompt_file(tmp_path / "t.txt") == [f"still{sep}one line", "another"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # was RecursionError
        ('{"prompt": "a", "n": ' + "9" * 5000 + "}", "digits"),  # was ValueError (Python's int digit limit)
        ('{"prompt": "\\ud800 lone"}', "lone surrogate"),  # was accepted, then a UnicodeEncodeError on hashing it
    ],
    ids=["deep", "huge-int", "surrogate"],
)
def test_jsonl_lines_json_cannot_carry_name_the_file_and_line(tmp_path, line, expected):
    for read, first in ((read_prompt_file, '{"prompt": "ok"}'), (read_pair_file, '{"prompt": "a", "response": "b"}')):
        f = tmp_path / "x.jsonl"
        f.write_text(first + "\n" + line + "\n")
        with pytest.raises(ConfigError, match=expected) as e:
            read(f)
        assert f"{f}:2" in str(e.value)


def test_a_csv_field_past_the_csv_limit_names_the_line(tmp_path):
    """Was _csv.Error (field larger than field limit) out of both readers."""
    f = tmp_path / "x.csv"
    f.write_text('prompt,response\na,b\n"' + "x" * 200_000 + '",b\n')
    for read in (read_prompt_file, read_pair_file):
        with pytest.raises(ConfigError, match="field larger than field limit") as e:
            read(f)
        assert f"{f}:3" in str(e.value)


def test_invalid_utf8_names_the_line(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"fine\nalso fine\nbad \xff here\n")
    with pytest.raises(ConfigError, match=r"byte 4 of the line") as e:
        read_prompt_file(f)
    assert f"{f}:3" in str(e.value)


def test_a_name_too_long_for_the_system_is_no_file(tmp_path):
    """Path.exists raised OSError (File name too long) out of load_prompts and training_prompts."""
    from inferenceguard.training.rollouts import training_prompts

    long = "x" * 5000
    for spec in (long, f"{long}:3", str(tmp_path / long)):
        with pytest.raises(ConfigError, match="must be"):
            load_prompts(spec)
        with pytest.raises(ConfigError, match="must be"):
            training_prompts(spec)


def test_readings_with_a_line_separator_in_a_note_read_back(tmp_path):
    """read_readings split at U+2028, which write_jsonl writes as it is: a note holding one broke the report."""
    from inferenceguard._io import write_jsonl
    from inferenceguard.harness.labels import FOLDER, READINGS, read_readings

    rows = [{"item": "i1", "label": "REFUSE", "note": "first\u2028second"}, {"item": "i2", "label": "COMPLY"}]
    (tmp_path / FOLDER).mkdir()
    write_jsonl(tmp_path / FOLDER / READINGS, rows)
    assert read_readings(tmp_path) == rows
