"""Pure data shaping of a results dict for the CLI table and the Benchmarks tab (no I/O, no plotting).

Every function reads one scoring view (:mod:`eval.views`; ``view=None`` is the file's first view). The average
over benchmarks pools every item (micro average); with the same n per benchmark it equals the mean of the
benchmark accuracies. McNemar tests pair two variants on the items both answered in that view (the same ids).
"""
from __future__ import annotations

from collections import defaultdict
from itertools import combinations

from medadapt.data.benchmarks import DEFINITIONS, task_label
from medadapt.variants import VARIANTS, variant_label
from eval.stats import accuracy_summary, chance_baseline, majority_baseline, mcnemar_exact
from eval.circular import INCONSISTENT
from eval.views import INVALID, prediction_counts, row_view

ALL = "average"


def done_variants(results: dict) -> list[str]:
    """Finished variants, base/RAG/SFT/MSFT first in that order (merged files keep their files' order otherwise)."""
    done = [name for name, v in results.get("variants", {}).items() if v.get("status") == "ok"]
    rank = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(done, key=lambda n: rank.get(n, len(rank)))


def benchmarks_of(results: dict) -> list[str]:
    return list(results.get("items", {}))


def scored_rows(results: dict, variant: str, bench: str, view: str | None = None) -> list[dict]:
    """The variant's rows on ``bench`` scored in ``view``: ``{"id", "pred", "correct", "invalid", ...}``."""
    out = []
    for r in results["variants"][variant].get("predictions", {}).get(bench, []):
        v = row_view(r, view, results)
        if v is not None:
            out.append({**v, "id": r.get("id")})
    return out


def summarize(results: dict, view: str | None = None) -> dict:
    """``{variant: {benchmark|average: accuracy_summary + "predicted": {answer: count}}}`` in one view."""
    out: dict = {}
    for v in done_variants(results):
        per, pooled = {}, []
        for b in benchmarks_of(results):
            rows = scored_rows(results, v, b, view)
            if not rows:
                continue
            per[b] = {**accuracy_summary([r["correct"] for r in rows], [r.get("invalid", False) for r in rows]),
                      "predicted": prediction_counts(rows)}
            pooled += rows
        if per:  # a variant not scored in this view is left out
            per[ALL] = accuracy_summary([r["correct"] for r in pooled], [r.get("invalid", False) for r in pooled])
            out[v] = per
    return out


def summarize_views(results: dict) -> dict:
    """``{view: summarize(results, view)}`` for every view the file holds."""
    from eval.views import views_of

    return {view: summarize(results, view) for view in views_of(results)}


def add_summaries(results: dict) -> dict:
    """Write ``summary_by_view`` and ``summary`` (the first view's) into a results dict, each view summarized once."""
    from eval.views import default_view

    results["summary_by_view"] = summarize_views(results)
    results["summary"] = results["summary_by_view"].get(default_view(results), {})
    return results


def baselines(results: dict) -> dict:
    """``{benchmark|average: {"chance", "majority", "majority_letter"}}`` on the evaluated items."""
    out, all_k, all_major = {}, [], 0
    for b, items in results.get("items", {}).items():
        ks = [len(it["options"]) for it in items]
        letter, acc = majority_baseline([it["answer"] for it in items])
        out[b] = {"chance": chance_baseline(ks), "majority": acc, "majority_letter": letter}
        all_k += ks
        all_major += round(acc * len(items))
    if all_k:
        out[ALL] = {"chance": chance_baseline(all_k), "majority": all_major / len(all_k), "majority_letter": "per task"}
    return out


def favourite_answer(results: dict, variant: str, bench: str, view: str | None = None) -> tuple[str, int, int] | None:
    """The answer ``variant`` actually gives most often on ``bench`` in ``view`` (invalid and inconsistent answers
    left out), how often, and out of how many scored items."""
    rows = scored_rows(results, variant, bench, view)
    counts = {k: c for k, c in prediction_counts(rows).items() if k in _answer_letters(results, bench)}
    if not counts:
        return None
    top = max(counts, key=lambda k: (counts[k], -ord(k[0])))
    return top, counts[top], len(rows)


def _answer_letters(results: dict, bench: str) -> set[str]:
    items = results.get("items", {}).get(bench, [])
    return set(items[0]["options"]) if items else set()


def favourite_baselines(results: dict, view: str | None = None) -> dict[str, dict[str, dict]]:
    """``{variant: {benchmark|average: {"letter", "acc", "share"}}}``: always answering the variant's favourite
    answer, its actual most frequent prediction on that benchmark in ``view`` (``share``: how often it gives it)."""
    out: dict = {}
    items = results.get("items", {})
    for v in done_variants(results):
        per, hits, n = {}, 0, 0
        for b in benchmarks_of(results):
            fav = favourite_answer(results, v, b, view)
            if fav is None or not items.get(b):
                continue
            k = sum(it["answer"] == fav[0] for it in items[b])
            per[b] = {"letter": fav[0], "acc": k / len(items[b]), "share": fav[1] / fav[2] if fav[2] else 0.0}
            hits, n = hits + k, n + len(items[b])
        if per:
            per[ALL] = {"letter": "per task", "acc": hits / n if n else 0.0, "share": None}
            out[v] = per
    return out


def answer_distribution(results: dict, benchmark: str, view: str | None = None) -> dict[str, dict[str, int]]:
    """``{"gold" | variant: {answer: count}}`` on one benchmark: what each variant predicts next to the truth."""
    items = results.get("items", {}).get(benchmark, [])
    letters = list(items[0]["options"]) if items else []
    gold = {k: sum(it["answer"] == k for it in items) for k in letters}
    out = {"gold": gold}
    for v in done_variants(results):
        counts = prediction_counts(scored_rows(results, v, benchmark, view))
        if counts:
            out[v] = {k: counts.get(k, 0) for k in letters + [x for x in (INVALID, INCONSISTENT) if x in counts]}
    return out


def paired_tests(results: dict, view: str | None = None) -> list[dict]:
    """Exact McNemar for every pair of finished variants, per benchmark and pooled, on their common items."""
    tests = []
    variants = done_variants(results)
    for a, b in combinations(variants, 2):
        pooled_a, pooled_b = [], []
        for bench in benchmarks_of(results):
            ra = {r["id"]: r["correct"] for r in scored_rows(results, a, bench, view)}
            rb = {r["id"]: r["correct"] for r in scored_rows(results, b, bench, view)}
            common = [i for i in ra if i in rb]
            if not common:
                continue
            xa, xb = [ra[i] for i in common], [rb[i] for i in common]
            tests.append({"a": a, "b": b, "benchmark": bench, **mcnemar_exact(xa, xb)})
            pooled_a += xa
            pooled_b += xb
        if pooled_a:
            tests.append({"a": a, "b": b, "benchmark": ALL, **mcnemar_exact(pooled_a, pooled_b)})
    return tests


def significance_matrix(results: dict, benchmark: str = ALL,
                        view: str | None = None) -> tuple[list[str], list[list[float | None]]]:
    """Variant names and a symmetric matrix of McNemar p-values (None on the diagonal) for one benchmark."""
    names = done_variants(results)
    idx = {n: i for i, n in enumerate(names)}
    mat: list[list[float | None]] = [[None] * len(names) for _ in names]
    for t in paired_tests(results, view):
        if t["benchmark"] == benchmark:
            mat[idx[t["a"]]][idx[t["b"]]] = mat[idx[t["b"]]][idx[t["a"]]] = t["p"]
    return names, mat


def subject_breakdown(results: dict, benchmark: str, view: str | None = None) -> dict[str, dict[str, dict]]:
    """``{subject: {variant: accuracy_summary}}`` for one benchmark (subjects sorted by name)."""
    subject_of = {it["id"]: it.get("subject", "") for it in results.get("items", {}).get(benchmark, [])}
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for v in done_variants(results):
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in scored_rows(results, v, benchmark, view):
            groups[subject_of.get(r["id"], "")].append(r)
        for subject, rows in groups.items():
            out[subject][v] = accuracy_summary([r["correct"] for r in rows], [r.get("invalid", False) for r in rows])
    return dict(sorted(out.items()))


def drilldown(results: dict, benchmark: str, item_id: str) -> dict:
    """One item with every variant's answer in every view (and the view's raw output: letter probabilities or the
    generated text)."""
    from eval.views import views_of

    item = next((it for it in results.get("items", {}).get(benchmark, []) if it["id"] == item_id), None)
    if item is None:
        raise KeyError(f"no item {item_id!r} in {benchmark}")
    rows = []
    for v in done_variants(results):
        r = next((p for p in results["variants"][v].get("predictions", {}).get(benchmark, []) if p["id"] == item_id),
                 None)
        if r is None:
            continue
        for view in views_of(results):
            x = row_view(r, view, results)
            if x is not None:
                rows.append({"variant": v, "view": view, "pred": x.get("pred"), "correct": x["correct"],
                             "invalid": x.get("invalid", False), "filter": x.get("filter", r.get("filter", "")),
                             "raw": x.get("raw", r.get("raw", ""))})
    snippets = results.get("retrieval", {}).get("snippets", {}).get(benchmark, {}).get(item_id, [])
    return {"item": item, "rows": rows, "snippets": snippets}


def summary_table(results: dict, view: str | None = None) -> tuple[list[str], list[list]]:
    """Header and rows: variant, per-benchmark accuracy ± CI, average, invalid %, eval wall time (cost)."""
    summ = summarize(results, view)
    benches = benchmarks_of(results)
    header = ["variant", "n"] + [task_label(b) for b in benches] + ["average", "invalid %", "wall s", "items/s"]
    rows = []
    for v, per in summ.items():
        timing = variant_timing(results, v, view)
        seen = len(results["variants"][v].get("seen_in_training") or [])
        cells = [variant_label(v) + (f" ⚠ {seen} items seen in training" if seen else ""),
                 per[ALL]["n"] if ALL in per else 0]
        for b in benches + [ALL]:
            s = per.get(b)
            cells.append(f"{100 * s['acc']:.1f} [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]" if s else "—")
        cells += [f"{100 * per[ALL]['invalid_rate']:.1f}" if ALL in per else "—", timing.get("wall_s", ""),
                  timing.get("items_per_s", "")]
        rows.append(cells)
    for v, entry in results.get("variants", {}).items():
        if entry.get("status") != "ok":
            rows.append([variant_label(v)] + [entry.get("status", "")] + [""] * (len(header) - 2))
    return header, rows


def variant_timing(results: dict, variant: str, view: str | None = None) -> dict:
    """The timing of the run that scored ``view`` (a merged file keeps each mode's run under ``timing_by_mode``)."""
    from eval.views import default_view, results_run, run_key

    entry = results["variants"][variant]
    run = run_key(view or default_view(results))
    return entry.get("timing_by_mode", {}).get(run) or (entry.get("timing", {}) if results_run(results) == run else {})


def paper_reference(benchmarks: list[str]) -> dict[str, dict[str, float]]:
    """The original study's accuracies (fractions; each benchmark's ``paper``) on ``benchmarks``, with their
    average."""
    out = {}
    for v in VARIANTS:
        vals = {b: DEFINITIONS[b].paper[v] / 100 for b in benchmarks if v in getattr(DEFINITIONS.get(b), "paper", {})}
        if vals:
            vals[ALL] = sum(vals.values()) / len(vals)
        out[v] = vals
    return out
