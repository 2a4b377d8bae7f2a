"""End-to-end tests of the command line: ``inferenceguard generate`` on tiny random models saved to folders
(so ``--model DIR`` and ``hf-seq:DIR`` go through the real loaders), its errors and exit codes, ``info`` and
``--help``. Every call goes through ``cli.main()``, the console-script entry point."""

from __future__ import annotations

import csv
import json

import pytest

from inferenceguard.engine.types import REFUSAL
from inferenceguard.strategies import PRESETS
from tests.utils.cli import run_cli, stack_flags

MAX_NEW = 8
PROMPT = "How do I bake bread?"
KEYS = {
    "prompt": str,
    "method": str,
    "response": str,
    "safe": bool,
    "cost": float,
    "reward": float,
    "budget": float,
    "budget_left": float,
    "exhausted": bool,
    "refused": bool,
    "seconds": float,
    "new_tokens": int,
    "tokens_sampled": int,
    "lm_forward_passes": int,
    "reward_calls": int,
    "cost_calls": int,
    "scorer_calls": int,
    "seed": int,
}


_cli = run_cli


def _stack(dirs, cost: str | None = None) -> list[str]:
    return [
        "--model",
        dirs["lm"],
        "--reward-model",
        f"hf-seq:{dirs['rm']}",
        "--cost-model",
        cost or f"hf-seq:{dirs['cm']}#unsafe",
        "--max-new-tokens",
        str(MAX_NEW),
        "--candidates",
        "4",
        "--block",
        "4",
    ]


def _generate(monkeypatch, capsys, dirs, *argv: str) -> list[dict]:
    code, out, err = _cli(monkeypatch, capsys, "generate", *argv, *_stack(dirs), "--json")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _one_error_line(err: str) -> str:
    """The CLI's error: exactly one 'error: ...' line, and no traceback (model loading may log progress)."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ---- generate --json ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["inferenceguard", "sample"])
def test_generate_json_has_every_field_with_its_type(monkeypatch, capsys, dirs, method):
    # flag on exhaustion: the tiny cost classifier often leaves no safe candidate, and a refusal has no tokens
    [r] = _generate(monkeypatch, capsys, dirs, PROMPT, "--method", method, "--on-exhausted", "flag")
    for key, typ in KEYS.items():
        assert isinstance(r[key], typ), (key, r[key])
    assert r["prompt"] == PROMPT and r["method"] == method and r["seed"] == 0
    assert 0 <= r["new_tokens"] <= MAX_NEW and r["seconds"] >= 0 and r["lm_forward_passes"] >= 1
    assert r["scorer_calls"] == r["reward_calls"] + r["cost_calls"] >= 1
    assert r["budget"] == 0.5  # no --budget: the 2-label cost classifier's threshold
    assert r["safe"] == (r["budget_left"] >= 0) and 0 < r["cost"] < 1  # cost: P(unsafe)
    if method == "sample":  # one candidate, whatever --candidates says
        assert r["tokens_sampled"] == r["new_tokens"]
    else:  # 4 candidates per 4-token block: the search sampled far more than it kept
        assert r["tokens_sampled"] >= 4 * r["new_tokens"] > 0 and r["cost_calls"] >= 4


def test_same_seed_same_answer_and_the_seed_matters(monkeypatch, capsys, dirs):
    def run(seed: int) -> dict:
        [r] = _generate(monkeypatch, capsys, dirs, PROMPT, "--seed", str(seed), "--on-exhausted", "flag")
        return {k: r[k] for k in ("response", "cost", "reward", "new_tokens", "seed")}

    first = run(0)
    assert run(0) == first
    assert any(run(s)["response"] != first["response"] for s in (1, 2))


def test_budget_and_exhaustion_policy_reach_the_search(monkeypatch, capsys, dirs):
    # a budget above any probability: every candidate is admissible and the answer is safe
    [loose] = _generate(monkeypatch, capsys, dirs, PROMPT, "--budget", "5")
    assert loose["budget"] == 5.0 and loose["safe"] and not loose["exhausted"] and loose["budget_left"] > 4
    # a budget below any probability: nothing is admissible, and 'refuse' replaces the answer
    [tight] = _generate(monkeypatch, capsys, dirs, PROMPT, "--budget", "1e-6", "--on-exhausted", "refuse")
    assert tight["exhausted"] and tight["refused"] and not tight["safe"] and tight["response"] == REFUSAL
    [flagged] = _generate(monkeypatch, capsys, dirs, PROMPT, "--budget", "1e-6", "--on-exhausted", "flag")
    assert flagged["exhausted"] and not flagged["refused"] and not flagged["safe"] and flagged["response"] != REFUSAL


# ---- --prompts FILE ----------------------------------------------------------------------------------------------


PROMPTS = ["Tell me a joke.", "What is 2 + 2?", 'Say "hi" in French.']


def _write_prompts(path, kind: str):
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)) + "\n")
    elif kind == "csv":
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "prompt"])
            w.writerows(enumerate(PROMPTS))
    else:
        path.write_text(f"{PROMPTS[0]}\n\n  {PROMPTS[1]}  \n{PROMPTS[2]}\n")  # blank lines and padding dropped


@pytest.mark.parametrize("kind", ["jsonl", "txt", "csv"])
def test_prompts_file_gives_one_json_line_per_prompt_in_order(monkeypatch, capsys, dirs, tmp_path, kind):
    path = tmp_path / f"prompts.{kind}"
    _write_prompts(path, kind)
    # batch size 2: the third prompt runs in a second batch and must still come out third
    rows = _generate(monkeypatch, capsys, dirs, "--prompts", str(path), "--method", "sample", "--batch-size", "2")
    assert [r["prompt"] for r in rows] == PROMPTS
    assert all(r["method"] == "sample" and 0 <= r["new_tokens"] <= MAX_NEW for r in rows)


def test_a_jsonl_row_may_carry_a_conversation(monkeypatch, capsys, dirs, tmp_path):
    """'messages' reaches the LM whole (its prompt tokens count every turn) and names the answer by its last
    user turn, as the server's chat endpoint does."""
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": chat}) + "\n" + json.dumps({"prompt": "Tell me a joke."}) + "\n")
    code, out, err = _cli(monkeypatch, capsys, "generate", "--prompts", str(path), *_stack(dirs), "--json")
    assert code == 0, err
    chat_row, plain_row = (json.loads(line) for line in out.splitlines())
    assert chat_row["prompt"] == plain_row["prompt"] == "Tell me a joke."
    assert chat_row["extra"]["prompt_tokens"] > plain_row["extra"]["prompt_tokens"]


def test_generate_leaves_the_block_of_best_of_n_alone(monkeypatch, capsys, dirs):
    """One rule for overrides (strategies.preset), as eval and the server apply it: --block does not reach
    Best-of-N's one whole-response step (before this rule, generate made it block-wise)."""
    with_block = _generate(monkeypatch, capsys, dirs, PROMPT, "--method", "bon")  # _stack passes --block 4
    code, out, err = _cli(monkeypatch, capsys, "generate", PROMPT, "--method", "bon", *_stack(dirs)[:-2], "--json")
    assert code == 0, err
    [without] = [json.loads(line) for line in out.splitlines()]
    assert with_block[0]["response"] == without["response"]
    assert with_block[0]["tokens_sampled"] == without["tokens_sampled"]


# ---- readable output ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "verdict"),
    [("5", "SAFE"), ("1e-6", "UNSAFE (refused)")],  # InferenceGuard fails closed by default
    ids=["safe", "unsafe"],
)
def test_readable_output_shows_the_verdict_and_the_response(monkeypatch, capsys, dirs, budget, verdict):
    monkeypatch.setenv("COLUMNS", "200")  # room for the whole subtitle
    prompt = "What do [/] and [bold]x[/bold] mean?"  # rich markup in a prompt must print literally
    [r] = _generate(monkeypatch, capsys, dirs, prompt, "--budget", budget)
    code, out, err = _cli(monkeypatch, capsys, "generate", prompt, "--budget", budget, *_stack(dirs))
    assert code == 0, err
    assert verdict in out and ("UNSAFE" in out) == (verdict != "SAFE")
    assert prompt in out and f"budget left {r['budget_left']:.3f}/{r['budget']:g}" in out
    words = "".join(c if c.isprintable() else " " for c in r["response"]).split()
    assert words and all(w in out for w in words)  # the same seed's answer, as --json gave it


# ---- bad input ---------------------------------------------------------------------------------------------------


EARLY = [
    pytest.param(["", "--method", "sample"], "'prompt'", "non-empty", id="empty-prompt"),
    pytest.param(["   "], "'prompt'", "non-empty", id="blank-prompt"),
    pytest.param([], "'prompt'", "--prompts FILE", id="no-prompt"),
    pytest.param(["hi", "--prompts", "{good}"], "'prompt'", "not both", id="prompt-and-file"),
    pytest.param(["--prompts", "{missing}"], "'--prompts'", "readable file", id="missing-file"),
    pytest.param(["--prompts", "{blank}"], "'--prompts'", "at least one", id="file-without-prompts"),
    pytest.param(["--prompts", "{badjson}"], "'--prompts'", "JSON", id="file-bad-jsonl"),
    pytest.param(["--prompts", "{badchat}"], "'--prompts'", "'messages[0]'", id="file-bad-message"),
    pytest.param(["--prompts", "{nouser}"], "'--prompts'", "a user message", id="file-chat-without-user"),
    pytest.param(["--prompts", "{both}"], "'--prompts'", "not both", id="file-prompt-and-messages"),
    pytest.param(["hi", "--budget", "0"], "'--budget'", "> 0", id="budget-0"),
    pytest.param(["hi", "--budget", "-1"], "'--budget'", "> 0", id="budget-negative"),
    pytest.param(["hi", "--candidates", "4", "--beams", "8"], "'--beams'", "candidates (4)", id="beams>candidates"),
    pytest.param(["hi", "--block", "0"], "'--block'", ">= 1", id="block-0"),
    pytest.param(["hi", "--candidates", "0"], "'--candidates'", ">= 1", id="candidates-0"),
    pytest.param(["hi", "--max-new-tokens", "0"], "'--max-new-tokens'", ">= 1", id="max-new-tokens-0"),
    pytest.param(["hi", "--temperature", "0"], "'--temperature'", "> 0", id="temperature-0"),
    pytest.param(["hi", "--top-p", "0"], "'--top-p'", "(0, 1]", id="top-p-0"),
    pytest.param(["hi", "--top-p", "1.5"], "'--top-p'", "(0, 1]", id="top-p-big"),
    pytest.param(["hi", "--top-k", "-1"], "'--top-k'", ">= 0", id="top-k-negative"),
    pytest.param(["hi", "--min-p", "1"], "'--min-p'", "[0, 1)", id="min-p-1"),
    pytest.param(["hi", "--repetition-penalty", "0"], "'--repetition-penalty'", "> 0", id="repetition-0"),
    pytest.param(["hi", "--on-exhausted", "bogus"], "'--on-exhausted'", "'flag' or 'refuse'", id="on-exhausted"),
    pytest.param(["hi", "--method", "nope"], "'--method'", ", ".join(PRESETS), id="unknown-method"),
]


@pytest.mark.parametrize(("argv", "arg", "expected"), EARLY)
def test_bad_input_exits_2_before_loading_any_model(monkeypatch, capsys, tmp_path, argv, arg, expected):
    files = {
        "good": tmp_path / "good.txt",
        "missing": tmp_path / "missing.jsonl",
        "blank": tmp_path / "blank.txt",
        "badjson": tmp_path / "bad.jsonl",
    }
    files["good"].write_text("a prompt\n")
    files["blank"].write_text("\n   \n\n")
    files["badjson"].write_text('{"prompt": "ok"}\n{not json\n')
    for name, row in (
        ("badchat", {"messages": [{"role": "usr", "content": "hi"}]}),
        ("nouser", {"messages": [{"role": "system", "content": "hi"}]}),
        ("both", {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}),
    ):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text(json.dumps(row) + "\n")
    argv = [a.format(**files) for a in argv]
    # no such model: a command that got as far as loading would exit 1 with an asset error instead
    model = ["--model", str(tmp_path / "no-such-model")]
    code, out, err = _cli(monkeypatch, capsys, "generate", *argv, *model, "--json")
    line = _one_error_line(err)
    assert code == 2 and out == ""
    assert arg in line and expected in line, line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["generate", "hi", "--candidates", "many"], "Invalid value for '--candidates'"),
        (["generate", "hi", "--bogus"], "No such option: --bogus"),
        (["no-such-command"], "No such command"),
        ([], "Usage:"),  # no arguments: the help, as a usage error
    ],
    ids=["bad-int", "unknown-option", "unknown-command", "no-args"],
)
def test_click_usage_errors_exit_2_without_a_traceback(monkeypatch, capsys, argv, expected):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = _cli(monkeypatch, capsys, *argv)
    assert code == 2 and "Traceback" not in err and (out == "" or not argv)
    assert expected in (err if argv else out + err), err  # typer prints the no-arguments help on stdout


LATE = [
    pytest.param(["hi"], "hf-seq:{rm}", 2, ["'cost_model.threshold'", "no threshold"], id="cost-without-threshold"),
    pytest.param(["hi"], "hf-seq:{cm}", 2, ["'label'", "0=safe, 1=unsafe"], id="cost-without-label"),
    pytest.param(["hi"], "hf-seq:{cm}#toxic", 2, ["'label'", "0=safe, 1=unsafe"], id="cost-unknown-label"),
    pytest.param(["hi"], "hf-seq:", 2, ["'cost'", "must name a model"], id="cost-empty-spec"),
    pytest.param(["a" * 600], None, 2, ["'prompts[0]'", "context of 512 tokens"], id="prompt-too-long"),
    pytest.param(["hi"], "hf-seq:{missing}", 1, ["nothing-here", "could not be loaded"], id="cost-missing"),
]


@pytest.mark.parametrize(("argv", "cost", "code", "expected"), LATE)
def test_bad_models_and_prompts_found_while_loading_exit_cleanly(
    monkeypatch, capsys, dirs, tmp_path, argv, cost, code, expected
):
    spec = cost.format(missing=tmp_path / "nothing-here", **dirs) if cost else None
    got, out, err = _cli(monkeypatch, capsys, "generate", *argv, *_stack(dirs, spec), "--json")
    line = _one_error_line(err)
    assert got == code and out == ""
    assert all(e in line for e in expected), line


# ---- info, --help ------------------------------------------------------------------------------------------------


def test_info_describes_the_embedded_stack_without_loading_a_model(monkeypatch, capsys):
    from inferenceguard import critic
    from inferenceguard.models import loading

    def refuse(*a, **k):
        raise AssertionError("info must not load a model")

    for mod, name in ((loading, "load_lm"), (loading, "load_encoder"), (loading, "_from_pretrained")):
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setattr(critic, "load_critic", refuse)
    code, out, err = _cli(monkeypatch, capsys, "info", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {"base_model", "reward_model", "cost_model", "judge", "critic"} <= set(data)
    assert isinstance(data["base_model"]["name"], str) and data["base_model"]["name"]
    for key in ("reward_model", "cost_model", "judge"):
        entry = data[key]
        assert isinstance(entry["name"], str) and entry["name"], key
        assert isinstance(entry["threshold"], (int, float)) and not isinstance(entry["threshold"], bool), key
        assert isinstance(entry["heldout_auc"], float) and 0.5 < entry["heldout_auc"] <= 1, key
    for key in ("cost_model", "judge"):  # reading-labelled on-policy test rows, and the heads they replaced
        entry = data[key]
        assert entry["test_auc"]["onpolicy"] == entry["heldout_auc"] and entry["test_auc"]["onpolicy_rows"] > 200
        assert isinstance(entry["replaced_head_test_auc"]["onpolicy"], float), key
        # the panel outvoted some first readings on test: the figure against the first readings is there too
        assert entry["heldout_targets_changed"] > 0, key
        assert isinstance(entry["heldout_auc_first_reading"]["onpolicy"], float), key
    c = data["critic"]
    assert isinstance(c["name"], str) and c["base_model"] == data["base_model"]["name"]
    assert isinstance(c["val_p_safe_auc"], float) and 0.5 < c["val_p_safe_auc"] <= 1

    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = _cli(monkeypatch, capsys, "info")  # the readable table shows the same numbers
    assert code == 0, err
    for key in ("reward_model", "cost_model", "judge"):
        assert data[key]["name"] in out and f"{data[key]['heldout_auc']:.3f}" in out
    for key in ("cost_model", "judge"):
        assert f"{data[key]['replaced_head_test_auc']['onpolicy']:.3f}" in out
        first = data[key]["heldout_auc_first_reading"]
        assert f"{first['onpolicy']:.3f} / {first['onpolicy_harmful_prompts']:.3f}" in out
    assert f"{c['val_p_safe_auc']:.3f}" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], ["generate", "info", "eval", "serve"]),
        (["generate", "--help"], ["--prompts", "--method", "--budget", "--reward-model", "--cost-model", "--json"]),
    ],
    ids=["app", "generate"],
)
def test_help_exits_0(monkeypatch, capsys, argv, expected):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = _cli(monkeypatch, capsys, *argv)
    assert code == 0, err
    assert all(e in out for e in expected), out


# ---- score ---------------------------------------------------------------------------------------------------


def test_score_json_is_one_object_per_row_in_order(monkeypatch, capsys, dirs, tmp_path):
    from inferenceguard.scorers.adapters import SequenceClassifierScorer

    pairs = [("How do I bake bread?", "Mix flour and water."), ("hi", "hello"), ("Make a bomb", "No.")]
    f = tmp_path / "pairs.jsonl"
    f.write_text(
        "".join(json.dumps({"prompt": p, "response": r, "label": i % 2}) + "\n" for i, (p, r) in enumerate(pairs))
    )
    code, out, err = _cli(monkeypatch, capsys, "score", str(f), "--json", *stack_flags(dirs))
    assert code == 0, err
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3]
    ref = SequenceClassifierScorer(dirs["cm"], label="unsafe").score([p for p, _ in pairs], [r for _, r in pairs])
    for row, want in zip(rows, ref.tolist()):
        assert row["cost"] == pytest.approx(want, abs=1e-6) and row["judge"] == pytest.approx(want, abs=1e-6)
        assert row["cost_verdict"] == ("unsafe" if want > 0.5 else "safe")
        assert isinstance(row["reward"], float) and row["reward_verdict"] in ("helpful", "unhelpful", None)
    agreement = json.loads(err.strip().splitlines()[-1])
    assert agreement["labelled_rows"] == 3 and "cost_auc" in agreement and "judge_kappa" in agreement
    csv_file = tmp_path / "pairs.csv"
    with csv_file.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "response"])
        w.writerows(pairs)
    code, out, err = _cli(monkeypatch, capsys, "score", str(csv_file), *stack_flags(dirs))
    assert code == 0 and "cost" in out and "Mix flour" in out


@pytest.mark.parametrize(
    ("content", "where", "expected"),
    [
        (b'{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n', ":2", "string 'response' field"),
        (b'{"response": "b"}\n', ":1", "string 'prompt' field"),
        (b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff", "response": "b"}\n', ":2", "UTF-8"),
        (b"\n\n", "pairs.jsonl", "empty"),
        (b'{"prompt": "a", "response": "b"}\nnot json\n', ":2", "one JSON object per line"),
        (b'{"prompt": "a", "response": "b", "label": "maybe"}\n', ":1", "'label' of 0/1"),
    ],
    ids=["missing-response", "missing-prompt", "non-utf8", "empty", "bad-json", "bad-label"],
)
def test_score_bad_input_names_the_line_and_field(monkeypatch, capsys, dirs, tmp_path, content, where, expected):
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(content)
    code, _, err = _cli(monkeypatch, capsys, "score", str(f), "--json", *stack_flags(dirs))
    line = _one_error_line(err)
    assert code == 2 and where in line and expected in line, line


def test_score_refuses_an_over_long_pair(monkeypatch, capsys, dirs, tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "hi", "response": "word " * 400}) + "\n")
    code, _, err = _cli(monkeypatch, capsys, "score", str(f), *stack_flags(dirs))
    line = _one_error_line(err)
    assert code == 2 and "pairs.jsonl:1" in line and "'response'" in line, line
