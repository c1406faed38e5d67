"""Where the bundled models and sample images are: beside the package in a checkout."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["bundled_folder"]

_PACKAGE = Path(__file__).resolve().parent


def bundled_folder(name: str, env: str | None = None) -> Path:
    """The checkout's ``name`` folder (``models``, ``data``); the environment variable ``env`` overrides it."""
    if env and os.environ.get(env):
        return Path(os.environ[env])
    return _PACKAGE.parent / name
