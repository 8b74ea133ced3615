"""A prebuilt retrieval index on a Hub dataset repo (``rag.index_repo``, ``MEDADAPT_INDEX_REPO``): publish and pull;
and the profile's shipped table (:mod:`medadapt.shipped`) installed the same way.

The repo holds LanceDB tables as the index dir has them (``<table>.lance/``, with ``<table>.sources.json``), pushed
by ``python -m medadapt.retrieval publish USER/medadapt-index`` (:func:`publish_index`, needs ``HF_TOKEN``). The first-run setup
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


class PublishError(RuntimeError):
    """The index cannot be published (not built, no token)."""


def publish_index(cfg: AppConfig, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload the profile's built table (and its sources record) to dataset repo ``repo_id``; returns its URL."""
    import os

    from medadapt.retrieval.index import index_names, index_path, sources_file, table_exists

    token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise PublishError("set HF_TOKEN (a write token) to publish the index")
    from medadapt.retrieval.index import connect

    db = connect(cfg)
    if not table_exists(db, cfg.rag.table) or "FTS" not in index_names(db.open_table(cfg.rag.table)):
        raise PublishError(f"table {cfg.rag.table!r} is not built in {index_path(cfg)}: run "
                           f"`python -m medadapt.retrieval build --profile {cfg.profile}` first")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    table = f"{cfg.rag.table}.lance"
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(index_path(cfg) / table),
                      path_in_repo=table, commit_message=f"MedAdapt index {cfg.rag.table} ({cfg.rag.embedder})")
    if sources_file(cfg).exists():
        api.upload_file(repo_id=repo_id, repo_type="dataset", path_or_fileobj=str(sources_file(cfg)),
                        path_in_repo=sources_file(cfg).name)
    return f"https://huggingface.co/datasets/{repo_id}"


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
    dst = install_table(cfg, src)
    log.info("prebuilt index %s: table %s copied into %s", repo, table, dst.parent)
    return True


def install_table(cfg: AppConfig, src: Path) -> Path:
    """Copy LanceDB table folder ``src`` (``<table>.lance``, with its ``<table>.sources.json`` beside it when there is
    one) into the profile's index dir, replacing what is there in one rename; returns the installed folder."""
    from medadapt.retrieval.index import index_path, sources_file

    table = cfg.rag.table
    dst = index_path(cfg) / f"{table}.lance"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{table}.pull-", dir=dst.parent))
    shutil.copytree(src, tmp / "t", symlinks=False)  # the Hub cache links to blobs: copy the files themselves
    if dst.exists():
        shutil.rmtree(dst)
    (tmp / "t").rename(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    record = src.parent / f"{table}.sources.json"
    if record.is_file():
        shutil.copyfile(record, sources_file(cfg))
    return dst


def install_shipped_index(cfg: AppConfig) -> bool:
    """Copy the profile's shipped table (:func:`medadapt.shipped.shipped_index`) into the index dir; True when it
    was there to copy (seconds: ~11 MB for the offline profile's 4,697 snippets)."""
    from medadapt.shipped import shipped_index

    folder = shipped_index(cfg)
    if folder is None:
        return False
    try:
        install_table(cfg, folder / f"{cfg.rag.table}.lance")
    except OSError as e:
        log.warning("the shipped index could not be copied (%s); building it instead", e)
        return False
    log.info("shipped index: table %s copied from %s", cfg.rag.table, folder)
    return True
