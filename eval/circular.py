"""Circular evaluation: an item scored under every cyclic rotation of its options, and the two views it gives.

Rotation ``r`` shows, at display position ``i`` (letter ``letters[i]``), the option that is ``letters[(i + r) % k]``
in the original order; the letters themselves stay where they are. Over the ``k`` rotations every option stands once
at every position, so a prior over positions/letters is the same for every option:

- ``circular``: right only when the gold option wins under every rotation (MMBench's CircularEval, as OpenCompass
  reports it). A model that always says "A" is right under one rotation at most.
- ``debiased``: the option whose log-probability (renormalized over the options) averaged over its ``k`` positions is
  highest: permutation debiasing (PriDe, Zheng et al. ICLR 2024, with the full cyclic set). A letter prior that adds
  the same log-bias to a position on every input cancels exactly.

Pure (no model): rows store each rotation's letter log-probabilities (``logprobs.rotations``), so both views can be
recomputed from a results file.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from eval.scoring import choose, option_probs

INCONSISTENT = "inconsistent"  # the circular view's prediction when the rotations disagree


def rotate(options: dict[str, str], answer: str, r: int) -> tuple[dict[str, str], str]:
    """``(options, answer)`` under rotation ``r``: display position ``i`` shows original option ``(i + r) % k``."""
    letters, texts = list(options), list(options.values())
    k = len(letters)
    shown = {letters[i]: texts[(i + r) % k] for i in range(k)}
    return shown, letters[(letters.index(answer) - r) % k]


def to_original(display: Sequence[float], r: int) -> list[float]:
    """Scores indexed by display position under rotation ``r``, re-indexed by original option."""
    k = len(display)
    return [display[(o - r) % k] for o in range(k)]


def circular_view(rotations: Sequence[Sequence[float]], letters: Sequence[str], answer: str) -> dict:
    """``rotations[r]``: the letter log-probabilities (display order) under rotation ``r`` (``r = 0`` the original).
    Right when the gold option is chosen under every rotation; ``pred`` is the option chosen under all of them, or
    :data:`INCONSISTENT`."""
    picks = {letters[(choose(lps) + r) % len(letters)] for r, lps in enumerate(rotations)}
    pred = next(iter(picks)) if len(picks) == 1 else INCONSISTENT
    return {"pred": pred, "correct": pred == answer, "invalid": False}


def debiased_scores(rotations: Sequence[Sequence[float]]) -> list[float]:
    """Per original option: the mean over rotations of its log-probability, renormalized over the options."""
    k = len(rotations[0])
    per = [to_original([math.log(max(p, 1e-300)) for p in option_probs(lps)], r) for r, lps in enumerate(rotations)]
    return [sum(x[o] for x in per) / len(per) for o in range(k)]


def debiased_view(rotations: Sequence[Sequence[float]], letters: Sequence[str], answer: str) -> dict:
    pred = letters[choose(debiased_scores(rotations))]
    return {"pred": pred, "correct": pred == answer, "invalid": False}
