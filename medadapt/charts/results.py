"""Plotly figures of evaluation results (pure): accuracy per benchmark with CIs and the paper's bars, paired tests,
per-subject accuracy, each gain per scoring view, predicted answers, and perplexity per passage set.
"""
from __future__ import annotations

import html

import plotly.graph_objects as go

from medadapt.data.benchmarks import PAPER_SETUP, task_label
from eval.decompose import ALPHA, decomposition, page_tests
from eval.perplexity import SETS as PPL_SETS
from eval.report import (ALL, answer_distribution, baselines, benchmarks_of, done_variants, favourite_baselines,
                         paper_reference, significance_matrix, subject_breakdown, summarize)
from eval.views import default_view, view_label, views_of
from medadapt.variants import VARIANTS, variant_color, variant_label

CI = tuple[float, float, float]  # (value, low, high)


def ci(row: dict | None, key: str = "acc") -> CI | None:
    """``row[key]`` with its ``ci_low``/``ci_high`` (None when there is no row)."""
    return (row[key], row["ci_low"], row["ci_high"]) if row else None


def error_bars(cis: list[CI | None], scale: float = 100.0, **style) -> dict:
    """Plotly's asymmetric error bars (``error_x``/``error_y``) of each (value, low, high); none where missing."""
    return {"type": "data", "symmetric": False, **style,
            "array": [scale * (c[2] - c[0]) if c else 0 for c in cis],
            "arrayminus": [scale * (c[0] - c[1]) if c else 0 for c in cis]}


def accuracy_figure(results: dict | None, show_paper: bool = False, view: str | None = None) -> go.Figure:
    """Grouped bars (variant per benchmark + average) in one scoring view, with Wilson 95% error bars, the chance
    and majority lines, each variant's favourite-answer line (at its bar: always giving its most frequent answer in
    this view) and, when asked, the seed paper's bars labelled with what differs from this run."""
    fig = go.Figure()
    if not results:
        fig.update_layout(title="No results yet: run an evaluation", height=420)
        return fig
    benches = benchmarks_of(results)
    cats = benches + [ALL]
    xlabels = [task_label(b) for b in benches] + ["Average"]
    view = view or default_view(results)
    summ = summarize(results, view)
    for i, (v, per) in enumerate(summ.items()):
        ys = [100 * per[c]["acc"] if c in per else None for c in cats]
        n = [per[c]["n"] if c in per else 0 for c in cats]
        fig.add_bar(name=f"{variant_label(v)} (this run)", x=xlabels, y=ys, marker_color=variant_color(v, i), offsetgroup=v,
                    error_y=error_bars([ci(per.get(c)) for c in cats], thickness=1.2),
                    customdata=n, hovertemplate="%{x}: %{y:.1f}% (n=%{customdata})<extra>" + v + "</extra>")
    if show_paper:
        differs = "; ".join(f"{k}: {v}" for k, v in PAPER_SETUP.items()) + (
            f" (this run: {results.get('model', {}).get('display_name', '?')}, the items in this file, "
            "the project's prompt and parser)")
        for i, (v, vals) in enumerate(paper_reference(benches).items()):
            fig.add_bar(name=f"{variant_label(v)} — seed paper (other model, items, prompt, parser)", x=xlabels,
                        y=[100 * vals[c] if c in vals else None for c in cats], marker_color="rgba(0,0,0,0)",
                        marker_line={"color": variant_color(v, i), "width": 1.5}, marker_pattern_shape="/",
                        marker_pattern_fgcolor=variant_color(v, i), opacity=0.6, legendgroup="paper",
                        offsetgroup=f"paper-{v}",
                        hovertemplate="%{x}: %{y:.1f}% (seed paper, reported; differs: " + html.escape(differs)
                        + ")<extra>" + v + "</extra>")
        fig.add_annotation(text="Hatched: the seed paper's reported numbers, not comparable: " + differs,
                           xref="paper", yref="paper", x=0, y=1.0, showarrow=False, align="left",
                           font={"size": 10, "color": "#475569"})
    for i, (v, per) in enumerate(favourite_baselines(results, view).items()):
        if v not in summ:
            continue
        fig.add_scatter(x=xlabels, y=[100 * per[c]["acc"] if c in per else None for c in cats], mode="markers",
                        offsetgroup=v, name=f"always {variant_label(v)}'s favourite answer", legendgroup="favourite",
                        marker={"symbol": "line-ew-open", "size": 18, "color": variant_color(v, i),
                                "line": {"width": 3, "color": variant_color(v, i)}},
                        customdata=[per[c]["letter"] if c in per else "" for c in cats],
                        hovertemplate="always “%{customdata}” (its most frequent answer here): %{y:.1f}%<extra>" + v
                        + "</extra>")
    base = baselines(results)
    for key, dash, label in (("chance", "dot", "chance"), ("majority", "dash", "majority class")):
        xs, ys = [], []
        for c, lab in zip(cats, xlabels):
            if c in base:
                xs += [lab, lab, None]
                ys += [100 * base[c][key]] * 2 + [None]
        fig.add_scatter(x=xs, y=ys, mode="markers+lines", name=label, line={"dash": dash, "color": "#111827"},
                        marker={"symbol": "line-ew-open", "size": 40, "color": "#111827"}, connectgaps=False)
    n_max = max((len(v) for v in results.get("item_ids", {}).values()), default=0)
    fig.update_layout(barmode="group", scattermode="group", height=460,
                      yaxis={"title": "accuracy (%)", "range": [0, 100]},
                      title=f"{view_label(view)} scoring · {results.get('model', {}).get('display_name', '')}"
                            f" · n≤{n_max} per benchmark · error bars: Wilson 95% CI",
                      legend={"orientation": "h", "y": -0.18}, margin={"t": 60, "b": 40})
    return fig


def significance_figure(results: dict | None, benchmark: str = ALL, view: str | None = None) -> go.Figure:
    """Heatmap of paired exact McNemar p-values between variants (same items), each with its Benjamini-Hochberg q
    over every comparison the page shows; stars mark q < 0.05."""
    fig = go.Figure()
    if not results:
        return fig
    names, mat = significance_matrix(results, benchmark, view)
    view = view or default_view(results)
    tests = page_tests(results)
    qmat = [[None if i == j else (tests.get((a, b, view, benchmark)) or tests.get((b, a, view, benchmark)) or {}).get("q")
             for j, b in enumerate(names)] for i, a in enumerate(names)]
    text = [["—" if p is None else f"p {p:.3f}<br>q {q:.3f}" + (" *" if q is not None and q < ALPHA else "")
             if q is not None else f"p {p:.3f}" for p, q in zip(row, qrow)] for row, qrow in zip(mat, qmat)]
    z = [[1.0 if p is None else p for p in row] for row in mat]
    labels = [variant_label(n) for n in names]
    fig.add_heatmap(z=z, x=labels, y=labels, text=text, texttemplate="%{text}", zmin=0, zmax=1,
                    colorscale=[[0, "#16a34a"], [0.05, "#bbf7d0"], [0.0501, "#f1f5f9"], [1, "#ffffff"]],
                    colorbar={"title": "p"})
    fig.update_layout(title=f"McNemar exact p-values · {task_label(benchmark) if benchmark != ALL else 'all items'}"
                            f" · {view_label(view)}<br><sup>q: Benjamini-Hochberg over every comparison on this page"
                            " · * q < 0.05</sup>",
                      height=360, yaxis={"autorange": "reversed"})
    return fig


def subject_figure(results: dict | None, benchmark: str, view: str | None = None) -> go.Figure:
    """Per-subject accuracy per variant (horizontal bars with CIs), for MMLU-medical or MedMCQA."""
    fig = go.Figure()
    if not results or benchmark not in benchmarks_of(results):
        return fig
    br = subject_breakdown(results, benchmark, view)
    subjects = list(br)
    for i, v in enumerate(done_variants(results)):
        xs = [100 * br[s][v]["acc"] if v in br[s] else None for s in subjects]
        ns = [br[s][v]["n"] if v in br[s] else 0 for s in subjects]
        fig.add_bar(name=variant_label(v), y=[f"{s} (n={max(ns[j], 0)})" for j, s in enumerate(subjects)], x=xs,
                    orientation="h", marker_color=variant_color(v, i),
                    error_x=error_bars([ci(br[s].get(v)) for s in subjects]))
    fig.update_layout(barmode="group", title=f"{task_label(benchmark)} by subject", xaxis={"range": [0, 100],
                      "title": "accuracy (%)"}, height=max(320, 28 * len(subjects) * max(1, len(fig.data))))
    return fig


VIEW_COLORS = {"letter": "#94a3b8", "letter_cal": "#0f766e", "letter_batch_cal": "#14b8a6", "circular": "#1d4ed8",
               "debiased": "#60a5fa", "text_norm": "#7c3aed", "text_sum": "#a78bfa", "cot": "#ea580c",
               "cot_budget": "#b45309"}


def decomposition_figure(results: dict | None, benchmark: str = ALL) -> go.Figure:
    """For each comparison (variant − base, MSFT − SFT): the accuracy difference in every view, 95% CI, q (BH over
    the page) and the detectable difference at 80% power (in the hover and as a grey tick at ±mdd)."""
    fig = go.Figure()
    rows = [g for g in decomposition(results) if g["benchmark"] == benchmark] if results else []
    if not rows:
        fig.update_layout(title="Needs base and another variant in one results file", height=300)
        return fig
    pairs = list(dict.fromkeys((g["a"], g["b"]) for g in rows))
    xlabels = [f"{variant_label(b)} − {variant_label(a)}" for a, b in pairs]
    for view in views_of(results):
        by_pair = {(g["a"], g["b"]): g for g in rows if g["view"] == view}
        gs = [by_pair.get(p) for p in pairs]
        fig.add_bar(name=view_label(view), x=xlabels, y=[100 * g["diff"] if g else None for g in gs],
                    marker_color=VIEW_COLORS.get(view, "#64748b"),
                    error_y=error_bars([ci(g, "diff") for g in gs], thickness=1.2),
                    text=[f"q={g['q']:.2g}" + ("*" if g["q"] < ALPHA else "") if g else "" for g in gs],
                    textposition="outside",
                    customdata=[[g["n"], g["p"], g["q"], 100 * g["mdd"]] if g else [0, 1, 1, 0] for g in gs],
                    hovertemplate="%{x}: %{y:+.1f} points (n=%{customdata[0]}, p=%{customdata[1]:.2g}, "
                                  "q=%{customdata[2]:.2g}; detectable at 80% power: ±%{customdata[3]:.1f})<extra>"
                                  + view_label(view) + "</extra>")
    fig.add_hline(y=0, line={"color": "#111827", "width": 1})
    fig.update_layout(barmode="group", height=420, yaxis={"title": "accuracy difference (points)"},
                      title=f"Gain per scoring view · {task_label(benchmark) if benchmark != ALL else 'all items'}"
                            "<br><sup>error bars: paired 95% CI · q: exact McNemar p, Benjamini-Hochberg over every "
                            "comparison on this page (* < 0.05) · hover: the detectable difference (80% power)</sup>",
                      legend={"orientation": "h", "y": -0.15}, margin={"t": 60, "b": 40})
    return fig


def distribution_figure(results: dict | None, benchmark: str, view: str | None = None) -> go.Figure:
    """How often each answer is predicted by each variant, next to the gold answers, on one benchmark."""
    fig = go.Figure()
    if not results or benchmark not in benchmarks_of(results):
        return fig
    dist = answer_distribution(results, benchmark, view)
    gold = dist.pop("gold")
    answers = list(dict.fromkeys([*gold, *(k for d in dist.values() for k in d)]))
    fig.add_bar(name="gold answers", x=answers, y=[gold.get(k, 0) for k in answers], marker_color="rgba(0,0,0,0)",
                marker_line={"color": "#111827", "width": 2})
    for i, (v, counts) in enumerate(dist.items()):
        fig.add_bar(name=variant_label(v), x=answers, y=[counts.get(k, 0) for k in answers],
                    marker_color=variant_color(v, i))
    fig.update_layout(barmode="group", height=340, yaxis={"title": "items"},
                      title=f"Predicted answers · {task_label(benchmark)} · "
                            f"{view_label(view or default_view(results))}",
                      legend={"orientation": "h", "y": -0.2}, margin={"t": 50, "b": 40})
    return fig


def perplexity_figure(ppl: dict | None) -> go.Figure:
    """Per-token perplexity per passage set (CPT's held-out split, the corpus outside its sample, the general
    control), one bar per model, with 95% bootstrap CIs over passages; lower is better."""
    fig = go.Figure()
    if not ppl:
        fig.update_layout(title="No perplexity file yet: run python -m eval perplexity", height=320)
        return fig
    sets = [s for s in PPL_SETS if s in ppl.get("sets", {})]
    labels = [f"{ppl['sets'][s]['label']} (n={len(ppl['sets'][s]['passages'])})" for s in sets]
    for i, (v, per) in enumerate(ppl["models"].items()):
        ys = [per[s]["ppl"] if s in per else None for s in sets]
        fig.add_bar(name=variant_label(v) if v in VARIANTS else v.upper(), x=labels, y=ys,
                    marker_color=variant_color(v, i) if v in VARIANTS else "#0891b2",
                    error_y=error_bars([(per[s]["ppl"], *per[s]["ci"]) if s in per else None for s in sets], 1.0),
                    customdata=[per[s]["tokens"] if s in per else 0 for s in sets],
                    hovertemplate="%{x}: %{y:.2f} (%{customdata} tokens)<extra>" + v + "</extra>")
    fig.update_layout(barmode="group", height=380, yaxis={"title": "per-token perplexity (lower is better)"},
                      title="What CPT buys: perplexity where it should show<br><sup>error bars: 95% bootstrap CI "
                            "over passages</sup>", legend={"orientation": "h", "y": -0.2}, margin={"t": 60, "b": 40})
    return fig
