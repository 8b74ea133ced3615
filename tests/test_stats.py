"""Statistics against reference values computed with scipy.stats (numbers copied into the asserts)."""
from __future__ import annotations

import pytest

from eval.stats import (accuracy_summary, binom_two_sided_half, chance_baseline, majority_baseline,
                        mcnemar_exact, wilson_interval)


def test_wilson_known_values():
    # scipy.stats.binomtest(61, 200).proportion_ci(method="wilson") = (0.2453642, 0.3719855)
    lo, hi = wilson_interval(61, 200)
    assert lo == pytest.approx(0.2453642, abs=1e-6) and hi == pytest.approx(0.3719855, abs=1e-6)
    # binomtest(0, 10).proportion_ci(method="wilson") = (0.0, 0.2775328)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775328, abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # binomtest(100, 200) Wilson = (0.4313609, 0.5686391): ±6.9 points at n=200
    lo, hi = wilson_interval(100, 200)
    assert lo == pytest.approx(0.4313609, abs=1e-6) and hi == pytest.approx(0.5686391, abs=1e-6)


def test_exact_binomial_and_mcnemar():
    # scipy.stats.binomtest(2, 12, 0.5).pvalue = 0.03857421875 (= 2 * 79 / 4096)
    assert binom_two_sided_half(2, 12) == pytest.approx(0.03857421875)
    assert binom_two_sided_half(10, 12) == pytest.approx(0.03857421875)
    assert binom_two_sided_half(3, 6) == 1.0
    assert binom_two_sided_half(0, 0) == 1.0
    # exact McNemar on the 2x2 [[5, 2], [10, 3]] = binomtest(2, 12).pvalue: b=2, c=10
    a = [True] * 5 + [True] * 2 + [False] * 10 + [False] * 3
    b = [True] * 5 + [False] * 2 + [True] * 10 + [False] * 3
    res = mcnemar_exact(a, b)
    assert (res["n"], res["only_a"], res["only_b"]) == (20, 2, 10)
    assert res["p"] == pytest.approx(0.03857421875)
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_baselines_and_summary():
    assert chance_baseline([4, 4, 3]) == pytest.approx((0.25 + 0.25 + 1 / 3) / 3)
    assert majority_baseline(["A", "B", "A", "C"]) == ("A", 0.5)
    s = accuracy_summary([True, False, True, False], [False, True, False, False])
    assert (s["n"], s["correct"], s["acc"], s["invalid"], s["invalid_rate"]) == (4, 2, 0.5, 1, 0.25)
    assert s["ci_low"] < 0.5 < s["ci_high"]




def test_benjamini_hochberg_and_detectable_difference():
    from eval.stats import benjamini_hochberg, detectable_difference

    # R's p.adjust(c(0.01, 0.04, 0.03, 0.005), "BH") = 0.02 0.04 0.04 0.02
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg([0.5, 1.0]) == [1.0, 1.0] and benjamini_hochberg([]) == []
    # the figures: ~10% discordant of 800 items -> ~3 points; 30% of 200 -> ~11 points
    assert 100 * detectable_difference(800, 80) == pytest.approx(3.13, abs=0.01)
    assert 100 * detectable_difference(200, 60) == pytest.approx(10.85, abs=0.01)
    assert detectable_difference(800, 0) == detectable_difference(800, 1)  # never 0: what n allows at least
