"""Results files on disk: the results JSONs and perplexity files under a results dir, listed with a label and read
once per version of a file (eval's results API for the Benchmarks tab; no torch, no model).
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from eval.perplexity import is_perplexity
from eval.report import done_variants
from eval.views import protocol_label, views_of

RESULTS_KEPT = 2  # parsed results files kept (a 4 MB file: ~0.15 s of CPU to parse, ~10-30 MB parsed)
_parsed: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
_summaries: dict[tuple[str, int, int], tuple[int, list[str], list[str]] | None] = {}
_cache_lock = threading.Lock()


def _version(file: Path) -> tuple[str, int, int]:
    file = Path(file).resolve()
    st = file.stat()
    return str(file), st.st_mtime_ns, st.st_size


def parsed_json(file: Path) -> Any:
    """The JSON in ``file``, parsed once per version of it (path, mtime, size; the last ``RESULTS_KEPT`` kept): each
    Benchmarks event reads the file it shows, and re-parsing it every time made cheap-looking events expensive.
    Callers must not change what it returns."""
    key = _version(file)
    with _cache_lock:
        if key in _parsed:
            _parsed.move_to_end(key)
            return _parsed[key]
    data = json.loads(file.read_text(encoding="utf-8"))
    with _cache_lock:
        _parsed[key] = data
        while len(_parsed) > RESULTS_KEPT:
            _parsed.popitem(last=False)
    return data


def _summary(file: Path) -> tuple[int, list[str], list[str], str] | None:
    """(items per benchmark, variants done, views, protocol) of a results file, once per version of it; None if it
    is none."""
    key = _version(file)
    if key not in _summaries:
        try:
            data = parsed_json(file)
        except (OSError, json.JSONDecodeError):
            data = None
        ok = isinstance(data, dict) and "variants" in data
        _summaries[key] = (max((len(v) for v in data.get("item_ids", {}).values()), default=0), done_variants(data),
                           views_of(data), protocol_label(data)) if ok else None
    return _summaries[key]


def list_results(results_dir: Path, shipped: Path | None = None) -> list[tuple[str, str]]:
    """(label, path relative to ``results_dir``) of every results JSON under it: the shipped release's results first
    (``shipped``: those of the adapters Compare serves by default), then most variants done, most views, most items,
    newest (file times are all alike in a fresh clone, so recency alone would pick an arbitrary default)."""
    shipped = Path(shipped).resolve() if shipped else None
    ranked = []
    for p in Path(results_dir).rglob("*.json"):
        try:
            summary = _summary(p)
        except OSError:
            continue
        if summary is None:
            continue
        n, done, views, protocol = summary
        release = p.resolve() == shipped
        label = (f"{'shipped release · ' if release else ''}{p.relative_to(results_dir)} · {protocol} · "
                 f"{', '.join(views)} · n={n} · {', '.join(done)}")
        ranked.append(((release, len(done), len(views), n, p.stat().st_mtime), label,
                       p.relative_to(results_dir).as_posix()))
    return [(label, path) for _, label, path in sorted(ranked, reverse=True)]


def read_results(path: str | None, root: Path | None = None) -> dict | None:
    """A results JSON; with ``root``, ``path`` is taken relative to it and must stay inside it."""
    if not path:
        return None
    file = Path(path)
    if root is not None:
        file = (Path(root) / path).resolve()
        if not file.is_relative_to(Path(root).resolve()):
            return None
    try:
        data = parsed_json(file)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def list_perplexity(results_dir: Path) -> list[tuple[str, str]]:
    """(label, path relative to ``results_dir``) of every perplexity file (``python -m eval perplexity``), newest first."""
    found = []
    for p in Path(results_dir).rglob("perplexity-*.json"):
        data = read_results(str(p))
        if data and is_perplexity(data):
            found.append((data.get("created", ""), f"{p.relative_to(results_dir)} · {', '.join(data['models'])}",
                          p.relative_to(results_dir).as_posix()))
    return [(label, path) for _, label, path in sorted(found, reverse=True)]
