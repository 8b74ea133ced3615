"""User-facing text without absolute server paths.

A path under one of the configured folders is shown relative to the project (``runs/offline/sft-…``) or, for a
folder outside it, under its setting's name (``$MEDADAPT_INDEX_DIR/…``); any other absolute path (a library file in
a traceback, a temp file) is cut to ``…/<file name>``. Used on every message, error and log tail the UI shows;
the shell and the logs keep full paths.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from medadapt.config import REPO_ROOT, AppConfig

PATH_KEYS = ("data_dir", "cache_dir", "runs_dir", "index_dir", "results_dir")
_STOP = r"\s'\"`<>()\[\]{},;&|*?"  # characters that end a path in a message, in Markdown or in escaped HTML
_ABSOLUTE = re.compile(rf"(?<![\w.:/~$-])/[^/{_STOP}]+(?:/[^/{_STOP}]*)+")  # two or more components


def shown_roots(cfg: AppConfig) -> list[tuple[str, str]]:
    """(absolute folder, how it is shown), longest first so the most specific folder wins."""
    roots: dict[str, str] = {}
    for key in PATH_KEYS:
        path = cfg.paths.resolve(key)
        try:
            label = path.resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            label = f"$MEDADAPT_{key.upper()}"
        for variant in {str(path), str(path.resolve())}:
            roots[variant] = label
    roots.setdefault(str(REPO_ROOT), ".")
    return sorted(roots.items(), key=lambda kv: len(kv[0]), reverse=True)


def path_redactor(cfg: AppConfig) -> Callable[[str], str]:
    """A function that rewrites the absolute paths in a text (see the module docstring)."""
    rules = [(re.compile(re.escape(root) + r"(/|(?![\w.-]))"), label) for root, label in shown_roots(cfg) if root != "/"]

    def redact(text: str) -> str:
        if not text or "/" not in text:
            return text
        for pattern, label in rules:
            text = pattern.sub(lambda m: (label + m.group(1)) if label != "." or not m.group(1) else "", text)
        return _ABSOLUTE.sub(lambda m: "…/" + Path(m.group(0).rstrip("/")).name, text)

    return redact
