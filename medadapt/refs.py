"""Names of server files that a page may carry instead of their absolute paths.

A file under one of the configured folders is named by the folder's setting and its path inside it
(``runs:offline/sft-20260101-000000/adapter``, ``cache:deltas/org__model-r16``); the page sends the name back and
the server resolves it by looking it up among what it listed (never by joining it to a folder), so a request can
neither name a file that was not offered nor learn where the server keeps it. :func:`adapter_name` is how exports and
votes name an adapter: its run's name.
"""
from __future__ import annotations

from pathlib import Path

from medadapt.config import REPO_ROOT, AppConfig

FOLDERS = {"runs_dir": "runs", "cache_dir": "cache", "data_dir": "data", "results_dir": "results",
           "index_dir": "index", "shipped_dir": "shipped"}


def _roots(cfg: AppConfig) -> list[tuple[Path, str]]:
    """(folder, name), the most specific first (a folder inside another wins)."""
    roots = [(cfg.paths.resolve(key).resolve(), name) for key, name in FOLDERS.items() if getattr(cfg.paths, key)]
    roots.append((REPO_ROOT.resolve(), "repo"))
    return sorted(roots, key=lambda r: len(r[0].parts), reverse=True)


def to_ref(cfg: AppConfig, path: str | Path) -> str:
    """``<folder>:<relative path>`` for a path under a configured folder (or the repository), else ``""``."""
    p = Path(path).expanduser().resolve()
    for root, name in _roots(cfg):
        if p == root or root in p.parents:
            return f"{name}:{p.relative_to(root).as_posix()}"
    return ""


def adapter_name(cfg: AppConfig, path: str | Path | None) -> str:
    """An adapter as a reader knows it: the run that trained it (``sft-20260101-000000``), else its name under a
    configured folder, else the folder's own name; ``""`` for none."""
    if not path:
        return ""
    p = Path(path)
    if p.name == "adapter" and to_ref(cfg, p).startswith("runs:"):
        return p.parent.name
    return to_ref(cfg, p) or p.name
