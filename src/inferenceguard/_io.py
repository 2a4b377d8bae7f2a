"""The one atomic write: a temporary file in the target's folder, flushed and fsynced, then renamed over the
target; on any failure the temporary file is removed and the target is untouched. Everything the package
writes that a crash must not leave half-written (heads, critics, manifests, configs, shards, indexes, label
files) goes through here."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, fsync it, make it world-readable (a shipped
    asset must be) and rename it over ``path``; returns ``path``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) written atomically to ``path``."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any, sort_keys: bool = False) -> Path:
    """``data`` as indented JSON (no NaN), written atomically."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False) + "\n"
    return write_text(path, text)


def write_jsonl(path: str | Path, rows: Any) -> Path:
    """One JSON object per line, written atomically."""
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
