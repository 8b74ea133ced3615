"""Data loaders returning plain records: benchmarks (``benchmarks``), SFT rows (``sft``), corpus snippets (``corpus``).

Every loader has a Hub path (reference profile) and a local path under the configurable data dir
(``MEDADAPT_DATA_DIR``, default ``../shared/data``) used by the offline profile.
"""
from __future__ import annotations

from pathlib import Path

from medadapt.config import AppConfig


class DataNotFoundError(FileNotFoundError):
    """A data file the loader needs is missing; the message says which and how to point at it."""


def data_file(cfg: AppConfig, *parts: str) -> Path:
    """Path of a file under the data dir, or a clear error naming the dir and the env var that sets it."""
    root = cfg.paths.resolve("data_dir")
    path = root.joinpath(*parts)
    if not path.exists():
        raise DataNotFoundError(
            f"data file {path} not found; set MEDADAPT_DATA_DIR to the folder holding the data "
            f"(now {root}{'' if root.exists() else ', which does not exist'})"
        )
    return path
