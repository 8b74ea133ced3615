"""What each adaptation buys: its gain over base in every scoring view, paired, and a summary written from them.

A gain under letter scoring that vanishes under calibrated-letter and option-text scoring is the model learning the
answer format and its letter prior, not medicine. For every variant against base (and MSFT against SFT: what
continual pretraining adds) this module computes the accuracy difference per view and benchmark on the items both
answered in that view, with a 95% CI and the exact McNemar p-value, and :func:`explain` turns the pooled numbers into
sentences. Pure: no I/O, no plotting.
"""
from __future__ import annotations

from medadapt.variants import variant_label
from eval.report import ALL, benchmarks_of, done_variants, scored_rows
from eval.stats import paired_difference
from eval.views import GENERATED_VIEWS, prediction_counts, view_label, views_of

ALPHA = 0.05
PAIRS_AFTER_BASE = (("sft", "msft"),)  # extra comparisons: what MSFT's continual pretraining adds over SFT


def comparisons(results: dict, baseline: str = "base") -> list[tuple[str, str]]:
    """``(a, b)`` pairs to decompose: every finished variant against ``baseline``, then MSFT against SFT."""
    done = done_variants(results)
    pairs = [(baseline, v) for v in done if v != baseline] if baseline in done else []
    return pairs + [(a, b) for a, b in PAIRS_AFTER_BASE if a in done and b in done]


def gain(results: dict, a: str, b: str, view: str, benchmark: str = ALL) -> dict | None:
    """B minus A in ``view`` on ``benchmark`` (or all items), paired on the items both were scored on."""
    benches = benchmarks_of(results) if benchmark == ALL else [benchmark]
    xa, xb = [], []
    for bench in benches:
        ra = {r["id"]: r["correct"] for r in scored_rows(results, a, bench, view)}
        rb = {r["id"]: r["correct"] for r in scored_rows(results, b, bench, view)}
        common = [i for i in ra if i in rb]
        xa += [ra[i] for i in common]
        xb += [rb[i] for i in common]
    if not xa:
        return None
    return {"a": a, "b": b, "view": view, "benchmark": benchmark, **paired_difference(xa, xb)}


def decomposition(results: dict, baseline: str = "base") -> list[dict]:
    """Every comparison x view x (benchmark and all items) that has common items."""
    out = []
    for a, b in comparisons(results, baseline):
        for view in views_of(results):
            for bench in benchmarks_of(results) + [ALL]:
                g = gain(results, a, b, view, bench)
                if g is not None:
                    out.append(g)
    return out


def _pts(g: dict) -> str:
    return (f"{100 * g['diff']:+.1f} points [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}], "
            f"p = {g['p']:.2g}, n = {g['n']}")


def _significant(g: dict | None) -> bool:
    return bool(g) and g["p"] < ALPHA and g["diff"] > 0


def _favourite_share(results: dict, variant: str, view: str) -> tuple[str, int, int] | None:
    """The answer ``variant`` gives most often in ``view``, and on how many of its items."""
    rows = [r for bench in benchmarks_of(results) for r in scored_rows(results, variant, bench, view)]
    counts = prediction_counts(rows)
    if not counts:
        return None
    top = max(counts, key=counts.get)
    return top, counts[top], sum(counts.values())


def explain(results: dict, baseline: str = "base") -> str:
    """Markdown sentences about each comparison on all items, generated from the numbers (never hand-written)."""
    views = views_of(results)
    lines = []
    for a, b in comparisons(results, baseline):
        gs = {v: gain(results, a, b, v) for v in views}
        gs = {v: g for v, g in gs.items() if g is not None}
        if not gs:
            continue
        head = f"**{variant_label(b)} vs {variant_label(a)}** (all items): " + "; ".join(
            f"{view_label(v)} {_pts(g)}" for v, g in gs.items()) + "."
        verdict = []
        if (a, b) in PAIRS_AFTER_BASE:
            up = [view_label(v) for v, g in gs.items() if _significant(g)]
            down = [view_label(v) for v, g in gs.items() if g["p"] < ALPHA and g["diff"] < 0]
            bought = f"a significant gain under {', '.join(up)}" if up else "no significant gain in any view"
            verdict.append(f"Continual pretraining before the same SFT buys {bought}"
                           + (f" and costs accuracy under {', '.join(down)}" if down else "") + ".")
            lines.append(head + " " + " ".join(verdict))
            continue
        letter, cal, text = gs.get("letter"), gs.get("letter_cal"), gs.get("text_norm")
        if letter is not None:
            if not _significant(letter):
                verdict.append("No significant gain under letter scoring.")
            elif cal is not None and not _significant(cal):
                share = (f" (it keeps {100 * cal['diff'] / letter['diff']:.0f}% of the letter gain)" if cal["diff"] > 0
                         else f" (calibrated, the difference is {100 * cal['diff']:+.1f} points)")
                verdict.append(f"The letter gain does **not survive calibration**{share}: it is mostly the model's "
                               "prior over answer letters (answer format), not medical knowledge.")
            elif cal is not None:
                verdict.append(f"The letter gain **survives calibration** ({100 * cal['diff'] / letter['diff']:.0f}% "
                               "of it remains), so it is not only a letter prior.")
        if text is not None:
            verdict.append("Option-text scoring, which involves no letter, " + (
                "also improves: evidence of knowledge." if _significant(text) else
                "does not improve significantly." if text["diff"] >= 0 or text["p"] >= ALPHA else
                "gets significantly worse."))
        for view in GENERATED_VIEWS:
            if view in gs:
                verdict.append(f"Generated answers ({view_label(view)}) " + (
                    "improve significantly." if _significant(gs[view]) else
                    "get significantly worse." if gs[view]["p"] < ALPHA else "do not differ significantly."))
        fav = _favourite_share(results, b, "letter") if "letter" in views else None
        if fav and fav[1] >= 0.6 * fav[2]:
            verdict.append(f"Under letter scoring {variant_label(b)} answers “{fav[0]}” on {fav[1]} of {fav[2]} items.")
        lines.append(head + " " + " ".join(verdict))
    if not lines:
        return "Needs base and at least one other variant in the same results file."
    return "\n\n".join(lines)
