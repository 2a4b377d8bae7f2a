"""Prompt sources: user files (one prompt per line, JSONL with a ``prompt`` field, CSV with a ``prompt`` column)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from inferenceguard.errors import ConfigError


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
