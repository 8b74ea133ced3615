"""Where a Hugging Face Hub repo can be had: from the Hub when it answers, else from the local Hugging Face cache.

Used to order model sources (the configured Hub id first, the packaged copy last) and to pull a prebuilt index.
"""
from __future__ import annotations

import logging

from medadapt.config import hub_reachable

log = logging.getLogger(__name__)


def cached_snapshot(repo_id: str, repo_type: str = "model") -> str | None:
    """The local snapshot folder of ``repo_id`` in the standard Hugging Face cache, or None if it is not there."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or an unreadable cache entry
        return None


def hub_source(repo_id: str, repo_type: str = "model") -> str | None:
    """``repo_id`` when the Hub answers (``from_pretrained`` downloads or reuses it), the cached snapshot folder when
    the Hub is unreachable but the cache holds it, else None."""
    if hub_reachable():
        return repo_id
    return cached_snapshot(repo_id, repo_type)
