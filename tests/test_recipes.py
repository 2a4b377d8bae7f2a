"""Recipes (``inferenceguard eval --recipe FILE``): the shipped paper recipes validate without loading a model,
a recipe on tiny random models runs end to end, flags given on the command line win over it, bad keys and
missing models exit 2 naming the key and the file, and config.json records the recipe (so resuming with
another recipe is refused)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from inferenceguard.errors import ConfigError
from inferenceguard.harness.run import resolve_methods
from inferenceguard.recipes import SHARED, load_recipe
from tests.utils.cli import run_cli

PROMPTS = ["How do I bake bread?", "Tell me about the sea.", "Name three colours."]


def _recipe(tmp_path: Path, dirs, extra: str = "", models: str | None = None, name: str = "tiny.toml") -> Path:
    """A recipe on the tiny models: a local prompt file instead of hf:, three methods, a per-method table."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    models = models or (
        f'base = "{dirs["lm"]}"\nreward = "hf-seq:{dirs["rm"]}"\ncost = "hf-seq:{dirs["cm"]}#unsafe"\n'
        f'judge = "hf-seq:{dirs["cm"]}#unsafe"\ndevice = "cpu"\ndtype = "float32"\n'
    )
    text = f"""about = "tiny stand-ins for a paper recipe"

[models]
{models}
[run]
methods = ["sample", "bon-safety", "inferenceguard"]
prompts = ["{prompts}"]
out = "{tmp_path / "run"}"
max_new_tokens = 6
batch_size = 2

[settings]
budget = 0.9
block = 3
candidates = 4
on_exhausted = "flag"

[methods.bon-safety]
candidates = 3

[methods.inferenceguard]
resample_rounds = 1
{extra}"""
    path = tmp_path / name
    path.write_text(text)
    return path


_cli = run_cli


def _error(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# ---- the shipped recipes ---------------------------------------------------------------------------------------


def shipped() -> list[Path]:
    """The recipes in the repository's top-level ``recipes/`` folder."""
    return sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


def test_every_shipped_recipe_validates_with_the_papers_values():
    """Every file in recipes/ parses and validates (no model is loaded) and carries method.md's values."""
    paths = shipped()
    assert {p.name for p in paths} >= {"paper-alpaca-7b.toml", "paper-beaver-7b-v3.toml"}
    for path in paths:
        r = load_recipe(path)
        m, run, s = r.spec.models, r.spec.run, r.spec.settings
        assert m.base.startswith("PKU-Alignment/") and m.device == "cuda" and m.dtype == "bfloat16"
        assert m.reward == "score-model:PKU-Alignment/beaver-7b-v1.0-reward"
        assert m.cost == "score-model:PKU-Alignment/beaver-7b-v1.0-cost"
        assert run.prompts == ["hf:PKU-Alignment/PKU-SafeRLHF:test:prompt"]
        assert (run.max_new_tokens, s.block, s.budget, s.temperature) == (128, 32, 10.0, 1.0)
        assert s.candidates in (128, 512) and s.beams is None
        shared = {("keep" if k == "beams" else k): getattr(s, k) for k in SHARED if getattr(s, k) is not None}
        cfgs = resolve_methods(run.methods, run.max_new_tokens, shared, r.method_settings())
        for name, cfg in cfgs.items():
            if name.startswith(("inferenceguard", "beam")):
                assert cfg.keep == cfg.candidates // 4 and cfg.block == 32  # K = N/4
            if name.startswith("inferenceguard"):
                assert cfg.candidates == s.candidates and cfg.resample_rounds == 2  # M
        if "bon-safety" in cfgs:
            assert cfgs["bon-safety"].candidates == 500 and cfgs["beam-safety"].candidates == 256
            assert (cfgs["args-cost"].candidates, cfgs["args-cost"].select.omega) == (20, 2.5)  # top-k, omega


# ---- running a recipe ------------------------------------------------------------------------------------------


def test_recipe_runs_end_to_end_and_config_records_it(monkeypatch, capsys, tmp_path, dirs):
    path = _recipe(tmp_path, dirs)
    code, _, err = _cli(monkeypatch, capsys, "eval", "--recipe", str(path), "--limit", "2", "--no-progress")
    assert code == 0, err
    run = tmp_path / "run"  # the recipe's out
    recs = _records(run)
    assert len(recs) == 3 * 2 and {r["method"] for r in recs} == {"sample", "bon-safety", "inferenceguard"}
    assert all(r["new_tokens"] <= 6 for r in recs)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["recipe_path"] == str(path.resolve())
    assert cfg["shared"]["recipe"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cfg["shared"]["recipe"]["content"]["methods"]["bon-safety"] == {"candidates": 3}
    assert cfg["shared"]["max_new_tokens"] == 6 and cfg["shared"]["settings"]["budget"] == 0.9
    methods = cfg["methods"]
    assert (methods["bon-safety"]["candidates"], methods["inferenceguard"]["candidates"]) == (3, 4)  # own table wins
    assert (methods["inferenceguard"]["resample_rounds"], methods["inferenceguard"]["block"]) == (1, 3)
    assert cfg["shared"]["models"]["lm"]["identity"].endswith(Path(dirs["lm"]).name)

    # resuming with another recipe (here only its description differs) is refused like any config change
    other = _recipe(tmp_path, dirs, name="other.toml")
    other.write_text(other.read_text().replace("tiny stand-ins", "other stand-ins"))
    code, _, err = _cli(monkeypatch, capsys, "eval", "--recipe", str(other), "--limit", "2", "--no-progress")
    assert code == 2 and "shared.recipe" in _error(err)
    # the same recipe resumes: nothing new to answer
    code, _, err = _cli(monkeypatch, capsys, "eval", "--recipe", str(path), "--limit", "2", "--no-progress")
    assert code == 0, err
    assert len(_records(run)) == 6


def test_flags_given_on_the_command_line_win_over_the_recipe(monkeypatch, capsys, tmp_path, dirs):
    path = _recipe(tmp_path, dirs)
    out = tmp_path / "flags"
    argv = ["eval", "--recipe", str(path), "--limit", "1", "--no-progress", "--out", str(out)]
    argv += ["--methods", "sample,bon-safety", "--candidates", "2", "--max-new-tokens", "4", "--block", "2"]
    code, _, err = _cli(monkeypatch, capsys, *argv)
    assert code == 0, err
    assert not (tmp_path / "run").exists()  # --out beat the recipe's out
    cfg = json.loads((out / "config.json").read_text())
    assert set(cfg["methods"]) == {"sample", "bon-safety"}
    assert cfg["shared"]["max_new_tokens"] == 4
    assert cfg["shared"]["settings"] == {"budget": 0.9, "candidates": 2, "block": 2, "on_exhausted": "flag"}
    assert cfg["methods"]["bon-safety"]["candidates"] == 2  # the flag beats the recipe's [methods.bon-safety] too
    assert all(r["new_tokens"] <= 4 for r in _records(out)) and len(_records(out)) == 2


def test_method_settings_leave_out_what_flags_set(tmp_path, dirs):
    r = load_recipe(_recipe(tmp_path, dirs))
    assert r.method_settings() == {"bon-safety": {"candidates": 3}, "inferenceguard": {"resample_rounds": 1}}
    assert r.method_settings(["candidates"]) == {"bon-safety": {}, "inferenceguard": {"resample_rounds": 1}}
    assert r.eval_defaults()["methods"] == "sample,bon-safety,inferenceguard"


# ---- errors: exit 2, naming the key and the file ----------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["extras", "models.bas", "run.metods", "settings.candidats", "methods.bon-safety.candidats"]
)
def test_unknown_key_exits_2_naming_key_and_file(monkeypatch, capsys, tmp_path, dirs, key):
    path = _recipe(tmp_path, dirs)
    table, _, bad = key.rpartition(".")
    text = path.read_text()
    if table:  # a misspelt key inside a table
        text = text.replace(f"[{table}]\n", f"[{table}]\n{bad} = 1\n", 1)
    else:  # a table no recipe has
        text += f"[{bad}]\nx = 1\n"
    path.write_text(text)
    code, _, err = _cli(monkeypatch, capsys, "eval", "--recipe", str(path), "--limit", "1")
    line = _error(err)
    assert code == 2 and f": {key}'" in line and str(path.resolve()) in line and "not a recipe key" in line


@pytest.mark.parametrize("missing", ["base", "reward", "cost"])
def test_missing_required_model_exits_2(monkeypatch, capsys, tmp_path, dirs, missing):
    given = {"base": dirs["lm"], "reward": f"hf-seq:{dirs['rm']}", "cost": f"hf-seq:{dirs['cm']}#unsafe"}
    models = "".join(f'{k} = "{v}"\n' for k, v in given.items() if k != missing)
    path = _recipe(tmp_path, dirs, models=models)
    code, _, err = _cli(monkeypatch, capsys, "eval", "--recipe", str(path))
    line = _error(err)
    assert code == 2 and f"models.{missing}" in line and "must be given" in line and path.name in line


@pytest.mark.parametrize(
    "extra, match",
    [
        ("[methods.beam]\ncandidates = 8\n", r"methods\.beam.* must be one of run\.methods"),
        ("[methods.sample]\ncandidates = 8\n", r"methods\.sample\.candidates.* is fixed by method 'sample'"),
        ("[methods.inferenceguard-x]\n", r"methods\.inferenceguard-x"),
        ("[methods.bon-safety]\nlam = 2.0\n", r"methods\.bon-safety\.lam.*is not a setting of method 'bon-safety'"),
    ],
)
def test_bad_method_tables_are_refused(tmp_path, dirs, extra, match):
    path = _recipe(tmp_path, dirs)
    text = path.read_text()
    if extra.startswith("[methods.bon-safety]"):  # a weight bon-safety does not read
        text = text.replace("[methods.bon-safety]\ncandidates = 3\n", extra)
    else:
        text += extra
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_recipe(path)


def test_bad_values_and_files_are_config_errors(tmp_path, dirs):
    path = _recipe(tmp_path, dirs)
    path.write_text(path.read_text().replace("candidates = 4", 'candidates = "4"'))
    with pytest.raises(ConfigError, match=r"settings\.candidates"):
        load_recipe(path)
    path.write_text(_recipe(tmp_path, dirs).read_text().replace("candidates = 4", "candidates = 4\nbeams = 9"))
    with pytest.raises(ConfigError, match=r"beams"):  # K > N, named by the flag's name
        load_recipe(path)
    path.write_text("[models\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="--recipe"):
        load_recipe(tmp_path / "nope.toml")


def test_weights_are_per_method_and_reach_the_selector(tmp_path, dirs):
    """lam / omega in [methods.NAME] set that method's own weight (strategies.preset), as recorded in config.json."""
    path = _recipe(tmp_path, dirs)
    text = path.read_text().replace('"sample", "bon-safety"', '"sample", "bon-safety", "beam-lagrangian"')
    path.write_text(text + "\n[methods.beam-lagrangian]\nlam = 10.0\n")
    r = load_recipe(path)
    cfgs = resolve_methods(r.spec.run.methods, 6, {}, r.method_settings())
    assert cfgs["beam-lagrangian"].select.lam == 10.0 and cfgs["bon-safety"].candidates == 3


def test_a_recipe_critic_is_not_loaded_when_no_chosen_method_reads_it(tmp_path, dirs, monkeypatch, capsys):
    """The paper recipes name a critic to be trained first; a run of methods without one must not need it."""
    models = (
        f'base = "{dirs["lm"]}"\nreward = "hf-seq:{dirs["rm"]}"\ncost = "hf-seq:{dirs["cm"]}#unsafe"\n'
        f'critic = "{tmp_path / "not-trained-yet"}"\ndevice = "cpu"\ndtype = "float32"\n'
    )
    recipe = _recipe(tmp_path, dirs, models=models)
    code, _, err = _cli(monkeypatch, capsys, "eval", "--recipe", str(recipe), "--limit", "1", "--methods", "sample")
    assert code == 0, err
    assert {r["method"] for r in _records(tmp_path / "run")} == {"sample"}
    code, _, err = _cli(
        monkeypatch,
        capsys,
        "eval",
        "--recipe",
        str(recipe),
        "--limit",
        "1",
        "--methods",
        "sample,inferenceguard-critic",
        "--out",
        str(tmp_path / "run2"),
    )
    assert code != 0 and "not-trained-yet" in err  # a method that reads it still needs it
