"""What each adaptation buys: its gain over base in every scoring view, corrected for the comparisons a page shows,
checked against the letter prior, and a verdict written from those numbers.

For every variant against base (and MSFT against SFT: what continual pretraining adds) this module computes the
accuracy difference per view and benchmark on the items both answered in that view, with a 95% CI, the exact McNemar
p-value, its Benjamini-Hochberg q over **every comparison the Benchmarks page shows** (every pair of variants x view x
benchmark and all items: :func:`page_tests`) and the smallest difference the test detects with 80% power at that n.

:func:`explain` turns the pooled numbers into sentences under explicit rules. A difference is called significant only
with q < 0.05, and a gain counts as evidence of knowledge only when it survives the prior checks in its view:

- *prior-free views agree*: a gain under ``letter`` or content-free calibrated ``letter_cal`` must also be positive
  under each prior-free view the file holds (batch-calibrated, circular, debiased), which a letter prior cannot raise;
- *not the favourite answer*: the variant's favourite answer in the view (its most frequent prediction) is split out:
  the gain must also be positive on the items whose gold answer is something else (a model that moved to answering
  "A" more often gains exactly on the gold-"A" items);
- *not a constant view*: a benchmark on which either variant gives one answer to at least 90% of items says nothing
  there; the gain must hold without such benchmarks.

MSFT - SFT gets the same checks. Losses are named, and a calibrated loss that the prior-free views do not confirm is
said to be the prior's. "No significant difference" comes with the detectable difference. Pure: no I/O, no plotting.
"""
from __future__ import annotations

from itertools import combinations

from medadapt.variants import variant_label
from eval.report import ALL, benchmarks_of, done_variants, favourite_answer, scored_rows
from eval.stats import benjamini_hochberg, detectable_difference, paired_difference
from eval.views import GENERATED_VIEWS, PRIOR_FREE_VIEWS, PRIOR_SENSITIVE_VIEWS, view_label, views_of

ALPHA = 0.05
CONSTANT_SHARE = 0.9  # a view in which a variant gives one answer to this share of a benchmark's items is constant
PAIRS_AFTER_BASE = (("sft", "msft"),)  # extra comparisons: what MSFT's continual pretraining adds over SFT


def comparisons(results: dict, baseline: str = "base") -> list[tuple[str, str]]:
    """``(a, b)`` pairs to decompose: every finished variant against ``baseline``, then MSFT against SFT."""
    done = done_variants(results)
    pairs = [(baseline, v) for v in done if v != baseline] if baseline in done else []
    return pairs + [(a, b) for a, b in PAIRS_AFTER_BASE if a in done and b in done]


def _correct(results: dict, variant: str, bench: str, view: str) -> dict[str, bool]:
    return {r["id"]: r["correct"] for r in scored_rows(results, variant, bench, view)}


def gain(results: dict, a: str, b: str, view: str, benchmark: str = ALL,
         keep=lambda bench, item_id: True) -> dict | None:
    """B minus A in ``view`` on ``benchmark`` (or all items), paired on the items both were scored on (and that
    ``keep(bench, id)`` accepts), with the detectable difference ``mdd`` at 80% power."""
    benches = benchmarks_of(results) if benchmark == ALL else [benchmark]
    xa, xb = [], []
    for bench in benches:
        ra, rb = _correct(results, a, bench, view), _correct(results, b, bench, view)
        common = [i for i in ra if i in rb and keep(bench, i)]
        xa += [ra[i] for i in common]
        xb += [rb[i] for i in common]
    if not xa:
        return None
    d = paired_difference(xa, xb)
    return {"a": a, "b": b, "view": view, "benchmark": benchmark, **d,
            "mdd": detectable_difference(d["n"], d["only_a"] + d["only_b"])}


_PAGE_TESTS: list[tuple[dict, dict]] = []  # (results, its tests): the last few results objects asked about
_PAGE_TESTS_KEPT = 4


def page_tests(results: dict) -> dict[tuple[str, str, str, str], dict]:
    """Every comparison the Benchmarks page shows, ``(a, b, view, benchmark) -> gain``, each with its q (BH over
    all of them): every pair of finished variants (in display order, so base and SFT come first) x every view x every
    benchmark and all items. Computed once per results object (the Benchmarks tab keeps each file's parsed object and
    asks four times per event: ~1 s of CPU each on a 4 MB file); treat both as read-only."""
    hit = next((tests for res, tests in _PAGE_TESTS if res is results), None)
    if hit is not None:
        return hit
    tests = _page_tests(results)
    _PAGE_TESTS.append((results, tests))
    del _PAGE_TESTS[:-_PAGE_TESTS_KEPT]
    return tests


def _page_tests(results: dict) -> dict[tuple[str, str, str, str], dict]:
    tests = {}
    for a, b in combinations(done_variants(results), 2):
        for view in views_of(results):
            for bench in benchmarks_of(results) + [ALL]:
                g = gain(results, a, b, view, bench)
                if g is not None:
                    tests[(a, b, view, bench)] = g
    qs = benjamini_hochberg([g["p"] for g in tests.values()])
    for g, q in zip(tests.values(), qs):
        g["q"] = q
        g["family"] = len(qs)
    return tests


def decomposition(results: dict, baseline: str = "base", tests: dict | None = None) -> list[dict]:
    """Every comparison (variant - base, MSFT - SFT) x view x (benchmark and all items) that has common items,
    with q over the page's family."""
    tests = page_tests(results) if tests is None else tests
    out = []
    for a, b in comparisons(results, baseline):
        for view in views_of(results):
            for bench in benchmarks_of(results) + [ALL]:
                g = tests.get((a, b, view, bench))
                if g is not None:
                    out.append(g)
    return out


# ---------------------------------------------------------------- the prior checks

def _answer_shares(results: dict, variant: str, view: str) -> dict[str, float]:
    """How often ``variant`` gives each answer in ``view``, pooled over benchmarks (shares of its scored items)."""
    counts: dict[str, int] = {}
    total = 0
    for bench in benchmarks_of(results):
        rows = scored_rows(results, variant, bench, view)
        total += len(rows)
        letters = set(_letters(results, bench))
        for r in rows:
            if r.get("pred") in letters:
                counts[r["pred"]] = counts.get(r["pred"], 0) + 1
    return {k: c / total for k, c in counts.items()} if total else {}


def favourite_split(results: dict, a: str, b: str, view: str) -> list[dict]:
    """The answers that could carry a gain without knowledge: B's favourite answer in ``view`` and the answer whose
    share rose most from A to B; for each, both shares and the gain on the items whose gold answer is it and on
    the others."""
    sb, sa = _answer_shares(results, b, view), _answer_shares(results, a, view)
    if not sb:
        return []
    fav = max(sb, key=lambda k: (sb[k], -ord(k[0])))
    moved = max(sb, key=lambda k: (sb[k] - sa.get(k, 0.0), -ord(k[0])))
    gold = {bench: {it["id"]: it["answer"] for it in results["items"].get(bench, [])} for bench in benchmarks_of(results)}
    out = []
    for answer, why in [(fav, "favourite")] + ([(moved, "moved")] if moved != fav else []):
        on = gain(results, a, b, view, ALL, lambda bench, i, x=answer: gold[bench].get(i) == x)
        off = gain(results, a, b, view, ALL, lambda bench, i, x=answer: gold[bench].get(i) != x)
        out.append({"answer": answer, "why": why, "share_b": sb.get(answer, 0.0), "share_a": sa.get(answer, 0.0),
                    "on": on, "off": off})
    return out


def _letters(results: dict, bench: str) -> list[str]:
    items = results.get("items", {}).get(bench, [])
    return list(items[0]["options"]) if items else []


def constant_benchmarks(results: dict, variants: tuple[str, ...], view: str) -> dict[str, tuple[str, str, int, int]]:
    """``{benchmark: (variant, answer, count, n)}`` where one of ``variants`` gives one answer to at least
    :data:`CONSTANT_SHARE` of the items in ``view``."""
    out = {}
    for bench in benchmarks_of(results):
        for v in variants:
            fav = favourite_answer(results, v, bench, view)
            if fav and fav[2] >= 10 and fav[1] >= CONSTANT_SHARE * fav[2]:
                out[bench] = (v, *fav)
                break
    return out


def prior_checks(results: dict, g: dict, tests: dict) -> list[str]:
    """Why a gain ``g`` (pooled over all items) is not evidence of knowledge; empty when it survives every check."""
    a, b, view = g["a"], g["b"], g["view"]
    reasons = []
    if view in PRIOR_SENSITIVE_VIEWS:
        free = {v: tests.get((a, b, v, ALL)) for v in PRIOR_FREE_VIEWS if v in views_of(results)}
        free = {v: x for v, x in free.items() if x is not None}
        if not free:
            reasons.append("this file holds no prior-free view (batch-calibrated, circular, debiased) to check it "
                           "against")
        elif any(x["diff"] <= 0 for x in free.values()):
            reasons.append("the prior-free views do not agree (" + ", ".join(
                f"{view_label(v)} {100 * x['diff']:+.1f}" for v, x in free.items()) + ")")
    for fav in favourite_split(results, a, b, view):
        on, off = fav["on"], fav["off"]
        if off is None or off["diff"] > 0:
            continue
        what = "favourite answer here" if fav["why"] == "favourite" else "answer whose share rose most"
        reasons.append(
            f"the gain sits on the items whose answer is “{fav['answer']}”, {variant_label(b)}'s {what} "
            f"({100 * fav['share_b']:.0f}% of its answers, {100 * fav['share_a']:.0f}% of {variant_label(a)}'s): "
            + (f"there {100 * on['diff']:+.1f} points (n = {on['n']}), " if on else "")
            + f"on the other items {100 * off['diff']:+.1f} (n = {off['n']})")
        break
    const = constant_benchmarks(results, (a, b), view)
    if const:
        rest = gain(results, a, b, view, ALL, lambda bench, i: bench not in const)
        if rest is None or rest["diff"] <= 0:
            where = "; ".join(f"{variant_label(v)} answers “{ans}” on {k} of {n} {bench} items"
                              for bench, (v, ans, k, n) in const.items())
            reasons.append(f"the view is constant where the gain comes from ({where}); without "
                           f"{', '.join(const)} the difference is "
                           + (f"{100 * rest['diff']:+.1f} points" if rest else "undefined"))
    return reasons


def loss_checks(results: dict, g: dict, tests: dict) -> str:
    """For a significant loss in a prior-sensitive view: what the prior-free views say ('' when they confirm it)."""
    a, b, view = g["a"], g["b"], g["view"]
    if view not in PRIOR_SENSITIVE_VIEWS:
        return ""
    free = {v: tests.get((a, b, v, ALL)) for v in PRIOR_FREE_VIEWS if v in views_of(results)}
    free = {v: x for v, x in free.items() if x is not None}
    if not free or all(x["q"] < ALPHA and x["diff"] < 0 for x in free.values()):
        return ""
    text = ("; the prior-free views do not confirm it (" + ", ".join(
        f"{view_label(v)} {100 * x['diff']:+.1f}, q = {x['q']:.2g}" for v, x in free.items()) + ")")
    if view == "letter_cal":
        text += f", so it is largely a misjudged prior{_prior_gap(results, b)}"
    return text


def _prior_gap(results: dict, variant: str) -> str:
    """Where the content-free prior and the mean letter distribution on the items differ most (pooled)."""
    cal = results["variants"][variant].get("calibration") or {}
    best = None
    for bench, c in cal.items():
        cf, batch = c.get("prior"), c.get("batch_prior")
        if not cf or not batch or len(cf) != len(batch):
            continue
        for letter, x, y in zip(c["letters"], cf, batch):
            if best is None or abs(x - y) > abs(best[2] - best[3]):
                best = (bench, letter, x, y)
    if best is None:
        return ""
    bench, letter, x, y = best
    return (f": on {bench} its content-free prior puts “{letter}” at {x:.2f}, its mean letter distribution on the "
            f"items at {y:.2f}")


# ---------------------------------------------------------------- the verdict

def _pts(g: dict) -> str:
    return (f"{100 * g['diff']:+.1f} points [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}], "
            f"p = {g['p']:.2g}, q = {g['q']:.2g}, n = {g['n']}")


def comparison_sentences(results: dict, a: str, b: str, tests: dict) -> list[str]:
    """The verdict sentences for one comparison on all items, one per kind of finding."""
    gs = {v: tests[(a, b, v, ALL)] for v in views_of(results) if (a, b, v, ALL) in tests}
    out, quiet, survivors = [], [], []
    for view, g in gs.items():
        label = view_label(view)
        if g["q"] < ALPHA and g["diff"] > 0:
            reasons = prior_checks(results, g, tests)
            if reasons:
                out.append(f"The {label} gain ({100 * g['diff']:+.1f}, q = {g['q']:.2g}) is **not evidence of "
                           f"knowledge**: " + "; ".join(reasons) + ".")
            else:
                survivors.append(label)
                kind = ("a view no letter prior can raise" if view in PRIOR_FREE_VIEWS else
                        "the prior-free views agree" if view in PRIOR_SENSITIVE_VIEWS else
                        "generated answers" if view in GENERATED_VIEWS else "no letter involved")
                out.append(f"**{variant_label(b)} gains {100 * g['diff']:+.1f} points under {label}** "
                           f"(q = {g['q']:.2g}; {kind}; it also holds on the items whose answer is not "
                           f"{variant_label(b)}'s favourite, and on benchmarks where the view is not constant).")
        elif g["q"] < ALPHA:
            out.append(f"**{variant_label(b)} loses {100 * -g['diff']:.1f} points under {label}** "
                       f"(q = {g['q']:.2g}){loss_checks(results, g, tests)}.")
        else:
            quiet.append((label, g))
    if quiet:
        out.append("No significant difference under " + "; ".join(
            f"{label} ({100 * g['diff']:+.1f}, q = {g['q']:.2g}"
            + (f", p = {g['p']:.2g} before the correction" if g["p"] < ALPHA else "")
            + f"; detectable at this n: ±{100 * g['mdd']:.1f})" for label, g in quiet)
            + ": a difference smaller than the detectable one (80% power) may exist and go unseen.")
    for view in gs:
        const = constant_benchmarks(results, (b,), view)
        for bench, (_, ans, k, n) in const.items():
            out.append(f"Under {view_label(view)} {variant_label(b)} answers “{ans}” on {k} of {n} {bench} items: "
                       "that view says nothing about it there.")
    who = ("Continual pretraining before the same SFT" if (a, b) in PAIRS_AFTER_BASE else variant_label(b))
    out.append(f"**Verdict: {who} " + (f"shows a gain that survives every check under {', '.join(survivors)}.**"
                                        if survivors else "shows no gain that survives the prior checks.**"))
    return out


def explain(results: dict, baseline: str = "base") -> str:
    """Markdown sentences about each comparison on all items, generated from the numbers (never hand-written)."""
    tests = page_tests(results)
    lines = []
    for a, b in comparisons(results, baseline):
        gs = [tests[(a, b, v, ALL)] for v in views_of(results) if (a, b, v, ALL) in tests]
        if not gs:
            continue
        head = f"**{variant_label(b)} vs {variant_label(a)}** (all items): " + "; ".join(
            f"{view_label(g['view'])} {_pts(g)}" for g in gs) + "."
        lines.append(head + " " + " ".join(comparison_sentences(results, a, b, tests)))
    if not lines:
        return "Needs base and at least one other variant in the same results file."
    family = next(iter(tests.values()))["family"] if tests else 0
    return (f"q: Benjamini-Hochberg over the {family} comparisons this page shows (every pair of variants, view and "
            "benchmark). Significant means q < 0.05.\n\n" + "\n\n".join(lines))
