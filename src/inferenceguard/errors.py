"""The project's exceptions: every error a user can cause says which argument or asset is wrong and how to fix it."""

from __future__ import annotations

from typing import Any


class InferenceGuardError(Exception):
    """Base class: anything raised on purpose by inferenceguard."""


class ConfigError(InferenceGuardError, ValueError):
    """A user-supplied argument has a bad value. The CLI exits 2 and the server answers 400 with it."""

    def __init__(self, arg: str, value: Any, expected: str):
        self.arg, self.value, self.expected = arg, value, expected
        super().__init__(f"'{arg}' {expected}, got {value!r}")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # pickles whole (a Ray worker's error reaches the driver)
        return type(self), (self.arg, self.value, self.expected)


class OutputError(ConfigError):
    """A file cannot be written (a full disk, a read-only folder): ``arg`` is its path, ``value`` the reason.
    What was there before is unchanged (see ``_io``). The CLI exits 2 with it, as for any bad argument."""

    def __init__(self, arg: str, value: Any, expected: str = "must be writable; nothing there was changed"):
        super().__init__(arg, value, expected)


class AssetError(InferenceGuardError, RuntimeError):
    """A model, data file or package cannot be found or read; the message says how to get it."""


class CriticMismatchError(AssetError):
    """A critic file belongs to another base model (or hidden size) than the one it is used with."""


def need_package(package: str, purpose: str, pip_line: str | None = None) -> AssetError:
    """The error for a missing optional package, with the exact install line."""
    line = pip_line or f"pip install {package}"
    return AssetError(f"{purpose} needs the package '{package}', which is not installed. Install it with: {line}")
