"""Reading environment variables as settings (stdlib only, so every module may import it)."""
from __future__ import annotations

import os


def env_flag(name: str) -> bool:
    """A boolean environment variable: on for 1/true/yes/on (any case), off when unset or anything else (``0``)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
