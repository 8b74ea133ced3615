"""A prebuilt retrieval index from a Hub dataset repo (``rag.index_repo``, ``MEDADAPT_INDEX_REPO``).

The repo holds LanceDB tables as the index dir has them (``<table>.lance/``), e.g. uploaded with
``huggingface-cli upload USER/medadapt-index ~/.cache/medadapt/index . --repo-type dataset``. The first-run setup
copies the profile's table from the repo's snapshot (the Hub, or the Hugging Face cache offline) into the index dir
instead of embedding the corpus, so nothing heavy is built at boot.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from medadapt.config import AppConfig, hub_reachable

log = logging.getLogger(__name__)


def index_snapshot(repo_id: str, table: str) -> Path | None:
    """The local snapshot of the index repo (only the table's files downloaded), or None when it cannot be had."""
    from medadapt.hub import cached_snapshot

    if hub_reachable():
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=[f"{table}.lance/**"]))
    cached = cached_snapshot(repo_id, "dataset")
    return Path(cached) if cached else None


def pull_index(cfg: AppConfig) -> bool:
    """Copy the profile's table from ``cfg.rag.index_repo`` into the index dir; True when the table is now there.

    Any failure (no repo configured, the Hub unreachable and nothing cached, no such table in the repo) is logged
    and returns False, so the caller builds the index instead.
    """
    repo, table = cfg.rag.index_repo, cfg.rag.table
    if not repo:
        return False
    try:
        snap = index_snapshot(repo, table)
    except Exception as e:  # network or repo errors: build instead
        log.warning("prebuilt index %s could not be fetched (%s: %s); building it instead", repo, type(e).__name__, e)
        return False
    src = snap / f"{table}.lance" if snap else None
    if src is None or not src.is_dir():
        log.warning("prebuilt index %s has no table %s; building it instead", repo, table)
        return False
    from medadapt.rag_index import index_path

    dst = index_path(cfg) / f"{table}.lance"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{table}.pull-", dir=dst.parent))
    shutil.copytree(src, tmp / "t", symlinks=False)  # the Hub cache links to blobs: copy the files themselves
    if dst.exists():
        shutil.rmtree(dst)
    (tmp / "t").rename(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("prebuilt index %s: table %s copied into %s", repo, table, dst.parent)
    return True
