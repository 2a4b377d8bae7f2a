"""An OpenAI-compatible HTTP server that guards every answer (``inferenceguard serve``).

Needs the ``server`` extra (``pip install 'inferenceguard[server]'``): FastAPI, uvicorn, pydantic-settings and
prometheus-client. ``create_app(settings, guard)`` builds the app; ``ServerSettings`` is its one schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferenceguard.server.app import create_app
    from inferenceguard.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    """Import lazily, so a missing optional package fails naming the extra to install."""
    if name not in __all__:
        raise AttributeError(name)
    try:
        from inferenceguard.server import app, settings
    except ImportError as e:
        from inferenceguard.errors import need_package

        raise need_package(e.name or "fastapi", "the server", "pip install 'inferenceguard[server]'") from e
    return app.create_app if name == "create_app" else settings.ServerSettings
