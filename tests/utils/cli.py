"""Running the command line in-process, as the console script does."""

from __future__ import annotations

import sys


def run_cli(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``inferenceguard ARGV`` through the console-script entry point."""
    from inferenceguard import cli

    monkeypatch.setattr(sys, "argv", ["inferenceguard", *argv])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def stack_flags(dirs) -> list[str]:
    """The flags naming the tiny on-disk stack (tests/conftest.py ``dirs``): LM, reward, cost model and judge."""
    return [
        "--model",
        dirs["lm"],
        "--reward-model",
        f"hf-seq:{dirs['rm']}",
        "--cost-model",
        f"hf-seq:{dirs['cm']}#unsafe",
        "--judge",
        f"hf-seq:{dirs['cm']}#unsafe",
    ]
