"""The thinking budget's per-row state machine (``medadapt.serve.think_budget``) on a token vocabulary whose tags span
several tokens, as they do in SmolLM2's tokenizer."""
from __future__ import annotations

from medadapt.serve.think_budget import ThinkBudget

VOCAB = ["x", "<th", "ink>", "</th", "ink>", "\n", "y"]
X, OPEN_A, OPEN_B, CLOSE_A, CLOSE_B, NL, Y = range(len(VOCAB))
FORCED = (NL, CLOSE_A, CLOSE_B, NL)


def rule(budget: int, opened: bool) -> ThinkBudget:
    return ThinkBudget(budget, FORCED, lambda ids: "".join(VOCAB[i] for i in ids), opened)


def emit(rows, row: int, picked: list[int]) -> list[int]:
    return [rows.token(row, t) for t in picked]


def test_an_opened_prompt_is_closed_after_the_budget_then_passes_through():
    rows = rule(3, opened=True).rows(1)
    out = emit(rows, 0, [X] * 10)
    assert out == [X, X, X, *FORCED, X, X, X]  # three reasoning tokens, the forced closing, then the model again
    assert rows.forced == [True]


def test_the_budget_counts_from_the_tag_the_model_writes():
    rows = rule(2, opened=False).rows(1)
    out = emit(rows, 0, [Y, Y, Y, OPEN_A, OPEN_B] + [X] * 8)
    assert out == [Y, Y, Y, OPEN_A, OPEN_B, X, X, *FORCED, X, X]


def test_a_reasoning_the_model_closes_itself_and_a_row_without_one_are_untouched():
    closes = [OPEN_A, OPEN_B, X, CLOSE_A, CLOSE_B] + [X] * 9
    rows = rule(4, opened=False).rows(3)
    assert emit(rows, 0, closes) == closes  # closed after one reasoning token: never forced, however long after
    assert emit(rows, 1, [Y] * 12) == [Y] * 12  # no reasoning at all (a model without <think>)
    assert emit(rows, 2, [X] * 6) == [X] * 6  # not opened: counting never starts
    assert rows.forced == [False, False, False]


def test_rows_keep_their_own_state():
    rows = rule(2, opened=True).rows(2)
    a = [rows.token(0, X), rows.token(1, CLOSE_A), rows.token(0, X), rows.token(1, CLOSE_B), rows.token(0, Y),
         rows.token(1, X), rows.token(1, X)]
    assert a == [X, CLOSE_A, X, CLOSE_B, FORCED[0], X, X]
    assert rows.forced == [True, False]
