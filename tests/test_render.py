"""Column rendering and export on fixture answers (pure functions)."""
import os
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
    assert "thinking budget" in render.stats_markdown(done(budget_closed=True)) and "budget" not in s


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


def test_setup_line_says_each_step_and_goes_quiet_after_it_finished():
    import time

    from medadapt.setup_chain import SetupState, StepRecord, interrupted
    from medadapt.ui.render import setup_markdown

    st = SetupState("running", pid=os.getpid(), steps={
        "index": StepRecord("done", "/r/index-1"), "sft": StepRecord("running", "/r/sft-1", 40, 120, 175.0),
        "msft": StepRecord("pending")})
    line = setup_markdown(st)
    assert "First-run setup" in line and "training SFT, step 40/120, about 3 min left" in line and "queued" in line
    st.steps["msft"] = StepRecord("failed", error="ValueError: bad corpus\\ntraceback...")
    st.status, st.ended = "failed", time.time()
    assert "finished with errors" in setup_markdown(st) and "bad corpus" in setup_markdown(st)
    st.steps["msft"], st.status = StepRecord("done", "/r/msft-1"), "done"
    assert "First-run setup finished" in setup_markdown(st)
    st.ended = time.time() - 3600
    assert setup_markdown(st) == ""
    st.status, st.pid = "running", 2 ** 22 + 12345  # its app process is gone
    assert "interrupted" in setup_markdown(st, interrupted(st)) and interrupted(st)
    assert "interrupted" not in setup_markdown(st)  # pure: whether its process lives is the caller's to say
