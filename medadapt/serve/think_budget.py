"""Thinking budget: a row still reasoning after ``budget`` tokens inside ``<think>`` gets ``</think>`` forced, then
answers (s1's budget forcing, Muennighoff et al. 2025; llama.cpp's reasoning-budget sampler, vLLM's
``thinking_token_budget``, SGLang's thinking-budget logit processor).

A small model decoding greedily can repeat itself inside its reasoning until the token limit and never answer; a
budget turns that into an answer after a bounded reasoning. Per row: *idle* until the reasoning opens (at once when
the prompt already opened ``<think>``, R1-style), then *counting* its tokens, *done* when the model closes it itself;
at the budget the closing text (``\\n</think>\\n\\n``, the trained format's) is emitted token by token in place of the
sampled ones, and the row goes on to its answer within its max new tokens. Rows that never open ``<think>`` (a model
without reasoning) are never touched. The decode loop (:class:`medadapt.serve.batching.Batcher`) passes every token through
:meth:`BudgetRows.token`.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from medadapt.reasoning import CLOSE, OPEN

FORCED_TEXT = f"\n{CLOSE}\n\n"  # what closes an over-budget reasoning: the SFT format's "<cot>\n</think>\n\n<answer>"
WINDOW = 12  # tokens decoded to look for a tag (a tag is at most a few tokens in any tokenizer used here)


@dataclass(frozen=True)
class ThinkBudget:
    """One model's budget rule: ``budget`` tokens inside the reasoning (> 0), the ids forced at the budget,
    ``decode(ids) -> text`` (special tokens kept) and whether the prompt itself opens ``<think>``."""

    budget: int
    forced_ids: tuple[int, ...]
    decode: Callable[[list[int]], str]
    opened: bool = False

    @classmethod
    def for_tokenizer(cls, budget: int, tokenizer, opened: bool) -> ThinkBudget:
        """The rule of ``budget`` (> 0) tokens for ``tokenizer``."""
        ids = tokenizer(FORCED_TEXT, add_special_tokens=False)["input_ids"]
        return cls(budget, tuple(ids), lambda t: tokenizer.decode(t, skip_special_tokens=False), opened)

    def rows(self, n: int) -> BudgetRows:
        return BudgetRows(self, n)


class BudgetRows:
    """The budget's state for the rows of one generation."""

    def __init__(self, rule: ThinkBudget, n: int) -> None:
        self.rule = rule
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.start: list[int | None] = [0 if rule.opened else None] * n  # token count when the reasoning opened
        self.done = [False] * n  # closed, by the model or by force: pass through
        self.pending: list[deque[int]] = [deque() for _ in range(n)]
        self.forced = [False] * n  # the budget closed this row's reasoning

    def token(self, row: int, picked: int) -> int:
        """The token row ``row`` emits: the next forced one while the closing text is pending, else ``picked``."""
        pending = self.pending[row]
        tok = pending.popleft() if pending else picked
        ids = self.ids[row]
        ids.append(tok)
        if self.done[row]:
            return tok
        if self.start[row] is None:
            if OPEN in self.rule.decode(ids[-WINDOW:]):
                self.start[row] = len(ids)
            return tok
        if CLOSE in self.rule.decode(ids[max(self.start[row], len(ids) - WINDOW):]):  # closed by the model
            self.done[row] = True
        elif len(ids) - self.start[row] >= self.rule.budget:
            pending.extend(self.rule.forced_ids)
            self.done[row] = self.forced[row] = True
        return tok
