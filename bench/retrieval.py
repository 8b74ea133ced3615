"""Retrieval speed: (a) embed+ingest rate, tuned build vs naive; (b) LanceDB query latency and recall@10.

Run: ``python bench/retrieval.py [--snippets 1000] [--rounds 4] [--rows 460000] [--queries 50] [--indexes ivf_rq]
[--no-real]``

(a) The same first ``--snippets`` textbook snippets of the offline corpus are embedded and written to LanceDB twice:
naive (the seed's way: fp32 ``model.encode`` on batches of 64 in corpus order, one table append per batch) and
tuned (``medadapt.retrieval.rag.build_index``: length-sorted chunks, bf16 where the CPU supports it, inference mode, one
append per chunk, FTS index included). The two alternate over ``--rounds`` slices (the tuned build resumes each
time) so drifting load on a shared CPU hits both alike; wall and CPU time are summed. Model loading is outside both
timings. Prints the ratios and the cosine between the two paths' vectors.

(b) A synthetic ``--rows`` x 384 table of unit vectors: ``random`` (uniform on the sphere, as the issue asks: the
worst case for any ANN index, neighbours have no structure) and ``clustered`` (points around 2,000 random centres,
closer to real embeddings). Ground truth is exact numpy top-10. Exact LanceDB search (no index), then the vector
indexes of ``SWEEPS`` (built through the app's own ``medadapt.retrieval.index.vector_index_config``) over their
``nprobes`` x ``refine_factor`` settings, each query through the app's query path (``medadapt.retrieval.lance_async``, as
``Retriever.dense`` runs it; the index is warmed by 5 queries first); the row marked "app default" is what
``RagConfig``'s defaults give and is what the RESULT line reports. (c) When the offline index is built,
dense/fts/hybrid latency on it, then dense and hybrid with the query embedded beforehand (the search alone).
Last line: ``RESULT ingest_speedup=<x> p50_ms=<indexed p50> recall10=<r>`` (app default index) for the first
dataset, plus the same for the others and (c) under prefixed keys.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIM = 384


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--snippets", type=int, default=1000, help="snippets embedded by each ingest path (0 = skip)")
    p.add_argument("--rounds", type=int, default=4, help="alternating naive/tuned slices of the snippets")
    p.add_argument("--rows", type=int, default=460_000, help="synthetic table rows (0 = skip the query part)")
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--data", default="random,clustered", help="comma list of random | clustered")
    p.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                   help="(c) time dense/fts/hybrid queries on the built offline index")
    p.add_argument("--indexes", default="ivf_rq",
                   help="comma list of index kinds to sweep (ivf_rq, ivf_sq, ivf_pq); the app default always runs")
    return p


def pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000, q))


# ---------------------------------------------------------------- (a) ingest

def bench_ingest(n: int, rounds: int, workdir: Path) -> float:
    """Alternate naive and tuned over ``rounds`` slices of the same snippets (the shared CPU's load drifts)."""
    import lancedb
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from medadapt.config import load_config
    from medadapt.data.corpus import iter_corpus
    from medadapt.retrieval.rag import build_index
    from medadapt.retrieval.index import Embedder, embedder_path, make_schema, unique_docs

    cfg = load_config("offline", {"paths": {"index_dir": str(workdir / "tuned")}, "rag": {"table": "tuned"}})
    docs = unique_docs(iter_corpus(cfg), n)
    texts = [d.contents for d in docs]
    print(f"(a) {len(docs)} snippets, {sum(map(len, texts)) / len(texts):.0f} chars on average, "
          f"{torch.get_num_threads()} torch threads, {rounds} alternating rounds")
    naive_model = SentenceTransformer(embedder_path(cfg.rag.embedder), device="cpu")
    embedder = Embedder(cfg.rag.embedder, cfg.rag.embed_dtype)
    tbl = lancedb.connect(str(workdir / "naive")).create_table("naive", schema=make_schema(DIM, {}), mode="overwrite")
    wall = {"naive": 0.0, "tuned": 0.0}
    cpu = {"naive": 0.0, "tuned": 0.0}
    naive_vecs = []
    step = -(-len(docs) // rounds)
    for r in range(0, len(docs), step):
        part = docs[r:r + step]
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(part), 64):  # naive: corpus order, fp32, one append per batch of 64
            batch = part[i:i + 64]
            vecs = naive_model.encode([d.contents for d in batch])
            naive_vecs.append(vecs)
            tbl.add([{"id": d.id, "title": d.title, "source": d.source, "content": d.content, "vector": v}
                     for d, v in zip(batch, vecs)])
        wall["naive"] += time.perf_counter() - t0
        cpu["naive"] += time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        rows = build_index(cfg, limit=r + len(part), embedder=embedder)  # resumes: embeds only this slice
        wall["tuned"] += time.perf_counter() - t0
        cpu["tuned"] += time.process_time() - c0
        assert rows == r + len(part)
    for k in wall:
        print(f"    {k}: {wall[k]:.1f} s wall = {len(docs) / wall[k]:.2f} snippets/s, {cpu[k]:.1f} s CPU")
    print(f"    tuned = {embedder.dtype}, length-sorted chunks, inference mode, one append per chunk, FTS index built")

    got = lancedb.connect(str(workdir / "tuned")).open_table("tuned").to_arrow().to_pylist()
    tuned = {row["id"]: np.asarray(row["vector"]) for row in got}
    naive = np.concatenate(naive_vecs)
    naive /= np.linalg.norm(naive, axis=1, keepdims=True)
    cos = np.array([float(tuned[d.id] @ naive[i]) for i, d in enumerate(docs)])
    print(f"    cosine tuned vs naive vectors: mean {cos.mean():.5f}, min {cos.min():.5f}")
    speedup = wall["naive"] / wall["tuned"]
    print(f"    ingest speedup: {speedup:.2f}x wall, {cpu['naive'] / cpu['tuned']:.2f}x CPU time")
    return speedup


# ---------------------------------------------------------------- (b) query latency / recall

def make_vectors(kind: str, n: int, seed: int) -> "np.ndarray":  # noqa: F821
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "random":
        v = rng.standard_normal((n, DIM), dtype=np.float32)
    else:
        centres = np.random.default_rng(12345).standard_normal((2000, DIM), dtype=np.float32)
        v = centres[rng.integers(0, len(centres), n)] * 0.06 + rng.standard_normal((n, DIM), dtype=np.float32) * 0.04
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact_topk(data, queries, k=10):
    import numpy as np

    out = []
    for q in queries:
        s = data @ q
        top = np.argpartition(-s, k)[:k]
        out.append(set(top[np.argsort(-s[top])].tolist()))
    return out


def timed(tbl, queries, nprobes=None, refine=0, k=10):
    """Per-query latency and found ids through the app's query path (``AsyncLanceTable``, as ``Retriever.dense``
    uses it); ``nprobes`` None = exact search, 0 = every partition; ``refine`` 0 = none."""
    lat, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        ids = tbl.arrow(tbl.nearest(q, k, ["i"], nprobes, refine)).column("i").to_pylist()
        lat.append(time.perf_counter() - t0)
        found.append(set(ids))
    return lat, found


def recall(found, truth) -> float:
    return sum(len(f & t) for f, t in zip(found, truth)) / (10 * len(truth))


# (index, partitions, bits) -> [(nprobes, refine_factor), ...]; nprobes 0 = every partition, refine 0 = none.
SWEEPS = {
    ("ivf_rq", 4, 4): [(0, 0), (0, 1), (0, 2), (0, 3), (0, 5)],
    ("ivf_rq", 64, 4): [(4, 2), (8, 2), (16, 2), (32, 2), (0, 2)],
    ("ivf_rq", 4, 1): [(0, 10), (0, 50)],
    ("ivf_sq", 4, 8): [(0, 0), (0, 1)],
    ("ivf_pq", 256, 8): [(64, 20), (0, 40)],
}


def bench_queries(kind: str, args: argparse.Namespace, workdir: Path) -> tuple[float, float]:
    """Exact search, then every index in ``SWEEPS`` chosen by ``--indexes``; returns the app default's p50/recall."""
    import lancedb
    import pyarrow as pa

    from medadapt.config import RagConfig
    from medadapt.retrieval.lance_async import AsyncLanceTable
    from medadapt.retrieval.index import vector_index_config

    rows, nq = args.rows, args.queries
    data = make_vectors(kind, rows, seed=1)
    queries = make_vectors(kind, nq, seed=2)
    print(f"(b) {kind}: {rows} x {DIM} unit vectors, {nq} queries")
    db = lancedb.connect(str(workdir / kind))
    schema = pa.schema([pa.field("i", pa.int64()), pa.field("vector", pa.list_(pa.float32(), DIM))])

    def batches():
        for s in range(0, rows, 50_000):
            block = data[s:s + 50_000]
            yield pa.RecordBatch.from_arrays(
                [pa.array(range(s, s + len(block)), pa.int64()),
                 pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), DIM)], schema=schema)

    t0 = time.perf_counter()
    tbl = db.create_table("vectors", data=batches(), schema=schema, mode="overwrite")
    print(f"    ingest {time.perf_counter() - t0:.1f} s")
    truth = exact_topk(data, queries)
    lat, found = timed(AsyncLanceTable(workdir / kind, "vectors"), queries[: max(5, nq // 5)])
    print(f"    exact (no index): p50 {pct(lat, 50):.1f} ms, p95 {pct(lat, 95):.1f} ms, "
          f"recall@10 {recall(found, truth[: len(found)]):.3f}")
    app = RagConfig()  # the app's default index and query settings
    app_key = (app.vector_index, app.ivf_partitions, app.index_bits)
    wanted = set(args.indexes.split(","))
    app_result = None
    for (index, parts, bits), settings in SWEEPS.items():
        if index not in wanted and (index, parts, bits) != app_key:
            continue
        config = vector_index_config(RagConfig(vector_index=index, ivf_partitions=parts, index_bits=bits), rows, DIM)
        t0 = time.perf_counter()
        tbl.create_index("vector", config=config, replace=True)
        print(f"    {index} ({parts} partitions, {bits} bits) built in {time.perf_counter() - t0:.1f} s")
        indexed = AsyncLanceTable(workdir / kind, "vectors")  # opened after the index build, as the app does
        timed(indexed, queries[:5], 0, 0)  # warm-up: loads the index into the table's cache
        for nprobes, refine in settings:
            lat, found = timed(indexed, queries, nprobes, refine)
            r, p50 = recall(found, truth), pct(lat, 50)
            is_app = (index, parts, bits) == app_key and (nprobes, refine) == (app.nprobes, app.refine_factor)
            print(f"      nprobes {nprobes or 'all':>4} refine {refine:3d}: p50 {p50:7.1f} ms, "
                  f"p95 {pct(lat, 95):7.1f} ms, recall@10 {r:.3f}{'   <- app default' if is_app else ''}")
            if is_app:
                app_result = (p50, r)
    if app_result is None:
        raise SystemExit(f"the app default {app_key} nprobes {app.nprobes} refine {app.refine_factor} is not swept")
    return app_result


QUESTIONS = [
    "What enzyme is deficient in phenylketonuria?",
    "Which vitamin deficiency causes scurvy?",
    "What is the most common cause of hypothyroidism in iodine-sufficient areas?",
    "Which cells are destroyed in type 1 diabetes mellitus?",
    "What is the mechanism of action of metformin?",
    "What are the findings in nephrotic syndrome?",
    "Which bacterium causes most cases of infective endocarditis in intravenous drug users?",
    "What is the first-line treatment for anaphylaxis?",
    "What are the features of Cushing syndrome?",
    "How does glycogen storage disease type I present?",
    "What is the antidote for acetaminophen overdose?",
    "Which nerve is injured in wrist drop?",
    "What causes the second heart sound to split?",
    "What are the symptoms of hyperkalemia?",
    "Which drug class is first-line for essential hypertension in diabetics?",
    "What is the pathophysiology of sickle cell anemia?",
    "Which tumor marker is elevated in hepatocellular carcinoma?",
    "What is the triad of Wernicke encephalopathy?",
    "How is iron deficiency anemia distinguished from anemia of chronic disease?",
    "What are the causes of metabolic acidosis with an increased anion gap?",
]


def bench_real_index() -> dict[str, float]:
    """Per-mode query latency on the offline profile's built index (skipped when it is not built)."""
    from medadapt.config import load_config
    from medadapt.retrieval.rag import Retriever, index_status

    cfg = load_config("offline")
    if not index_status(cfg)["built"]:
        print("(c) offline index not built: skipped (python -m medadapt.retrieval build --profile offline)")
        return {}
    retriever = Retriever.open(cfg)
    retriever.retrieve("warm-up: what does the thyroid gland make?")  # not one of QUESTIONS (the cache would answer)
    out = {}
    for mode in ("dense", "fts", "hybrid"):
        lat = []
        for q in QUESTIONS:
            t0 = time.perf_counter()
            retriever.retrieve(q, k=cfg.rag.top_k, mode=mode)
            lat.append(time.perf_counter() - t0)
        out[mode] = pct(lat, 50)
        print(f"(c) real index ({retriever.table.count_rows()} rows), {mode}: p50 {pct(lat, 50):.1f} ms, "
              f"p95 {pct(lat, 95):.1f} ms (query embedding included)")
    memo = MemoEmbedder(retriever.embedder, QUESTIONS)  # the search alone: each question embedded beforehand
    searcher = Retriever.open(cfg, memo)  # its own (empty) result cache
    for mode in ("dense", "hybrid"):
        lat = []
        for _ in range(3):
            for q in QUESTIONS:
                t0 = time.perf_counter()
                searcher._search(q, cfg.rag.top_k, mode)  # below the result cache, so every round searches
                lat.append(time.perf_counter() - t0)
        out[f"{mode}_search"] = pct(lat, 50)
        print(f"(c) real index, {mode} search alone (query pre-embedded, 3 x {len(QUESTIONS)}): p50 "
              f"{pct(lat, 50):.1f} ms, p95 {pct(lat, 95):.1f} ms")
    return out


class MemoEmbedder:
    """The retriever's embedder with ``texts`` embedded up front, so a timed query measures only the search."""

    def __init__(self, embedder, texts: list[str]):
        self.name, self.dim, self.dtype = embedder.name, embedder.dim, embedder.dtype
        self._embedder, self._memo = embedder, dict(zip(texts, embedder.encode(texts)))

    def encode(self, texts, batch_size: int = 64):
        import numpy as np

        return np.stack([self._memo[t] if t in self._memo else self._embedder.encode([t])[0] for t in texts])


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="medadapt-bench-retrieval-"))
    result = {}
    try:
        if args.snippets:
            result["ingest_speedup"] = f"{bench_ingest(args.snippets, args.rounds, workdir):.2f}"
        if args.rows:
            for i, kind in enumerate(k for k in args.data.split(",") if k):
                p50, r = bench_queries(kind, args, workdir)
                prefix = "" if i == 0 else f"{kind}_"
                result[f"{prefix}p50_ms"], result[f"{prefix}recall10"] = f"{p50:.2f}", f"{r:.3f}"
        if args.real:
            result.update({f"real_{m}_p50_ms": f"{v:.1f}" for m, v in bench_real_index().items()})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
