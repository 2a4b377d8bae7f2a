"""Hostile files for the command line's readers (prompts: TXT/JSONL/CSV; the ``score`` command's pairs; reading
labels): whatever the bytes (invalid UTF-8, lone surrogates, control characters, deep nesting, huge lines,
nothing at all), a reader returns rows or raises ConfigError naming the file (and the line where there is
one), never another exception; and whatever the text, a file written the ordinary way reads back as written."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from inferenceguard.errors import ConfigError
from inferenceguard.harness.labels import read_label_file
from inferenceguard.harness.prompts import read_pair_file, read_prompt_file

# derandomised, no example database: the same cases on every run
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SUFFIXES = (".txt", ".jsonl", ".csv")
READERS = {
    "prompts": lambda p: read_prompt_file(p, arg="--prompts"),
    "prompts-messages": lambda p: read_prompt_file(p, arg="--prompts", messages=True),
    "pairs": lambda p: read_pair_file(p),
    "labels": lambda p: read_label_file(p),
}
# every character, lone surrogates included (they reach a file as CESU-like bytes or as JSON escapes)
ANY_CHAR = st.characters(codec=None, exclude_categories=())
TEXT = st.text(alphabet=ANY_CHAR, max_size=40)
SAFE_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)  # what UTF-8 can hold
NASTY = [
    b"",
    b"\n\n \t\n",
    b"\xff\xfe\x00",
    b'{"prompt": "\\ud800", "response": "\\udfff", "item": "\\ud83d", "label": "x"}\n',
    b'{"prompt": "a\xed\xa0\x80b", "response": "b"}\n',  # a lone surrogate encoded as UTF-8 bytes
    b"[" * 100_000 + b"]" * 100_000 + b"\n",  # deeper than the JSON decoder recurses
    b'{"prompt": "a", "response": "b", "n": ' + b"9" * 5000 + b"}\n",  # an integer past Python's digit limit
    b"prompt,response,item,label\n" + b'"' + b"x" * 200_000 + b'",b,i,HARMFUL\n',  # past csv's field limit
    b"prompt,response\n\x00a,\x1b[31mb\n",
    b'prompt,response\n"unterminated,b\n',
    b"x" * 2_000_000,
]


def _check(reader: str, path: Path) -> None:
    """The reader's contract: rows (a label file may have none yet: its rows are skipped until labelled), or
    ConfigError naming the file."""
    try:
        rows = READERS[reader](path)
    except ConfigError as e:
        assert str(path) in str(e), e
        return
    assert isinstance(rows, list) and (rows or reader == "labels")


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("data", NASTY, ids=range(len(NASTY)))
def test_known_hostile_files_are_read_or_refused_clearly(tmp_path, reader, suffix, data):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    _check(reader, path)


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES), reader=st.sampled_from(list(READERS)))
@example(data=b"\xed\xa0\x80\n", suffix=".txt", reader="prompts")
def test_arbitrary_bytes_are_read_or_refused_clearly(tmp_path, data, suffix, reader):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    _check(reader, path)


def _json_line(row: dict, ascii_only: bool) -> bytes:
    return (json.dumps(row, ensure_ascii=ascii_only) + "\n").encode("utf-8", "surrogatepass")


@SETTINGS
@given(
    rows=st.lists(
        st.dictionaries(st.sampled_from(["prompt", "response", "item", "label", "note", "messages"]), TEXT), max_size=4
    ),
    ascii_only=st.booleans(),
    reader=st.sampled_from(list(READERS)),
)
def test_jsonl_of_any_text_is_read_or_refused_clearly(tmp_path, rows, ascii_only, reader):
    path = tmp_path / "input.jsonl"
    path.write_bytes(b"".join(_json_line(r, ascii_only) for r in rows))
    _check(reader, path)


@SETTINGS
@given(rows=st.lists(st.tuples(SAFE_TEXT, SAFE_TEXT), min_size=1, max_size=5), ascii_only=st.booleans())
@example(rows=[("a\u2028b", "c\x85d")], ascii_only=False)  # line separators that are not newlines
@example(rows=[("a\rb", "c\x0cd\x1ce")], ascii_only=False)
def test_jsonl_written_by_json_dumps_reads_back_as_written(tmp_path, rows, ascii_only):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"".join(_json_line({"prompt": p, "response": r}, ascii_only) for p, r in rows))
    expected = [(p, r) for p, r in rows if p.strip()]
    if len(expected) < len(rows):
        with pytest.raises(ConfigError, match="non-empty 'prompt'"):
            read_pair_file(path)
    else:
        assert [(x.prompt, x.response) for x in read_pair_file(path)] == expected
    prompts = [p.strip() for p, _ in rows if p.strip()]
    if prompts:
        assert read_prompt_file(path) == prompts
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(b"".join(_json_line({"item": p, "label": r}, ascii_only) for p, r in rows))
    assert [(x["item"], x["label"]) for x in read_label_file(labels)] == [
        (p.strip(), r.strip().upper()) for p, r in rows if r.strip()
    ]


@SETTINGS
@given(rows=st.lists(st.tuples(SAFE_TEXT, SAFE_TEXT), min_size=1, max_size=5))
@example(rows=[("a\u2028b", "line one\nline two")])
@example(rows=[("a\x85b", 'say "hi"\r\n')])
def test_csv_written_by_csv_writer_reads_back_as_written(tmp_path, rows):
    rows = [(p.replace("\x00", ""), r.replace("\x00", "")) for p, r in rows]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["prompt", "response"])
    w.writerows(rows)
    path = tmp_path / "pairs.csv"
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    if all(p.strip() for p, _ in rows):
        assert [(x.prompt, x.response) for x in read_pair_file(path)] == rows
    prompts = [p.strip() for p, _ in rows if p.strip()]
    if prompts:
        assert read_prompt_file(path) == prompts


@SETTINGS
@given(lines=st.lists(SAFE_TEXT, min_size=1, max_size=6))
@example(lines=["one\u2028still one", "two\x0cstill two", "three\x85"])
def test_a_text_file_holds_one_prompt_per_line(tmp_path, lines):
    lines = [x.replace("\r", " ").replace("\n", " ") for x in lines]
    path = tmp_path / "prompts.txt"
    path.write_bytes("\n".join(lines).encode("utf-8"))
    prompts = [x.strip() for x in lines if x.strip()]
    if prompts:
        assert read_prompt_file(path) == prompts
    else:
        with pytest.raises(ConfigError, match="non-empty"):
            read_prompt_file(path)


HOSTILE_LINES = st.sampled_from([d for d in NASTY if d.strip()]) | st.binary(min_size=1, max_size=200)


@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=HOSTILE_LINES, command=st.sampled_from(["generate", "score", "eval"]), suffix=st.sampled_from(SUFFIXES))
def test_the_command_line_refuses_a_hostile_file_in_one_line_with_exit_2(tmp_path_factory, data, command, suffix):
    """Each command reads its file before it loads any model: a file it cannot take is exit 2, one 'error:' line
    naming the file, no traceback (and one it can take goes on to load models: not run here)."""
    from inferenceguard import cli
    from inferenceguard.harness.prompts import read_pair_file as pairs_reader

    path = tmp_path_factory.mktemp("hostile") / f"input{suffix}"
    path.write_bytes(data)
    read = pairs_reader if command == "score" else read_prompt_file
    try:
        read(path)
    except ConfigError:
        pass
    else:
        return  # a readable file: the command would load models next
    argv = {
        "generate": ["generate", "--prompts", str(path)],
        "score": ["score", str(path)],
        "eval": ["eval", "--prompts", str(path), "--methods", "sample", "--out", str(path.parent / "run")],
    }[command]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["inferenceguard", *argv])
        err = io.StringIO()
        m.setattr(sys, "stderr", err)
        with pytest.raises(SystemExit) as e:
            cli.main()
    lines = [x for x in err.getvalue().splitlines() if x.startswith("error: ")]
    assert e.value.code == 2 and len(lines) == 1 and str(path) in lines[0], err.getvalue()
    assert "Traceback" not in err.getvalue()
