"""Prompt building and question truncation on fixtures."""
from dataclasses import dataclass

from medadapt.prompts import SYSTEM_RAG, build_messages, truncate_question


@dataclass
class Snip:
    title: str
    content: str


def test_plain_question():
    msgs = build_messages("  What causes scurvy?  ")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1]["content"] == "Question: What causes scurvy?"
    assert "Answer: X" not in msgs[0]["content"]


def test_mcq_options_and_answer_format():
    msgs = build_messages("Drug of choice?", options={"A": "Heparin", "B": "Warfarin"})
    assert msgs[1]["content"].endswith("Options:\nA. Heparin\nB. Warfarin")
    assert "Answer: X" in msgs[0]["content"]


def test_snippets_numbered_with_titles_and_citation_instruction():
    msgs = build_messages("Q?", snippets=[Snip("Pathoma", "Hyperplasia\n  is growth."), Snip("FA", "Two")])
    user = msgs[1]["content"]
    assert "[1] Pathoma: Hyperplasia is growth.\n[2] FA: Two" in user
    assert user.index("[1]") < user.index("Question: Q?")
    assert SYSTEM_RAG.strip() in msgs[0]["content"]


def test_context_goes_before_question():
    user = build_messages("Does X help?", context="We studied X.", context_label="Abstract")[1]["content"]
    assert user.startswith("Abstract: We studied X.\n\nQuestion: Does X help?")


def test_truncate_question_fits_budget():
    count = lambda s: len(s.split())  # noqa: E731 - a word counter stands in for a tokenizer
    text = " ".join(f"w{i}" for i in range(1000))
    cut, was_cut = truncate_question(text, count, 50)
    assert was_cut and count(cut) <= 50 and text.startswith(cut[:-4].strip())
    same, was_cut = truncate_question("short one", count, 50)
    assert same == "short one" and not was_cut
    assert truncate_question("abc", count, 0) == ("", True)
