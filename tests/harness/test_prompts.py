"""Prompt sources: packaged sets in file order, user files, Hugging Face ids, selection and stable ids."""

from __future__ import annotations

import sys

import pytest

from inferenceguard import datasets
from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.harness.prompts import PROMPT_SETS, load_prompts, prompt_id, set_kind
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
