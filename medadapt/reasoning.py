"""Split a model's output into chain of thought and final answer, and read which option the answer commits to.

Pure functions, no I/O. Handles four shapes of output:
``<think>…</think> answer`` · ``…</think> answer`` (the chat template opened ``<think>`` itself) ·
plain text without tags (no separate reasoning) · ``<think>…`` cut off before ``</think>`` (flagged ``truncated``).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Reasoned:
    reasoning: str  # chain of thought ("" when the model gave none)
    answer: str  # the text after the reasoning
    truncated: bool  # the output stopped inside the reasoning, before </think>
    has_tags: bool  # any think tag was seen (or forced by the template)


def split_reasoning(text: str, opened: bool = False) -> Reasoned:
    """Split ``text``; ``opened`` says the prompt already ended with ``<think>`` (R1-style templates)."""
    start, end = text.find(OPEN), text.find(CLOSE)
    if start >= 0 and (end < 0 or start < end):
        body_from = start + len(OPEN)
        end = text.find(CLOSE, body_from)
        if end < 0:
            return Reasoned(text[body_from:].strip(), "", True, True)
        return Reasoned(text[body_from:end].strip(), text[end + len(CLOSE):].strip(), False, True)
    if end >= 0:  # a closing tag first: the template opened <think>
        return Reasoned(text[:end].strip(), text[end + len(CLOSE):].strip(), False, True)
    if opened:  # template opened <think> and the model never closed it
        return Reasoned(text.strip(), "", True, True)
    return Reasoned("", text.strip(), False, False)


# ---------------------------------------------------------------- the option an answer commits to
#
# The one answer parser of the project (eval's cot scoring, its tests). It reads only the answer part (after the
# reasoning, and after any later ``</think>`` of a model that closed its reasoning twice); an output whose reasoning
# never closed is truncated: no final answer, ``(None, "truncated")``. On the answer the filters run in order,
# strict first; the first that finds a valid option letter wins, none gives ``(None, "invalid")``:
#
# 1. ``strict``: the last ``Answer: X`` / ``Answer: (X)`` / ``**Answer:** X``.
# 2. ``boxed``: the last ``\boxed{X}`` (R1-style models).
# 3. ``answer_phrase``: "the answer is X", "correct option is (X)", "answer: option X".
# 4. ``leading_letter``: the answer starts with ``X.``, ``X)``, ``X:``, ``(X)`` or a bare letter on its own line
#    (not the article in "A 45-year-old …").
# 5. ``option_text``: exactly one option's text appears in the answer (e.g. "yes" for PubMedQA).


def _letters(options: dict[str, str]) -> str:
    return f"[{''.join(options)}]"


def strict(text: str, options: dict[str, str]) -> str | None:
    L = _letters(options)
    hits = re.findall(rf"\b(?i:answer)\s*\**\s*:\s*\**\s*[\(\[]?({L})[\)\]]?\**(?![A-Za-z0-9])", text)
    return hits[-1] if hits else None


def boxed(text: str, options: dict[str, str]) -> str | None:
    hits = re.findall(rf"\\boxed\{{\s*(?:\\text\{{)?\(?({_letters(options)})\)?\}}?\s*\}}", text)
    return hits[-1] if hits else None


def answer_phrase(text: str, options: dict[str, str]) -> str | None:
    L = _letters(options)
    pat = (rf"(?i:answer|option|choice)\s*(?i:is|would be|:)?\s*(?i:option|choice)?\s*[:\-]?\s*\(?\**({L})\**\)?"
           r"(?![A-Za-z0-9])")
    hits = re.findall(pat, text)
    return hits[-1] if hits else None


def leading_letter(text: str, options: dict[str, str]) -> str | None:
    m = re.match(rf"^\W*\(?({_letters(options)})\)?(?:[.):]|\s*$|\s*\n)", text.strip())  # not "A 45-year-old …"
    return m.group(1) if m else None


def option_text(text: str, options: dict[str, str]) -> str | None:
    low = text.lower()
    found = [k for k, v in options.items() if v and re.search(rf"(?<![a-z]){re.escape(v.lower())}(?![a-z])", low)]
    return found[0] if len(found) == 1 else None


FILTERS: tuple[tuple[str, Callable[[str, dict[str, str]], str | None]], ...] = (
    ("strict", strict), ("boxed", boxed), ("answer_phrase", answer_phrase), ("leading_letter", leading_letter),
    ("option_text", option_text),
)


def extract_answer(text: str, options: dict[str, str], opened: bool = False) -> tuple[str | None, str]:
    """``(letter, filter name)`` for a generated output; ``(None, "truncated"|"invalid")`` when there is none.

    ``opened``: the prompt already ended with ``<think>`` (see :func:`split_reasoning`).
    """
    parts = split_reasoning(text, opened)
    if parts.truncated:
        return None, "truncated"
    answer = parts.answer.rsplit(CLOSE, 1)[-1].strip()
    for name, fn in FILTERS:
        letter = fn(answer, options)
        if letter in options:
            return letter, name
    return None, "invalid"


def cited_numbers(answer: str, k: int) -> list[int]:
    """Snippet numbers ``[n]`` (also ``[1, 3]`` and ``[2-3]``) cited in the answer, within 1..k, in order."""
    found: list[int] = []
    for group in re.findall(r"\[(\d+(?:\s*[-,–]\s*\d+)*)\]", answer):
        for part in re.split(r"\s*,\s*", group):
            if re.search(r"[-–]", part):
                a, b = (int(x) for x in re.split(r"\s*[-–]\s*", part))
                nums = range(a, b + 1) if a <= b and b - a < 50 else []
            else:
                nums = [int(part)]
            found.extend(n for n in nums if 1 <= n <= k and n not in found)
    return found
