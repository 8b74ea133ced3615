"""Corpus snippets in MedRAG format (``id``, ``title``, ``content``, ``contents``) with their source as a column.

``local:<folder>`` reads ``<data_dir>/<folder>/*.jsonl`` (one file per book); any other name is a Hub dataset
(``MedRAG/textbooks``, ``MedRAG/statpearls``) read with ``datasets.load_dataset``.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from medadapt.config import AppConfig
from medadapt.data import DataNotFoundError, data_file


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


def iter_hub(name: str) -> Iterator[CorpusDoc]:
    from datasets import load_dataset

    for row in load_dataset(name, split="train", streaming=True):
        doc_id, title = str(row["id"]), row.get("title", "")
        yield CorpusDoc(doc_id, title, row["content"], hub_source(name, doc_id, title))


def iter_corpus(cfg: AppConfig, names: list[str] | None = None) -> Iterator[CorpusDoc]:
    """All snippets of the configured corpora (``cfg.rag.corpus`` unless ``names`` is given), in a stable order."""
    for name in names or cfg.rag.corpus:
        if name.startswith("local:"):
            yield from iter_local(cfg, name.removeprefix("local:"))
        else:
            yield from iter_hub(name)
