"""inferenceguard: almost-surely safe generation at inference time (InferenceGuard, arXiv 2502.01208).

The public surface: ``from inferenceguard import Guard, load_stack, SearchConfig, PRESETS, Result`` and the
errors. The errors load with the package; the rest is imported on first use (PEP 562), so importing the package
(``inferenceguard --help``, or any module's ``from inferenceguard.errors import ...``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from inferenceguard.errors import AssetError, ConfigError, CriticMismatchError, InferenceGuardError

if TYPE_CHECKING:
    from inferenceguard.engine.types import Result, SearchConfig
    from inferenceguard.guard import Guard, load_stack
    from inferenceguard.models.loading import Message, Prompt
    from inferenceguard.strategies import PRESETS

_LAZY = {
    "Guard": "inferenceguard.guard",
    "load_stack": "inferenceguard.guard",
    "SearchConfig": "inferenceguard.engine.types",
    "Result": "inferenceguard.engine.types",
    "PRESETS": "inferenceguard.strategies",
    "Prompt": "inferenceguard.models.loading",
    "Message": "inferenceguard.models.loading",
}
"""public name -> the module that defines it (its one home)."""

__all__ = [
    "PRESETS",
    "AssetError",
    "ConfigError",
    "CriticMismatchError",
    "Guard",
    "InferenceGuardError",
    "Message",
    "Prompt",
    "Result",
    "SearchConfig",
    "load_stack",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'inferenceguard' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
