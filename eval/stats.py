"""Pure statistics for evaluation results: Wilson intervals, exact McNemar, paired differences, baselines."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% (by default) Wilson score interval for ``k`` successes out of ``n``; (0, 1) when ``n == 0``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binom_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` out of ``n`` under Binomial(n, 1/2): min(1, 2 * P(X <= min(k, n-k)))."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """Paired exact McNemar test on two variants' per-item correctness (same items, same order).

    ``b`` = items only A got right, ``c`` = items only B got right; p is the exact binomial test of b vs c.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired test needs the same items: {len(a_correct)} vs {len(b_correct)}")
    b = sum(1 for x, y in zip(a_correct, b_correct) if x and not y)
    c = sum(1 for x, y in zip(a_correct, b_correct) if y and not x)
    return {"n": len(a_correct), "only_a": b, "only_b": c, "p": binom_two_sided_half(b, b + c)}


def chance_baseline(option_counts: Sequence[int]) -> float:
    """Expected accuracy of a uniform random guesser: the mean of 1/k over items."""
    return sum(1 / k for k in option_counts) / len(option_counts) if option_counts else 0.0


def majority_baseline(answers: Sequence[str]) -> tuple[str, float]:
    """The most frequent gold letter on these items and the accuracy of always answering it."""
    if not answers:
        return "", 0.0
    letter, count = Counter(answers).most_common(1)[0]
    return letter, count / len(answers)


def accuracy_summary(correct: Sequence[bool], invalid: Sequence[bool] | None = None) -> dict:
    """``{n, correct, acc, ci_low, ci_high, invalid, invalid_rate}`` for one variant on one set of items."""
    n, k = len(correct), sum(bool(c) for c in correct)
    bad = sum(bool(i) for i in invalid) if invalid is not None else 0
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "acc": k / n if n else 0.0, "ci_low": lo, "ci_high": hi,
            "invalid": bad, "invalid_rate": bad / n if n else 0.0}


def paired_difference(a_correct: Sequence[bool], b_correct: Sequence[bool], z: float = 1.959963984540054) -> dict:
    """Accuracy of B minus accuracy of A on the same items, with a 95% Wald interval for paired proportions
    (``se = sqrt((only_a + only_b) - (only_b - only_a)^2 / n) / n``) and the exact McNemar p-value."""
    t = mcnemar_exact(a_correct, b_correct)
    n, b, c = t["n"], t["only_a"], t["only_b"]
    diff = (c - b) / n if n else 0.0
    se = math.sqrt(max(0.0, (b + c) - (c - b) ** 2 / n)) / n if n else 0.0
    return {**t, "diff": diff, "ci_low": diff - z * se, "ci_high": diff + z * se}


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q), in the input order: ``q_(i) = min_{j >= i} p_(j) * m / j``."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, pvalues[i] * m / rank)
        q[i] = min(1.0, running)
    return q


Z_80 = 0.8416212335729143  # the normal quantile for 80% power


def detectable_difference(n: int, discordant: int, z: float = 1.959963984540054, z_power: float = Z_80) -> float:
    """The smallest accuracy difference a paired test on ``n`` items detects with 80% power at two-sided 5%:
    ``(z_a/2 + z_b) * sqrt(d / n)``, with ``d`` the share of items on which the two variants disagree in
    correctness (McNemar's discordant pairs; at least one pair counted, so a pair that never disagrees still shows
    what n allows)."""
    if n <= 0:
        return 1.0
    share = max(discordant, 1) / n
    return min(1.0, (z + z_power) * math.sqrt(share / n))
