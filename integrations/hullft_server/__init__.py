"""`hullft-agent serve`: an OpenAI-compatible HTTP server over the core runtime (an application).

Needs the `serve` extra (FastAPI, uvicorn, prometheus-client); the names below are imported on
first use, so `hullft-agent --help` does not load FastAPI. Nothing in the core imports this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"create_app": "hullft_server.app", "ServerConfig": "hullft_server.config",
            "parse_api_keys": "hullft_server.config"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hullft_server' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
