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
