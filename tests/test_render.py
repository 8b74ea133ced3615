"""Column rendering and export on fixture answers (pure functions)."""
from dataclasses import dataclass

from medadapt.pipeline import DISCLAIMER, NOT_TRAINED, Answer, CompareResult
from medadapt.ui import render


@dataclass
class Snip:
    id: str
    title: str
    source: str
    content: str
    score: float


def done(**kw):
    return Answer("rag", status="done", raw="x", reasoning="because", answer="Aspirin [2]", n_tokens=12, ttft_s=0.2,
                  total_s=1.5, retrieval_s=0.004, snippets=[Snip("a", "FA", "First_Aid", "<b>x</b>", 0.8),
                                                             Snip("b", "Path", "Pathoma", "y", 0.5)], cited=[2], **kw)


def test_every_answer_state_carries_disclaimer():
    for ans in (done(), Answer("sft", status="unavailable", message=NOT_TRAINED), Answer("base"),
                Answer("base", status="error", message="boom"), Answer("base", status="streaming", reasoning="r")):
        assert DISCLAIMER in render.answer_markdown(ans)
    assert NOT_TRAINED in render.answer_markdown(Answer("sft", status="unavailable", message=NOT_TRAINED))
    assert "thinking" in render.answer_markdown(Answer("base", status="streaming", reasoning="r"))


def test_stats_and_flags():
    s = render.stats_markdown(done())
    assert "**12** tokens" in s and "TTFT 0.20 s" in s and "total 1.5 s" in s and "retrieval 4 ms" in s
    assert "truncated" in render.stats_markdown(done(truncated=True))
    assert "truncated" in render.reasoning_markdown(done(truncated=True))


def test_snippets_escaped_and_cited_marked():
    h = render.snippets_html(done())
    assert "&lt;b&gt;x&lt;/b&gt;" in h and "<b>x</b>" not in h
    assert h.count("is-cited") == 1 and h.index("is-cited") > h.index("[1]")
    assert "score 0.800" in h and "Pathoma" in h


def test_export_markdown_has_everything():
    res = CompareResult("Q?", {"rag": done(), "sft": Answer("sft", status="unavailable", message=NOT_TRAINED)},
                        {"temperature": 0.0}, ["truncated"], True)
    md = render.result_markdown(res)
    for text in ("Q?", DISCLAIMER, "Aspirin [2]", "because", "[2] **Path**", "cited", NOT_TRAINED, '"temperature": 0.0'):
        assert text in md
    assert render.result_json(res)["answers"]["rag"]["snippets"][0]["title"] == "FA"
