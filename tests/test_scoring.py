"""The answer parser on tricky generated outputs, and option choice from log-likelihoods."""
from __future__ import annotations

import math

import pytest

from eval.scoring import choose, option_probs
from medadapt.reasoning import extract_answer

ABCD = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Alteplase"}
YNM = {"A": "yes", "B": "no", "C": "maybe"}


@pytest.mark.parametrize("text,expected,how", [
    ("<think>The answer is A, clearly. Answer: A</think>\nAnswer: C", "C", "strict"),  # letter in reasoning ≠ after
    ("<think>Option B fits.</think> The final answer is (D).", "D", "answer_phrase"),
    ("Answer: (C)", "C", "strict"),
    ("**Answer:** B", "B", "strict"),
    ("Final answer: [D]", "D", "strict"),
    ("Step 1: A is wrong. B is wrong.\nAnswer: C", "C", "strict"),  # no tags: the last Answer: line
    ("Answer: A\nWait, on reflection. Answer: B", "B", "strict"),  # the last statement wins
    ("C. Warfarin, because of its long half-life.", "C", "leading_letter"),
    ("(B)", "B", "leading_letter"),
    ("B\nbecause heparin acts fast", "B", "leading_letter"),
    ("A 45-year-old man most likely has a stroke.", None, "invalid"),  # the article is not an answer
    ("I would give warfarin here.", "C", "option_text"),
    ("<think>unfinished reasoning, answer is A", None, "truncated"),  # missing </think>
    ("Answer: E", None, "invalid"),  # not an option
    ("I am not sure.", None, "invalid"),
    ("answer: a patient with chest pain", None, "invalid"),  # lowercase article is not a letter
    (r"So the answer is \boxed{D}", "D", "boxed"),  # R1-style
    ("<think>Maybe the answer is A... no, A is wrong.</think>The answer is C.", "C", "answer_phrase"),
    ("I pick option C because of its half-life", "C", "answer_phrase"),
])
def test_extract_answer(text, expected, how):
    assert extract_answer(text, ABCD) == (expected, how)


def test_truncated_when_template_opened_think():
    assert extract_answer("reasoning without a close tag, Answer: B", ABCD, opened=True) == (None, "truncated")
    assert extract_answer("reasoning</think>Answer: B", ABCD, opened=True) == ("B", "strict")


def test_pubmedqa_text_answers():
    assert extract_answer("<think>could be yes</think>The answer is no.", YNM) == ("B", "option_text")
    assert extract_answer("Answer: C", YNM) == ("C", "strict")
    assert extract_answer("Answer: D", YNM) == (None, "invalid")  # only A-C exist
    assert extract_answer("yes or no? maybe", YNM) == (None, "invalid")  # ambiguous


def test_answer_after_the_last_close_tag():
    assert extract_answer("<think>a</think>Answer: A</think> Answer: C", ABCD) == ("C", "strict")
    assert extract_answer("Answer: D", ABCD) == ("D", "strict")


def test_choose_and_norm():
    assert choose([-3.0, -1.0, -2.0]) == 1
    # per-length normalization flips the choice: -4 over 8 bytes beats -3 over 2 bytes
    assert choose([-3.0, -4.0], lengths=[2, 8]) == 1
    assert choose([-1.0, -1.0]) == 0  # ties go to the first option
    probs = option_probs([math.log(0.2), math.log(0.6)])
    assert probs == pytest.approx([0.25, 0.75])
