"""Data loaders returning plain records: benchmarks (``benchmarks``), SFT rows (``sft``), corpus snippets (``corpus``).

Every loader has a Hub path and a local path under the configurable data dir (``MEDADAPT_DATA_DIR``, default
``../shared/data``). The offline profile reads the data dir when there is one and the Hub datasets when there is
none (``AppConfig.hub_data``, e.g. on a Space); the reference profile reads the Hub.

Every Hub dataset is read through :func:`load_hub` (``datasets.load_dataset``). ``MEDADAPT_HUB_DATASETS_DIR`` names a
folder of local copies laid out as the Hub repos are (``<owner>/<name>/`` with the repo's README ``configs`` and data
files): a repo found there is loaded from that folder by the same ``load_dataset`` call (air-gapped machines, tests).
"""
from __future__ import annotations

import os
from pathlib import Path

from medadapt.config import AppConfig, hub_reachable


HUB_DATASETS_DIR_ENV = "MEDADAPT_HUB_DATASETS_DIR"


def hub_dataset_path(repo: str) -> str:
    """``repo``, or its local copy under ``$MEDADAPT_HUB_DATASETS_DIR`` when that folder holds one."""
    root = os.environ.get(HUB_DATASETS_DIR_ENV)
    if root and (Path(root).expanduser() / repo).is_dir():
        return str(Path(root).expanduser() / repo)
    return repo


class DataNotFoundError(FileNotFoundError):
    """A data file the loader needs is missing; the message says which and how to point at it."""


class HubUnreachableError(DataNotFoundError):
    """A Hub dataset is needed (no data dir) but the Hugging Face Hub cannot be reached from this machine."""


def load_hub(repo: str, config: str | None = None, split: str = "train", streaming: bool = False):
    """``datasets.load_dataset`` of a Hub dataset repo (or its local copy, see :func:`hub_dataset_path`); a failure
    while the Hub is unreachable becomes a :class:`HubUnreachableError` that says how to use local data instead."""
    from datasets import load_dataset

    path = hub_dataset_path(repo)
    try:
        return load_dataset(path, config, split=split, streaming=streaming)
    except Exception as e:
        if path != repo or hub_reachable():
            raise
        raise HubUnreachableError(
            f"the Hub dataset {repo} is needed but the Hugging Face Hub cannot be reached ({type(e).__name__}); "
            "set MEDADAPT_DATA_DIR to the folder holding the local data (default ../shared/data next to the repo) "
            "so the offline profile reads it instead") from e


def data_file(cfg: AppConfig, *parts: str) -> Path:
    """Path of a file under the data dir, or a clear error naming the dir and the env var that sets it."""
    if not cfg.paths.data_dir:
        raise DataNotFoundError(f"no data dir is configured, so {'/'.join(parts)} cannot be read; set "
                                "MEDADAPT_DATA_DIR to the folder holding the data")
    root = cfg.paths.resolve("data_dir")
    path = root.joinpath(*parts)
    if not path.exists():
        raise DataNotFoundError(
            f"data file {path} not found; set MEDADAPT_DATA_DIR to the folder holding the data "
            f"(now {root}{'' if root.exists() else ', which does not exist'})"
        )
    return path


class DataFormatError(ValueError):
    """A data file is not in the expected format; the message names the file and line."""


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON Lines file; a bad line raises DataFormatError naming the file and line number."""
    import json

    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove that line") from e
            if not isinstance(rec, dict):
                raise DataFormatError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            out.append(rec)
    return out


def read_json(path: Path):
    """A whole JSON file; invalid JSON raises DataFormatError naming the file and position."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from e
