"""Corpus snippets in MedRAG format (``id``, ``title``, ``content``, ``contents``) with their source as a column.

``local:<folder>`` reads ``<data_dir>/<folder>/*.jsonl`` (one file per book), or its Hub twin when there is no data
dir; any other name is a Hub dataset (``MedRAG/textbooks``, ``MilyaShams/MedRAG_statpearls``) read with
:func:`medadapt.data.load_hub`, the first ``rag.corpus_limit`` snippets of each when that is set. ``MedRAG/statpearls``
is empty on the Hub (MedRAG does not redistribute StatPearls): the seed's processed copy is
``MilyaShams/MedRAG_statpearls``, and ``python -m medadapt.data prepare statpearls`` builds the same chunks from
the NCBI archive into ``<data_dir>/statpearls/`` (``local:statpearls``).

:func:`corpus_sources` gives one loader per configured corpus, so an index build can load each on its own and go on
without one that fails (:mod:`medadapt.retrieval.index`).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from medadapt.config import AppConfig
from medadapt.data import DataNotFoundError, data_file

HUB_TWINS = {"medrag_textbooks": "MedRAG/textbooks",
             "statpearls": "MilyaShams/MedRAG_statpearls"}  # local corpus folder -> the Hub dataset it was cut from


@dataclass(frozen=True)
class CorpusDoc:
    id: str
    title: str
    content: str
    source: str  # the book file stem or the Hub dataset name

    @property
    def contents(self) -> str:
        """Title-prefixed text, as MedRAG embeds it."""
        return f"{self.title}. {self.content}"


def iter_local(cfg: AppConfig, folder: str) -> Iterator[CorpusDoc]:
    root = data_file(cfg, folder)
    files = sorted(root.glob("*.jsonl"))
    if not files:
        raise DataNotFoundError(f"no *.jsonl snippet files in {root}")
    for path in files:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    yield CorpusDoc(str(row["id"]), row.get("title", ""), row["content"], path.stem)
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{path}:{n}: not a MedRAG snippet ({e})") from e


def hub_source(name: str, doc_id: str, title: str) -> str:
    """The source column for a Hub row: the book for MedRAG/textbooks (ids are ``{Book}_{n}``, as the local file
    stems), else ``<dataset>: <title>`` (the StatPearls article)."""
    if name.rstrip("/").endswith("textbooks"):
        return doc_id.rsplit("_", 1)[0]
    return f"{name.rsplit('/', 1)[-1]}: {title}" if title else name


def hub_name(name: str) -> str:
    """The Hub dataset for a corpus name: ``local:<folder>`` maps to its twin (DataNotFoundError if it has none)."""
    if not name.startswith("local:"):
        return name
    folder = name.removeprefix("local:")
    if folder not in HUB_TWINS:
        raise DataNotFoundError(f"corpus {name!r} has no Hub twin and no data dir is configured: set MEDADAPT_DATA_DIR")
    return HUB_TWINS[folder]


def iter_hub(name: str, limit: int = 0) -> Iterator[CorpusDoc]:
    """Snippets of a Hub corpus, streamed (the first ``limit`` when it is set)."""
    from medadapt.data import load_hub

    rows = load_hub(name, split="train", streaming=True)
    for row in rows.take(limit) if limit > 0 else rows:
        doc_id, title = str(row["id"]), row.get("title", "")
        yield CorpusDoc(doc_id, title, row["content"], hub_source(name, doc_id, title))


def iter_source(cfg: AppConfig, name: str) -> Iterator[CorpusDoc]:
    """The snippets of one corpus name (``local:<folder>`` or a Hub dataset)."""
    if name.startswith("local:") and not cfg.hub_data:
        return iter_local(cfg, name.removeprefix("local:"))
    return iter_hub(hub_name(name), cfg.rag.corpus_limit)


def corpus_sources(cfg: AppConfig, names: list[str] | None = None) -> list[tuple[str, Callable[[], Iterator[CorpusDoc]]]]:
    """``(name, loader)`` per configured corpus (``cfg.rag.corpus`` unless ``names`` is given), in config order."""
    return [(name, functools.partial(iter_source, cfg, name)) for name in names or cfg.rag.corpus]


def iter_corpus(cfg: AppConfig, names: list[str] | None = None) -> Iterator[CorpusDoc]:
    """All snippets of the configured corpora (``cfg.rag.corpus`` unless ``names`` is given), in a stable order."""
    for _name, load in corpus_sources(cfg, names):
        yield from load()
