"""LanceDB queries through its async API, called from synchronous code on one background event loop.

LanceDB's sync API drives the same Rust engine through its own loop with three thread hops per query (execute,
first batch, end of stream); :class:`AsyncLanceTable` takes one, about 1 ms of a ~10 ms vector query over 460k rows
(``bench/retrieval.py``). :meth:`AsyncLanceTable.hybrid` is LanceDB's own hybrid query (its vector and full-text
searches run concurrently, fused by its RRF reranker); :meth:`AsyncLanceTable.gather` runs several queries at once.
Every method blocks until its queries finish and is thread-safe.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

ALL_PARTITIONS = 1 << 20  # an nprobes above the partition count searches every partition

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's LanceDB event loop, started on first use in a daemon thread."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="medadapt-lancedb", daemon=True).start()
            _loop = loop
    return _loop


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on the background loop and wait for its result (exceptions propagate)."""
    return asyncio.run_coroutine_threadsafe(coro, background_loop()).result()


class AsyncLanceTable:
    """One LanceDB table opened through the async API. Queries are built with :meth:`nearest` and :meth:`text`
    and executed with :meth:`rows` (one) or :meth:`gather` (several at once)."""

    def __init__(self, path: str | Path, name: str):
        import lancedb

        async def open_table() -> Any:
            db = await lancedb.connect_async(str(path))
            return await db.open_table(name)

        self.table = run(open_table())

    def nearest(self, vector: Sequence[float], n: int, columns: Sequence[str], nprobes: int | None = None,
                refine_factor: int = 0) -> Any:
        """Cosine top-``n`` query with ``columns`` + ``_distance``. ``nprobes`` None = the table has no vector
        index (exact search), 0 = every partition; ``refine_factor`` > 0 re-ranks that many times ``n``
        candidates with the stored vectors."""
        return self._vector(vector, n, nprobes, refine_factor).select([*columns, "_distance"])

    def text(self, text: str, n: int, column: str, columns: Sequence[str]) -> Any:
        """BM25 full-text top-``n`` query on ``column`` with ``columns`` + ``_score``."""
        return self.table.query().nearest_to_text(text, columns=column).limit(n).select([*columns, "_score"])

    def hybrid(self, vector: Sequence[float], text: str, n: int, column: str, rrf_k: int = 60,
               nprobes: int | None = None, refine_factor: int = 0) -> Any:
        """LanceDB's hybrid query: the :meth:`nearest` and :meth:`text` top-``n`` run concurrently and are fused
        by its ``RRFReranker`` (score = sum of ``1 / (rrf_k + rank)``, ties in vector-then-text order); at most
        ``n`` rows, every column + ``_relevance_score``. Not narrowed with ``select``: the fusion needs the
        ``_distance``/``_score`` columns, which a select would then drop (with a lance warning per query)."""
        from lancedb.rerankers import RRFReranker

        query = self._vector(vector, n, nprobes, refine_factor).nearest_to_text(text, columns=column)
        return query.limit(n).rerank(RRFReranker(K=rrf_k))

    def _vector(self, vector: Sequence[float], n: int, nprobes: int | None, refine_factor: int) -> Any:
        query = self.table.query().nearest_to(vector).column("vector").distance_type("cosine").limit(n)
        if nprobes is not None:
            query = query.nprobes(nprobes or ALL_PARTITIONS)
            if refine_factor > 0:
                query = query.refine_factor(refine_factor)
        return query

    def rows(self, query: Any) -> list[dict[str, Any]]:
        return self.gather(query)[0]

    def gather(self, *queries: Any) -> list[list[dict[str, Any]]]:
        """Execute ``queries`` concurrently; each one's rows as dicts, in query order."""
        async def execute() -> list[list[dict[str, Any]]]:
            tables = await asyncio.gather(*(q.to_arrow() for q in queries))
            return [t.to_pylist() for t in tables]

        return run(execute())

    def arrow(self, query: Any) -> Any:
        """Execute one query, results as a pyarrow Table."""
        async def execute() -> Any:
            return await query.to_arrow()

        return run(execute())
