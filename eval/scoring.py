"""Pure scoring: answer extraction for generated text (a chain of small named filters) and log-likelihood choices.

Generated answers are read only from the text after the reasoning: after the last ``</think>`` when there is one.
An output that opens ``<think>`` (or whose chat template opens it) and never closes it is truncated reasoning: it
has no final answer and is scored wrong and **invalid**. On the answer text the filters run in order, strict first:

1. ``strict``: the last ``Answer: X`` / ``Answer: (X)`` / ``**Answer:** X``.
2. ``answer_phrase``: "the answer is X", "correct option is (X)", "answer: option X".
3. ``leading_letter``: the answer text starts with ``X.``, ``X)``, ``X:``, ``(X)`` or a bare letter on its own line
   (not the article in "A 45-year-old …").
4. ``option_text``: exactly one option's text appears in the answer text (e.g. "yes" for PubMedQA).

The first filter that finds a valid option letter wins; none → ``(None, "invalid")``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def answer_section(text: str, opens_think: bool = False) -> tuple[str, bool]:
    """``(answer text, truncated)``: the text after the last ``</think>``; truncated when reasoning never closed."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1].strip(), False
    if opens_think or THINK_OPEN in text:
        return "", True
    return text.strip(), False


def _letters_pattern(letters: str) -> str:
    return f"[{letters}]"


def strict(text: str, options: dict[str, str]) -> str | None:
    L = _letters_pattern("".join(options))
    hits = re.findall(rf"\b(?i:answer)\s*\**\s*:\s*\**\s*[\(\[]?({L})[\)\]]?\**(?![A-Za-z0-9])", text)
    return hits[-1] if hits else None


def answer_phrase(text: str, options: dict[str, str]) -> str | None:
    L = _letters_pattern("".join(options))
    pat = (rf"(?i:answer|option|choice)\s*(?i:is|would be|:)?\s*(?i:option|choice)?\s*[:\-]?\s*\(?\**({L})\**\)?"
           r"(?![A-Za-z0-9])")
    hits = re.findall(pat, text)
    return hits[-1] if hits else None


def leading_letter(text: str, options: dict[str, str]) -> str | None:
    L = _letters_pattern("".join(options))
    m = re.match(rf"^\W*\(?({L})\)?(?:[.):]|\s*$|\s*\n)", text.strip())  # not "A 45-year-old …"
    return m.group(1) if m else None


def option_text(text: str, options: dict[str, str]) -> str | None:
    low = text.lower()
    found = [k for k, v in options.items() if v and re.search(rf"(?<![a-z]){re.escape(v.lower())}(?![a-z])", low)]
    return found[0] if len(found) == 1 else None


FILTERS: tuple[tuple[str, Callable[[str, dict[str, str]], str | None]], ...] = (
    ("strict", strict), ("answer_phrase", answer_phrase), ("leading_letter", leading_letter),
    ("option_text", option_text),
)


def extract_answer(text: str, options: dict[str, str], opens_think: bool = False) -> tuple[str | None, str]:
    """``(letter, filter name)`` for a generated output; ``(None, "truncated"|"invalid")`` when there is none."""
    answer, truncated = answer_section(text, opens_think)
    if truncated:
        return None, "truncated"
    for name, fn in FILTERS:
        letter = fn(answer, options)
        if letter in options:
            return letter, name
    return None, "invalid"


# ---------------------------------------------------------------- log-likelihood choices

def choose(logprobs: Sequence[float], lengths: Sequence[int] | None = None) -> int:
    """Index of the best option: highest total log-probability, or per unit of ``lengths`` (acc_norm) when given."""
    if lengths is not None:
        scores = [lp / max(1, n) for lp, n in zip(logprobs, lengths)]
    else:
        scores = list(logprobs)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def option_probs(logprobs: Sequence[float]) -> list[float]:
    """Softmax of the options' log-probabilities (renormalized over the options)."""
    m = max(logprobs)
    exps = [math.exp(x - m) for x in logprobs]
    total = sum(exps)
    return [e / total for e in exps]
