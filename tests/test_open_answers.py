"""Open questions answered as open questions (issue 37 point 6): the rows posed without options, the classifier of
answers that restate the question or name a letter never offered, and held-out prompts that touch neither the
evaluated items nor any training row."""
from __future__ import annotations

import pytest

from eval.open_answers import classify, names_letter, open_form, open_prompts, restates
from medadapt.config import load_config
from tests.conftest import DATA_DIR

QUESTION = "A 58-year-old woman has fatigue, pallor and a low MCV. What is the most likely cause and the first test to order?"


@pytest.mark.parametrize("raw,restate,letter", [
    ("<think>\nlow MCV\n</think>\n\nThe answer is A 58-year-old woman has fatigue, pallor and a low MCV.", True, None),
    ("<think>x</think>\n\nThe answer is B. Iron deficiency anemia", False, "B"),
    ("Answer: (C)", False, "C"),
    ("D. Serum ferritin", False, "D"),
    ("<think>x</think>\n\nThe answer is iron deficiency anemia; order a serum ferritin.", False, None),
    ("The answer is a fibroadenoma.", False, None),  # an article, not an option letter
    ("A 58-year-old woman has fatigue, pallor and a low MCV: iron deficiency from menorrhagia; check ferritin.",
     False, None),  # quotes the question, then answers it
])
def test_restated_questions_and_unoffered_letters_are_told_from_answers(raw, restate, letter):
    got = classify(raw, QUESTION)
    assert (got["restates"], got["letter"], got["failed"]) == (restate, letter, restate or letter is not None)


def test_an_unclosed_reasoning_is_unfinished_not_failed():
    got = classify("<think>\nThe patient has microcytic anemia and", QUESTION)
    assert got["unfinished"] and not got["failed"] and got["answer"] == ""
    assert names_letter("The answer is A 58-year-old woman") is None and restates("", QUESTION) is False


def test_open_rows_pose_medmcqa_and_pubmedqa_without_options():
    from medadapt.data.sft import load_sft_rows, medmcqa_open_row, prose_answer, stands_alone

    cfg = load_config("offline", {"paths": {"data_dir": str(DATA_DIR)}})
    rec = {"id": "x1", "question": "Drug of choice for absence seizures is:", "exp": "Ethosuximide blocks T-type Ca "
           "channels in thalamic neurons.", "cop": 2, "opa": "Phenytoin", "opb": "Ethosuximide", "opc": "Carbamazepine",
           "opd": "Phenobarbitone", "subject_name": "Pharmacology"}
    row = medmcqa_open_row(rec)
    assert row.posed == {"question": rec["question"]} and row.answer == "The answer is Ethosuximide."
    assert medmcqa_open_row(dict(rec, question="All of the following are anticonvulsants except:")) is None
    assert not stands_alone("Which of the following is true about absence seizures?")
    assert prose_answer("A fibroadenoma.") == "The answer is a fibroadenoma."
    pub = load_sft_rows(cfg, ["local:pubmedqa_open[:3]"])
    assert len(pub) == 3 and all(r.posed == {"question": r.question} for r in pub)
    assert all(r.answer.split(".")[0] in ("Yes", "No", "Maybe") and len(r.answer.split()) > 5 for r in pub)


def test_held_out_open_prompts_touch_no_evaluated_item_and_no_training_row():
    from medadapt.data.benchmarks import evaluated_items, load_benchmark
    from medadapt.data.sft import LOCAL_SOURCES, check_disjoint, load_local_rows

    cfg = load_config("offline", {"paths": {"data_dir": str(DATA_DIR)}})
    val, test = open_prompts(cfg, "validation", 20), open_prompts(cfg, "test", 20)
    assert len(val) == len(test) == 20 and not {p.id for p in val} & {p.id for p in test}
    evaluated = {f"{b}/{i.id}" for b, items in evaluated_items(cfg).items() for i in items}
    assert not evaluated & {p.id for p in val + test}
    items = {f"medqa/{i.id}": i for i in load_benchmark(cfg, "medqa")}
    items.update({f"medmcqa/{i.id}": i for i in load_benchmark(cfg, "medmcqa")})
    chosen = [items[p.id] for p in val + test]
    assert not check_disjoint(load_local_rows(cfg, LOCAL_SOURCES), chosen)
    medqa = next(p for p in test if p.id.startswith("medqa/"))
    assert "following" not in medqa.question.lower() and open_form(items[medqa.id]) == medqa.question
