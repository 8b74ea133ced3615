"""Split a model's output into chain of thought and final answer, and read what the answer commits to.

Pure functions, no I/O. Handles four shapes of output:
``<think>…</think> answer`` · ``…</think> answer`` (the chat template opened ``<think>`` itself) ·
plain text without tags (no separate reasoning) · ``<think>…`` cut off before ``</think>`` (flagged ``truncated``).
"""
from __future__ import annotations

import re
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


# Strict first, then lenient fallbacks; each pattern's first group is the letter.
_STRICT = [
    r"(?:final\s+)?answer\s*(?:is|:)\s*\**\s*\(?([A-J])\)?(?![A-Za-z])",
    r"\\boxed\{\s*\(?([A-J])\)?\s*\}",
]
_LENIENT = [
    r"(?:option|choice)\s*\(?([A-J])\)?(?![A-Za-z])",
    r"^\s*\**\(?([A-J])\)?[\.\):\*]",
    r"\(([A-J])\)",
    r"(?<![A-Za-z])([A-J])(?![A-Za-z'])",
]


def extract_choice(answer: str, letters: str = "ABCD", options: dict[str, str] | None = None) -> str | None:
    """The option letter an answer commits to, or None. Reads only ``answer`` (the text after the reasoning).

    Order: "Answer: X"-style statements (the last one wins), then "option X", a leading "X.", "(X)", a lone
    capital letter, and finally an option's full text quoted in the answer.
    """
    valid = set(letters)
    for pattern in _STRICT:
        hits = [m.group(1) for m in re.finditer(pattern, answer, re.IGNORECASE)]
        hits = [h.upper() for h in hits if h.upper() in valid]
        if hits:
            return hits[-1]
    for pattern in _LENIENT:
        flags = re.MULTILINE | (re.IGNORECASE if "option" in pattern else 0)
        hits = [m.group(1).upper() for m in re.finditer(pattern, answer, flags)]
        hits = [h for h in hits if h in valid]
        if hits:
            return hits[0]
    if options:
        low = answer.lower()
        found = [k for k, v in options.items() if v and v.lower() in low and k in valid]
        if len(found) == 1:
            return found[0]
    return None


def extract_yes_no(answer: str) -> str | None:
    """PubMedQA-style decision (yes/no/maybe) stated in the answer, or None."""
    m = re.search(r"answer\s*(?:is|:)\s*\**\s*(yes|no|maybe)\b", answer, re.IGNORECASE) or re.search(
        r"\b(yes|no|maybe)\b", answer, re.IGNORECASE
    )
    return m.group(1).lower() if m else None


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
