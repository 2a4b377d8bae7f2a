"""The one atomic write, and the one append: how everything the package writes reaches the disk.

- :func:`write_atomic` (and :func:`write_text`, :func:`write_json`, :func:`write_jsonl`): a temporary file in
  the target's folder, flushed and fsynced, then renamed over the target (and the folder fsynced); on any
  failure the temporary file is removed and the target is untouched. Heads, critics, manifests, configs,
  shards, indexes, label files and reports go through here, so a crash never leaves a half-written one.
- :func:`append_jsonl`: JSON records appended to a log (an evaluation's ``results.jsonl``) and fsynced; a
  failed append is cut back off, so the records before it stay exactly as they were.

A failure to write (a full disk, a read-only folder) raises :class:`~inferenceguard.errors.OutputError`, one
line naming the path, instead of an OSError traceback. A kill (SIGKILL) in mid-write can leave only a
temporary sibling named ``.NAME.XXXXXXXX.tmp``; :func:`sweep_temps` removes those when a job reopens its folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from inferenceguard.errors import OutputError

TEMP_SUFFIX = ".tmp"
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what tempfile.mkstemp makes of prefix ".NAME." and TEMP_SUFFIX


def _failed(path: Path, e: OSError) -> OutputError:
    why = e.strerror or type(e).__name__
    return OutputError(str(path), f"{why} (errno {e.errno})" if e.errno else why)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_dir(path: str | Path) -> Path:
    """``path`` as a folder (created with its parents); OutputError when it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _failed(path, e) from e
    return path


def text_lines(text: str) -> list[str]:
    """A text file's lines, split at \\n, \\r\\n or \\r only (as ``open()`` reads them). Not ``str.splitlines``,
    which also splits at U+2028, U+0085, form feeds and more: characters a JSON string or a prompt may hold
    (``json.dumps(..., ensure_ascii=False)`` writes U+2028 as it is)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, fsync it, make it world-readable (a shipped
    asset must be) and rename it over ``path``; returns ``path``. OutputError when the disk refuses."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise _failed(path, e) from e
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise _failed(path, e) from e
    except Exception as e:  # safetensors writes from Rust: a full disk is a SafetensorError, not an OSError
        if type(e).__name__ != "SafetensorError":
            raise
        raise OutputError(str(path), str(e)) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) written atomically to ``path``."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any, sort_keys: bool = False) -> Path:
    """``data`` as indented JSON (no NaN), written atomically."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False) + "\n"
    return write_text(path, text)


def jsonl(rows: Iterable[Any], ensure_ascii: bool = False) -> str:
    """One JSON object per line, each ending in a newline (non-ASCII kept as is unless ``ensure_ascii``)."""
    return "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """One JSON object per line, written atomically."""
    return write_text(path, jsonl(rows))


def append_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Append ``rows`` as JSON lines to ``path`` (created if missing) and fsync. On a failure (a full disk) the
    file is cut back to its length before the call, then OutputError: earlier records are never damaged. A
    kill can still leave a partial last line, which the readers ignore (see ``harness.run.read_results``)."""
    path = Path(path)
    data = jsonl(rows).encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise _failed(path, e) from e
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            raise _failed(path, e) from e
    finally:
        os.close(fd)


def is_temp(path: str | Path) -> bool:
    """Whether ``path`` is named as :func:`write_atomic`'s temporary files are."""
    return bool(_TEMP.match(Path(path).name))


def sweep_temps(folder: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporary files a killed :func:`write_atomic` left in ``folder``; returns them. Call it only
    where one job owns the folder (when it reopens it to resume), never while another write may be under way;
    in a folder the user chose and may share, pass ``names``: only the temporary files of those files go."""
    gone = []
    own = None if names is None else tuple(f".{n}." for n in names)
    for p in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if is_temp(p) and p.is_file() and (own is None or p.name.startswith(own)):
            with contextlib.suppress(OSError):
                p.unlink()
                gone.append(p)
    return gone
