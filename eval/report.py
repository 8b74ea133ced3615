"""Pure data shaping of a results dict for the CLI table and the Benchmarks tab (no I/O, no plotting).

The average over benchmarks pools every item (micro average); with the same n per benchmark it equals the mean of
the benchmark accuracies. McNemar tests pair two variants on the items both answered (the same ids).
"""
from __future__ import annotations

from collections import defaultdict
from itertools import combinations

from eval.benchmarks import PAPER_REFERENCE, task_label, variant_label
from eval.stats import accuracy_summary, chance_baseline, majority_baseline, mcnemar_exact

ALL = "average"


def done_variants(results: dict) -> list[str]:
    return [name for name, v in results.get("variants", {}).items() if v.get("status") == "ok"]


def benchmarks_of(results: dict) -> list[str]:
    return list(results.get("items", {}))


def _preds(results: dict, variant: str, bench: str) -> list[dict]:
    return results["variants"][variant].get("predictions", {}).get(bench, [])


def summarize(results: dict) -> dict:
    """``{variant: {benchmark|average: accuracy_summary}}`` for every finished variant."""
    out: dict = {}
    for v in done_variants(results):
        per, pooled_c, pooled_i = {}, [], []
        for b in benchmarks_of(results):
            rows = _preds(results, v, b)
            if not rows:
                continue
            c, i = [r["correct"] for r in rows], [r.get("invalid", False) for r in rows]
            per[b] = accuracy_summary(c, i)
            pooled_c += c
            pooled_i += i
        if per:
            per[ALL] = accuracy_summary(pooled_c, pooled_i)
        out[v] = per
    return out


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


def paired_tests(results: dict) -> list[dict]:
    """Exact McNemar for every pair of finished variants, per benchmark and pooled, on their common items."""
    tests = []
    variants = done_variants(results)
    for a, b in combinations(variants, 2):
        pooled_a, pooled_b = [], []
        for bench in benchmarks_of(results):
            ra = {r["id"]: r["correct"] for r in _preds(results, a, bench)}
            rb = {r["id"]: r["correct"] for r in _preds(results, b, bench)}
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


def significance_matrix(results: dict, benchmark: str = ALL) -> tuple[list[str], list[list[float | None]]]:
    """Variant names and a symmetric matrix of McNemar p-values (None on the diagonal) for one benchmark."""
    names = done_variants(results)
    idx = {n: i for i, n in enumerate(names)}
    mat: list[list[float | None]] = [[None] * len(names) for _ in names]
    for t in paired_tests(results):
        if t["benchmark"] == benchmark:
            mat[idx[t["a"]]][idx[t["b"]]] = mat[idx[t["b"]]][idx[t["a"]]] = t["p"]
    return names, mat


def subject_breakdown(results: dict, benchmark: str) -> dict[str, dict[str, dict]]:
    """``{subject: {variant: accuracy_summary}}`` for one benchmark (subjects sorted by name)."""
    subject_of = {it["id"]: it.get("subject", "") for it in results.get("items", {}).get(benchmark, [])}
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for v in done_variants(results):
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in _preds(results, v, benchmark):
            groups[subject_of.get(r["id"], "")].append(r)
        for subject, rows in groups.items():
            out[subject][v] = accuracy_summary([r["correct"] for r in rows], [r.get("invalid", False) for r in rows])
    return dict(sorted(out.items()))


def drilldown(results: dict, benchmark: str, item_id: str) -> dict:
    """One item with every variant's raw output, extracted answer and correctness."""
    item = next((it for it in results.get("items", {}).get(benchmark, []) if it["id"] == item_id), None)
    if item is None:
        raise KeyError(f"no item {item_id!r} in {benchmark}")
    rows = []
    for v in done_variants(results):
        r = next((p for p in _preds(results, v, benchmark) if p["id"] == item_id), None)
        if r is not None:
            rows.append({"variant": v, "pred": r.get("pred"), "correct": r["correct"], "invalid": r.get("invalid", False),
                         "filter": r.get("filter", ""), "raw": r.get("raw", "")})
    snippets = results.get("retrieval", {}).get("snippets", {}).get(benchmark, {}).get(item_id, [])
    return {"item": item, "rows": rows, "snippets": snippets}


def summary_table(results: dict) -> tuple[list[str], list[list]]:
    """Header and rows: variant, per-benchmark accuracy ± CI, average, invalid %, eval wall time (cost)."""
    summ = summarize(results)
    benches = benchmarks_of(results)
    header = ["variant", "n"] + [task_label(b) for b in benches] + ["average", "invalid %", "wall s", "items/s"]
    rows = []
    for v, per in summ.items():
        timing = results["variants"][v].get("timing", {})
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


def paper_reference(benchmarks: list[str]) -> dict[str, dict[str, float]]:
    """The seed paper's accuracies (fractions) on ``benchmarks``, with their average."""
    out = {}
    for v, per in PAPER_REFERENCE.items():
        vals = {b: per[b] / 100 for b in benchmarks if b in per}
        if vals:
            vals[ALL] = sum(vals.values()) / len(vals)
        out[v] = vals
    return out
