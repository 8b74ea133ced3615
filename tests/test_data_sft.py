"""SFT rows: builders on literal records and the offline loader on the data dir."""
from __future__ import annotations

from medadapt.data.sft import CITATION_LEFT, load_local_rows, medmcqa_row, normalize_question, o1_row, pubmedqa_row

MCQ = {"id": "u1", "question": "Drug of choice for X?", "opa": "a1", "opb": "b1", "opc": "c1", "opd": "d1",
       "cop": 3, "exp": "Because c1 works."}


def test_medmcqa_row_uses_explanation_as_cot_and_1_based_cop():
    row = medmcqa_row(MCQ)
    assert row.id == "medmcqa:u1" and row.source == "medmcqa"
    assert "C. c1" in row.question and row.question.startswith("Drug of choice")
    assert row.cot == "Because c1 works."
    assert row.answer.startswith("The answer is C.") and "c1" in row.answer


def test_medmcqa_row_without_explanation_is_skipped():
    assert medmcqa_row({**MCQ, "exp": None}) is None
    assert medmcqa_row({**MCQ, "exp": "  "}) is None
    assert medmcqa_row({**MCQ, "exp": "Ans. is 'c' i.e., c1"}) is None  # nothing but the answer key


def test_the_answer_key_an_explanation_opens_with_is_not_reasoning():
    """MedMCQA explanations often open with their key ("Ans. is 'c' i.e., c1", "Answer- C. c1"); the reasoning
    keeps what follows, and the key is stated once, in the answer after </think>."""
    for exp in ("Ans. is 'c' i.e., c1Because c1 works.", "Answer- C. c1 Because c1 works.", "Ans: c. Because c1 works.",
                "Ans-c. c1. Because c1 works."):
        assert medmcqa_row({**MCQ, "exp": exp}).cot == "Because c1 works.", exp
    for exp in ("Answer is clear from the mechanism: c1.", "Anserine bursitis: c1."):  # no key: kept as written
        assert medmcqa_row({**MCQ, "exp": exp}).cot == exp


def test_textbook_citations_are_not_reasoning():
    """The explanations' citations ("(Ref Harrison 19/e p2032)", a "Reference: …" line) are cut out; a row whose
    citation cannot be cut out cleanly is dropped, and words that merely start with "ref" stay."""
    cases = {
        "Ans: C. c1(Ref: Harrison 19/e p2032, 18/e p2551)Because c1 works.": "Because c1 works.",
        "Because c1 works [Ref. Park 24/e p87].": "Because c1 works .",
        "Because c1 works.\n\nReference: Essentials of Medical Pharmacology 8th ed p94": "Because c1 works.",
        "Ref - Robbins 9/e p180\nBecause c1 works.": "Because c1 works.",
        "The refractory period refers to c1.": "The refractory period refers to c1.",
    }
    for exp, cot in cases.items():
        assert medmcqa_row({**MCQ, "exp": exp}).cot == cot, exp
    for exp in ("Because c1 works.Ref Harrison 19/e p2438 (Table 2", "See https://en.wikipedia.org/wiki/C1",
                "Ans: C. c1 (Ref: Harrison 19/e p2032)"):
        assert medmcqa_row({**MCQ, "exp": exp}) is None, exp


def test_pubmedqa_row_has_context_question_long_answer_and_decision():
    rec = {"QUESTION": "Does A cause B?", "CONTEXTS": ["ctx one", "ctx two"], "LONG_ANSWER": "A causes B.",
           "final_decision": "maybe"}
    row = pubmedqa_row("123", rec)
    assert row.id == "pubmedqa:123"
    assert "ctx one" in row.question and "Does A cause B?" in row.question
    assert row.cot == "A causes B." and row.answer == "The answer is maybe."


def test_o1_row_keeps_fields():
    row = o1_row(4, {"Question": "Q", "Complex_CoT": "C", "Response": "R"})
    assert (row.id, row.question, row.cot, row.answer) == ("medical_o1:4", "Q", "C", "R")


def test_normalize_question():
    assert normalize_question("  What's the  DRUG of choice?\n") == "what s the drug of choice"


def test_local_rows_from_data_dir(cfg):
    rows = load_local_rows(cfg)
    by = {}
    for r in rows:
        by.setdefault(r.source, []).append(r)
    assert len(by["medical_o1"]) == 10
    assert len(by["pubmedqa"]) == 500  # the non-test half of PQA-L
    assert len(by["medmcqa"]) > 1000 and all(r.cot for r in by["medmcqa"])
    assert not any(CITATION_LEFT.search(r.cot) for r in by["medmcqa"])
    assert len({r.id for r in rows}) == len(rows)


def test_app_prompt_shape_poses_a_row_exactly_as_the_evaluation_poses_its_item():
    """Training with ``prompt: app`` sees the messages Compare and the eval send for the same question: options
    under "Options:", the multiple-choice instructions, PubMedQA's abstract under its label with yes/no/maybe."""
    from eval.prompting import item_messages
    from medadapt.data.benchmark_items import BenchItem, pubmedqa_item
    from trainers.formatting import prompt_messages

    row = medmcqa_row(MCQ)
    item = BenchItem("medmcqa", "u1", MCQ["question"], {"A": "a1", "B": "b1", "C": "c1", "D": "d1"}, "C")
    assert prompt_messages(row.question, "app", posed=row.posed) == item_messages(item)
    assert prompt_messages(row.question, "bare", posed=row.posed) == [{"role": "user", "content": row.question}]
    rec = {"QUESTION": "Does A cause B?", "CONTEXTS": ["ctx one", "ctx two"], "LONG_ANSWER": "A causes B.",
           "final_decision": "maybe"}
    row = pubmedqa_row("123", rec)
    item = pubmedqa_item("123", rec["QUESTION"], rec["CONTEXTS"], "maybe")
    assert prompt_messages(row.question, "app", posed=row.posed) == item_messages(item)
    assert prompt_messages(row.question, "app", system_role=False, posed=row.posed) == item_messages(item, None, False)
