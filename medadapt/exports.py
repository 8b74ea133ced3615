"""Where Compare exports are written, and their cleanup: one folder per export under ``<tmp>/medadapt-exports/``,
removed once older than ``EXPORT_TTL_S`` (checked at every export), so exports never pile up on a server's disk."""
from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

EXPORT_TTL_S = 3600.0  # an export link stays valid this long


def exports_root() -> Path:
    return Path(tempfile.gettempdir()) / "medadapt-exports"


def prune_exports(root: Path | None = None, ttl_s: float = EXPORT_TTL_S, now: float | None = None) -> int:
    """Remove export folders older than ``ttl_s``; returns how many were removed."""
    root = root or exports_root()
    now = time.time() if now is None else now
    removed = 0
    for folder in root.glob("*") if root.is_dir() else []:
        try:
            if now - folder.stat().st_mtime > ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


def new_export_dir(root: Path | None = None) -> Path:
    """A fresh folder for one export (older ones pruned first)."""
    root = root or exports_root()
    prune_exports(root)
    folder = root / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder
