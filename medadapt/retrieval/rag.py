"""Retrieval over the MedRAG corpus: ``Retriever.retrieve(question, k) -> list[Snippet]``.

Modes: ``dense`` (cosine over the embedder's vectors), ``fts`` (LanceDB native BM25 full-text search) and
``hybrid`` (LanceDB's hybrid query: both, fused by its reciprocal-rank-fusion reranker). Queries are the bare question; callers leave the options and the
instructions out. On an option question (a multiple-choice question whose options are content),
:meth:`Retriever.retrieve_options` sends one query per option (``rag.option_queries``: "question + option", as MedRAG
and the classic MedQA IR baselines do, or the option alone), ``rag.option_top_k`` snippets each, fused by reciprocal
rank (round-robin over the options at equal rank) and de-duplicated; each snippet names the option whose query found
it (``Snippet.option``), and the caller fits the fused list into the one snippet budget. :func:`fit_to_budget` (defined in :mod:`medadapt.prompts`, re-exported here) keeps retrieved text
inside a token budget. The index itself is built by
:func:`build_index` (see :mod:`medadapt.retrieval.index`; its command line: :mod:`medadapt.retrieval.cli`).
"""
from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medadapt.config import AppConfig
from medadapt.retrieval.lance_async import AsyncLanceTable
from medadapt.prompts import fit_to_budget, snippet_text  # noqa: F401  (re-exported: the one snippet budget)
from medadapt.retrieval.index import (  # noqa: F401  (re-exported API)
    TEXT_COLUMN, CorpusLoadError, Embedder, IndexMismatchError, build_index, connect, failure_message, index_names,
    index_path, load_embedder, source_report, source_rows, table_exists, table_meta,
)

log = logging.getLogger(__name__)
MODES = ("dense", "fts", "hybrid")
ROW_COLUMNS = ["id", "title", "source", TEXT_COLUMN]


@dataclass(frozen=True)
class Snippet:
    id: str
    title: str
    source: str
    content: str
    score: float  # cosine similarity (dense), BM25 (fts) or RRF score (hybrid); higher is better
    option: str = ""  # the option letter(s) whose query retrieved it ("" for the question's own query)


OPTION_QUERY_FORMS = ("question", "question+option", "option")
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[\.\):]\s+(\S.*)$")


def question_options(text: str) -> tuple[str, dict[str, str]]:
    """A typed question split into its stem and its lettered options (lines ``A. …``, ``B) …``, ``(C) …``,
    ``D: …``, consecutive from A, at least two); ``(text, {})`` when it has none."""
    lines = text.splitlines()
    options: dict[str, str] = {}
    start = None
    for i, line in enumerate(lines):
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == chr(ord("A") + len(options)):
            start = i if start is None else start
            options[m.group(1)] = m.group(2).strip()
        elif options and line.strip():
            break
    if len(options) < 2:
        return text, {}
    return "\n".join(lines[:start]).strip(), options


def option_queries(question: str, options: dict[str, str], form: str) -> list[tuple[str, str]]:
    """``(letter, query)`` per option for ``form`` (``question``: one query, the question, letter "")."""
    if form not in OPTION_QUERY_FORMS:
        raise ValueError(f"unknown option query form {form!r}; one of {OPTION_QUERY_FORMS}")
    if form == "question" or not options:
        return [("", question)]
    return [(k, f"{question} {v}" if form == "question+option" else str(v)) for k, v in options.items()]


def fuse_option_hits(per_option: list[tuple[str, list[Snippet]]], rrf_k: int = 60) -> list[Snippet]:
    """One ranked list from each option query's hits: reciprocal-rank fusion (``sum 1 / (rrf_k + rank)``; equal
    ranks keep the options' order, so the list runs round-robin over the options), duplicates merged, each snippet
    naming every option whose query found it, in the order they ranked it."""
    fused: dict[str, list] = {}
    for letter, hits in per_option:
        for rank, s in enumerate(hits, 1):
            entry = fused.setdefault(s.id, [s, 0.0, [], (rank, len(fused))])
            entry[1] += 1.0 / (rrf_k + rank)
            if letter and letter not in entry[2]:
                entry[2].append(letter)
    ranked = sorted(fused.values(), key=lambda e: (-e[1], e[3]))
    return [Snippet(s.id, s.title, s.source, s.content, round(score, 6), ",".join(letters))
            for s, score, letters, _ in ranked]

class IndexNotBuiltError(RuntimeError):
    """The retrieval index does not exist (or its build never finished)."""


def not_built_message(cfg: AppConfig) -> str:
    return (f"the retrieval index {cfg.rag.table!r} is not built in {index_path(cfg)}: run "
            f"`python -m medadapt.retrieval build --profile {cfg.profile}` or press Build index")


# ---------------------------------------------------------------- index status and retrieval

def index_status(cfg: AppConfig) -> dict[str, Any]:
    """The profile's table: ``built`` (queryable), ``complete`` (every source snippet in), rows, source rows, embedder.

    A ``--limit`` build is built but not complete; an interrupted one is neither until it is resumed; one whose last
    build left a source out (``failed_sources``: source -> reason) is not complete until a build adds it.
    """
    db = connect(cfg)
    failed = source_report(cfg).get("failed") or {}
    status = {"built": False, "complete": False, "rows": 0, "source_rows": source_rows(cfg),
              "embedder": cfg.rag.embedder, "dim": 0, "table": cfg.rag.table, "path": str(index_path(cfg)),
              "failed_sources": failed}
    if not table_exists(db, cfg.rag.table):
        return status
    tbl = db.open_table(cfg.rag.table)
    meta = table_meta(tbl)
    rows = tbl.count_rows()
    built = bool(rows) and "FTS" in index_names(tbl)
    status.update(rows=rows, embedder=meta.get("embedder", "?"), dim=int(meta.get("dim", 0)), built=built,
                  complete=built and not failed and (status["source_rows"] is None or rows >= status["source_rows"]))
    return status


def _scored(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Rows with ``score``: cosine similarity (1 - cosine distance) for dense, BM25 for fts."""
    if kind == "dense":
        return [dict(r, score=1.0 - float(r["_distance"])) for r in rows]
    return [dict(r, score=float(r["_score"])) for r in rows]


class Retriever:
    """Question -> ranked snippets from one LanceDB table, queries embedded as the table's rows were.

    ``table`` (sync API) answers metadata; searches go through ``queries`` (:class:`AsyncLanceTable`, one thread
    hop per search; hybrid is LanceDB's hybrid query over ``rag.candidates`` per search, fused with ``rag.rrf_k``).
    """

    CACHE_SIZE = 256  # recent (question, k, mode) results: RAG on several variants asks the same question

    def __init__(self, cfg: AppConfig, table: Any, embedder: Embedder):
        self.cfg, self.table, self.embedder = cfg, table, embedder
        self.queries = AsyncLanceTable(index_path(cfg), cfg.rag.table)
        self.indexed = any(t != "FTS" for t in index_names(table))
        self._cache: OrderedDict[tuple[str, int, str], list[Snippet]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, cfg: AppConfig, embedder: Embedder | None = None) -> Retriever:
        """Open the profile's table; raises :class:`IndexNotBuiltError` when it is missing or unfinished."""
        db = connect(cfg)
        if not table_exists(db, cfg.rag.table):
            raise IndexNotBuiltError(not_built_message(cfg))
        table = db.open_table(cfg.rag.table)
        if not table.count_rows() or "FTS" not in index_names(table):
            raise IndexNotBuiltError(not_built_message(cfg) + " (a build was started but did not finish)")
        meta = table_meta(table)
        if embedder is None or embedder.name != meta.get("embedder"):
            embedder = load_embedder(cfg, meta.get("embedder"))
        if embedder.dim != int(meta.get("dim", embedder.dim)):
            raise IndexMismatchError(f"table dim {meta.get('dim')} != embedder {embedder.name} dim {embedder.dim}")
        return cls(cfg, table, embedder)

    def retrieve(self, question: str, k: int | None = None, mode: str | None = None) -> list[Snippet]:
        """Top-``k`` snippets for ``question`` (the bare question) by ``mode`` (default: the config's)."""
        k = k or self.cfg.rag.top_k
        mode = mode or self.cfg.rag.mode
        if mode not in MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}; one of {MODES}")
        question = " ".join(question.split())
        if not question:
            return []
        key = (question, k, mode)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return list(self._cache[key])
        hits = self._search(question, k, mode)
        with self._lock:
            self._cache[key] = hits
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return list(hits)

    def retrieve_options(self, question: str, options: dict[str, str] | None, k: int | None = None,
                         form: str | None = None, mode: str | None = None) -> list[Snippet]:
        """Per-option retrieval: one query per option (``form``, default ``rag.option_queries``), ``k`` snippets each
        (default ``rag.option_top_k``), fused (:func:`fuse_option_hits`). Without options, or with form
        ``question``, it is :meth:`retrieve` of the question (``rag.top_k``)."""
        form = form or self.cfg.rag.option_queries
        queries = option_queries(question, options or {}, form)
        if queries == [("", question)]:
            return self.retrieve(question, k if form != "question" else None, mode)
        k = k or self.cfg.rag.option_top_k
        return fuse_option_hits([(letter, self.retrieve(q, k, mode)) for letter, q in queries], self.cfg.rag.rrf_k)

    def _search(self, question: str, k: int, mode: str) -> list[Snippet]:
        if mode == "dense":
            return self._to_snippets(self.dense(question, k))
        if mode == "fts":
            return self._to_snippets(self.fts(question, k))
        rag = self.cfg.rag
        query = self.queries.hybrid(self.embedder.encode([question])[0], question, max(k, rag.candidates),
                                    TEXT_COLUMN, rag.rrf_k, *self._index_settings())
        rows = self.queries.arrow(query).select([*ROW_COLUMNS, "_relevance_score"]).slice(0, k).to_pylist()
        return [self._snippet(r, r["_relevance_score"]) for r in rows]

    def dense(self, question: str, n: int) -> list[dict[str, Any]]:
        return _scored(self.queries.rows(self._dense_query(question, n)), "dense")

    def fts(self, question: str, n: int) -> list[dict[str, Any]]:
        return _scored(self.queries.rows(self._fts_query(question, n)), "fts")

    def _dense_query(self, question: str, n: int) -> Any:
        """The question's vector query with the config's index settings (every partition + re-rank by default)."""
        vec = self.embedder.encode([question])[0]
        return self.queries.nearest(vec, n, ROW_COLUMNS, *self._index_settings())

    def _index_settings(self) -> tuple[int | None, int]:
        """``nprobes`` (None: no vector index, exact search) and ``refine_factor`` for vector searches."""
        return (self.cfg.rag.nprobes if self.indexed else None), self.cfg.rag.refine_factor

    def _fts_query(self, question: str, n: int) -> Any:
        return self.queries.text(question, n, TEXT_COLUMN, ROW_COLUMNS)

    def _snippet(self, row: dict[str, Any], score: float) -> Snippet:
        return Snippet(row["id"], row["title"], row["source"], row[TEXT_COLUMN], float(score))

    def _to_snippets(self, rows: list[dict[str, Any]]) -> list[Snippet]:
        return [self._snippet(r, r["score"]) for r in rows]
