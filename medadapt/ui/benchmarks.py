"""Benchmarks tab: accuracy with 95% CIs per benchmark, baselines, the paper's numbers, paired tests, drill-down.

Reads the results JSONs under ``<results_dir>`` (``python -m eval run`` writes them) and launches new evaluations
as background jobs through ``state.jobs.start_eval``. Data shaping is in :mod:`eval.report` (pure, no torch);
this module only draws figures and wires widgets.
"""
from __future__ import annotations

import html
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from medadapt.ui.common import is_public, unlocked
from medadapt.ui.redact import path_redactor
from medadapt.shipped import adapter_checksum, shipped_results
from eval.provenance import mark as provenance_mark, provenance, provenance_markdown

from eval.benchmarks import PAPER_SETUP, has_breakdown, task_label
from medadapt.variants import VARIANTS, variant_color, variant_label
from eval.decompose import ALPHA, decomposition, explain, page_tests
from eval.report import (ALL, answer_distribution, baselines, benchmarks_of, done_variants, drilldown,
                         favourite_baselines, paper_reference, significance_matrix, subject_breakdown, summarize,
                         summary_table)
from eval.perplexity import GENERAL_SOURCE, SETS as PPL_SETS, is_perplexity
from eval.views import VIEWS, decoding_note, default_view, protocol_label, view_label, views_of

POLL_S = 3.0


# ---------------------------------------------------------------- files

RESULTS_KEPT = 2  # parsed results files kept (a 4 MB file: ~0.15 s of CPU to parse, ~10-30 MB parsed)
_parsed: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
_summaries: dict[tuple[str, int, int], tuple[int, list[str], list[str]] | None] = {}
_cache_lock = threading.Lock()


def _version(file: Path) -> tuple[str, int, int]:
    file = Path(file).resolve()
    st = file.stat()
    return str(file), st.st_mtime_ns, st.st_size


def parsed_json(file: Path) -> Any:
    """The JSON in ``file``, parsed once per version of it (path, mtime, size; the last ``RESULTS_KEPT`` kept): each
    Benchmarks event reads the file it shows, and re-parsing it every time made cheap-looking events expensive.
    Callers must not change what it returns."""
    key = _version(file)
    with _cache_lock:
        if key in _parsed:
            _parsed.move_to_end(key)
            return _parsed[key]
    data = json.loads(file.read_text(encoding="utf-8"))
    with _cache_lock:
        _parsed[key] = data
        while len(_parsed) > RESULTS_KEPT:
            _parsed.popitem(last=False)
    return data


def _summary(file: Path) -> tuple[int, list[str], list[str], str] | None:
    """(items per benchmark, variants done, views, protocol) of a results file, once per version of it; None if it
    is none."""
    key = _version(file)
    if key not in _summaries:
        try:
            data = parsed_json(file)
        except (OSError, json.JSONDecodeError):
            data = None
        ok = isinstance(data, dict) and "variants" in data
        _summaries[key] = (max((len(v) for v in data.get("item_ids", {}).values()), default=0), done_variants(data),
                           views_of(data), protocol_label(data)) if ok else None
    return _summaries[key]


def list_results(results_dir: Path, shipped: Path | None = None) -> list[tuple[str, str]]:
    """(label, path relative to ``results_dir``) of every results JSON under it: the shipped release's results first
    (``shipped``: those of the adapters Compare serves by default), then most variants done, most views, most items,
    newest (file times are all alike in a fresh clone, so recency alone would pick an arbitrary default)."""
    shipped = Path(shipped).resolve() if shipped else None
    ranked = []
    for p in Path(results_dir).rglob("*.json"):
        try:
            summary = _summary(p)
        except OSError:
            continue
        if summary is None:
            continue
        n, done, views, protocol = summary
        release = p.resolve() == shipped
        label = (f"{'shipped release · ' if release else ''}{p.relative_to(results_dir)} · {protocol} · "
                 f"{', '.join(views)} · n={n} · {', '.join(done)}")
        ranked.append(((release, len(done), len(views), n, p.stat().st_mtime), label,
                       p.relative_to(results_dir).as_posix()))
    return [(label, path) for _, label, path in sorted(ranked, reverse=True)]


def read_results(path: str | None, root: Path | None = None) -> dict | None:
    """A results JSON; with ``root``, ``path`` is taken relative to it and must stay inside it."""
    if not path:
        return None
    file = Path(path)
    if root is not None:
        file = (Path(root) / path).resolve()
        if not file.is_relative_to(Path(root).resolve()):
            return None
    try:
        data = parsed_json(file)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- pure figure builders

def table_with_tests(results: dict, view: str | None = None) -> tuple[list[str], list[list]]:
    """:func:`eval.report.summary_table` plus, per variant, its pooled difference from base in this view with q (BH
    over the page) and the smallest difference the paired test detects at 80% power for this n."""
    from medadapt.variants import variant_label as label

    header, rows = summary_table(results, view)
    view = view or default_view(results)
    tests = page_tests(results)
    extra = {}
    for (a, b, v, bench), g in tests.items():
        if a == "base" and v == view and bench == ALL:
            extra[label(b)] = (f"{100 * g['diff']:+.1f}, q = {g['q']:.2g}" + (" *" if g["q"] < ALPHA else ""),
                               f"±{100 * g['mdd']:.1f}")
    out = []
    for r in rows:
        name = str(r[0]).split(" ⚠")[0]
        out.append(r + list(extra.get(name, ("", ""))))
    return header + ["vs base (points, q)", "detectable vs base (80% power)"], out


def view_choices(results: dict | None) -> list[tuple[str, str]]:
    return [(view_label(v), v) for v in views_of(results)] if results else []


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
        up = [100 * (per[c]["ci_high"] - per[c]["acc"]) if c in per else 0 for c in cats]
        down = [100 * (per[c]["acc"] - per[c]["ci_low"]) if c in per else 0 for c in cats]
        n = [per[c]["n"] if c in per else 0 for c in cats]
        fig.add_bar(name=f"{variant_label(v)} (this run)", x=xlabels, y=ys, marker_color=variant_color(v, i), offsetgroup=v,
                    error_y={"type": "data", "symmetric": False, "array": up, "arrayminus": down, "thickness": 1.2},
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
        up = [100 * (br[s][v]["ci_high"] - br[s][v]["acc"]) if v in br[s] else 0 for s in subjects]
        down = [100 * (br[s][v]["acc"] - br[s][v]["ci_low"]) if v in br[s] else 0 for s in subjects]
        ns = [br[s][v]["n"] if v in br[s] else 0 for s in subjects]
        fig.add_bar(name=variant_label(v), y=[f"{s} (n={max(ns[j], 0)})" for j, s in enumerate(subjects)], x=xs,
                    orientation="h", marker_color=variant_color(v, i),
                    error_x={"type": "data", "symmetric": False, "array": up, "arrayminus": down})
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
                    error_y={"type": "data", "symmetric": False, "thickness": 1.2,
                             "array": [100 * (g["ci_high"] - g["diff"]) if g else 0 for g in gs],
                             "arrayminus": [100 * (g["diff"] - g["ci_low"]) if g else 0 for g in gs]},
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


def views_markdown(results: dict | None) -> str:
    """What each view in the file measures, and the generated summary of the comparisons."""
    if not results:
        return ""
    notes = {v: decoding_note(results, v) for v in views_of(results)}
    what = "\n".join(f"- **{view_label(v)}**: {VIEWS[v].what}" + (f" ({notes[v]})" if notes[v] else "")
                     for v in views_of(results) if v in VIEWS)
    return (f"**Protocol**: {protocol_label(results)}\n\n{what}\n\n**What this shows** (generated from the "
            f"numbers below):\n\n{explain(results)}")


def drilldown_html(results: dict | None, benchmark: str, item_id: str) -> str:
    if not results or not item_id:
        return "<p class='ma-empty'>Pick an item.</p>"
    try:
        d = drilldown(results, benchmark, item_id)
    except KeyError as e:
        return f"<p class='ma-empty'>{html.escape(str(e))}</p>"
    it = d["item"]
    opts = "".join(f"<li><b>{html.escape(str(k))}.</b> {html.escape(str(v))}{' ✅' if k == it['answer'] else ''}</li>"
                   for k, v in it["options"].items())
    rows = "".join(
        f"<tr><td>{html.escape(variant_label(r['variant']))}</td><td>{html.escape(view_label(r['view']))}</td>"
        f"<td>{html.escape(str(r['pred'] or '—'))}</td>"
        f"<td>{'✅' if r['correct'] else ('⚠️ invalid' if r['invalid'] else '❌')}</td>"
        f"<td>{html.escape(str(r['filter'] or ''))}</td>"
        f"<td><div style='white-space:pre-wrap;max-height:240px;overflow:auto'>{html.escape(str(r['raw'] or ''))}</div></td></tr>"
        for r in d["rows"])
    snips = "".join(f"<li>{html.escape(str(s.get('title', '')))} <code>{html.escape(str(s.get('id', '')))}</code>"
                    + (f" · from option {html.escape(str(s['option']))}'s query" if s.get("option") else "") + "</li>"
                    for s in d["snippets"])
    return (f"<div><p><b>{html.escape(task_label(benchmark))} · {html.escape(str(it['id']))}</b>"
            f"{' · ' + html.escape(str(it['subject'])) if it.get('subject') else ''}</p>"
            f"<p>{html.escape(str(it['question']))}</p><ul>{opts}</ul><p>Correct answer: <b>{html.escape(str(it['answer']))}</b></p>"
            f"<table><tr><th>variant</th><th>view</th><th>answer</th><th></th><th>parsed by</th><th>raw output</th></tr>{rows}</table>"
            + (f"<p>RAG snippets retrieved:</p><ul>{snips}</ul>" if snips else "") + "</div>")


def list_perplexity(results_dir: Path) -> list[tuple[str, str]]:
    """(label, path relative to ``results_dir``) of every perplexity file (``python -m eval perplexity``), newest first."""
    found = []
    for p in Path(results_dir).rglob("perplexity-*.json"):
        data = read_results(str(p))
        if data and is_perplexity(data):
            found.append((data.get("created", ""), f"{p.relative_to(results_dir)} · {', '.join(data['models'])}",
                          p.relative_to(results_dir).as_posix()))
    return [(label, path) for _, label, path in sorted(found, reverse=True)]


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
                    error_y={"type": "data", "symmetric": False,
                             "array": [per[s]["ci"][1] - per[s]["ppl"] if s in per else 0 for s in sets],
                             "arrayminus": [per[s]["ppl"] - per[s]["ci"][0] if s in per else 0 for s in sets]},
                    customdata=[per[s]["tokens"] if s in per else 0 for s in sets],
                    hovertemplate="%{x}: %{y:.2f} (%{customdata} tokens)<extra>" + v + "</extra>")
    fig.update_layout(barmode="group", height=380, yaxis={"title": "per-token perplexity (lower is better)"},
                      title="What CPT buys: perplexity where it should show<br><sup>error bars: 95% bootstrap CI "
                            "over passages</sup>", legend={"orientation": "h", "y": -0.2}, margin={"t": 60, "b": 40})
    return fig


def perplexity_markdown(ppl: dict | None) -> str:
    """The paired ratios (each model over base, MSFT over CPT) with their CIs, and where the passages come from."""
    if not ppl:
        return ""
    lines = [f"Held-out passages: {ppl.get('heldout_source', '')}; general control: {GENERAL_SOURCE}; "
             f"{ppl.get('max_tokens')} tokens per passage at most."]
    for pair, per in ppl.get("paired", {}).items():
        b, a = pair.split("/")
        cells = [f"{PPL_SETS.get(s, s)} ×{x['ratio']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]"
                 + (" (lower)" if x["ci"][1] < 1 else " (higher)" if x["ci"][0] > 1 else "") for s, x in per.items()]
        lines.append(f"- **{b.upper()} / {a.upper()}** perplexity ratio (paired, 95% CI): " + "; ".join(cells))
    return "\n".join(lines)


def item_choices(results: dict | None, benchmark: str) -> list[tuple[str, str]]:
    items = (results or {}).get("items", {}).get(benchmark, [])
    return [(f"{it['id']} · {it['question'][:70]}", it["id"]) for it in items]


def eval_args(variants: list[str], mode: str, n: int | float, benchmarks: list[str]) -> list[str]:
    """Arguments of ``python -m eval run`` for the Run button."""
    if not variants:
        raise ValueError("pick at least one variant")
    if not benchmarks:
        raise ValueError("pick at least one benchmark")
    return ["--variants", ",".join(variants), "--mode", mode, "--n", str(int(n)), "--benchmarks", ",".join(benchmarks)]


def progress_text(snap: Any) -> str:
    if snap is None:
        return "No evaluation job started from this page."
    pct = f"{100 * snap.step / snap.total_steps:.0f}%" if snap.total_steps else ""
    eta = f", ETA {snap.eta_s:.0f} s" if snap.eta_s else ""
    err = f"\n\n```\n{snap.error[-1500:]}\n```" if snap.error else ""
    return f"**{snap.status}** · {snap.run_dir.name} · {snap.step}/{snap.total_steps or '?'} {pct}{eta}{err}"


# ---------------------------------------------------------------- the tab

def build_benchmarks_tab(state: Any) -> dict[str, Any]:
    """Build the Benchmarks tab inside the current Blocks context; returns its components by name."""
    cfg = state.cfg
    results_dir = cfg.paths.resolve("results_dir")
    c: dict[str, Any] = {}
    shipped = shipped_results(cfg)  # the results the shipped adapters were measured in: the default file
    choices = list_results(results_dir, shipped)

    def running() -> dict[str, str | None]:
        """The checksum of the adapter each Compare column serves by default (what a result is checked against)."""
        default = getattr(state, "default_adapter", lambda kind: None)  # a bare state (tests) serves none
        return {kind: adapter_checksum(default(kind)) for kind in ("sft", "msft")}

    def provenance_text(res: dict | None) -> str:
        text = provenance_markdown(res, running(), variant_label) if res else ""
        return f"**Which adapter each result belongs to** (by checksum):\n\n{text}" if text else ""

    def marked(res: dict | None, rows: list[list]) -> list[list]:
        """The table's rows with each adapter variant's checksum, and a mark where Compare runs another adapter."""
        info = provenance(res, running()) if res else {}
        by_label = sorted(((variant_label(v), i) for v, i in info.items()), key=lambda x: -len(x[0]))
        out = []
        for r in rows:
            hit = next((i for lab, i in by_label if str(r[0]) == lab or str(r[0]).startswith(lab + " ⚠")), None)
            out.append([str(r[0]) + provenance_mark(hit)] + list(r[1:]) if hit else r)
        return out

    def load_results(path: str | None) -> dict | None:  # the tab reads files under results_dir only
        return read_results(path, results_dir)

    shown = path_redactor(cfg)  # no absolute server paths in messages
    first = load_results(choices[0][1]) if choices else None
    benches = benchmarks_of(first) if first else list(cfg.eval.benchmarks)

    def on_view(path: str, view: str, show_paper: bool, sig_bench: str, sub_bench: str, dist_bench: str):
        res = load_results(path)
        view = view if res and view in views_of(res) else (default_view(res) if res else None)
        header, rows = table_with_tests(res, view) if res else (["variant"], [])
        rows = marked(res, rows)
        return (accuracy_figure(res, show_paper, view), gr.update(value=rows, headers=header),
                significance_figure(res, sig_bench or ALL, view),
                subject_figure(res, sub_bench, view) if sub_bench else go.Figure(),
                distribution_figure(res, dist_bench, view) if dist_bench else go.Figure())

    def on_file(path: str, show_paper: bool):
        res = load_results(path)
        b = benchmarks_of(res) if res else []
        sub = [x for x in b if has_breakdown(x)]
        view = default_view(res) if res else None
        per_view = on_view(path, view, show_paper, ALL, sub[0] if sub else None, b[0] if b else None)
        return (*per_view[:3], gr.update(choices=[(task_label(x), x) for x in sub], value=sub[0] if sub else None),
                per_view[3], gr.update(choices=[("all items", ALL)] + [(task_label(x), x) for x in b], value=ALL),
                gr.update(choices=[(task_label(x), x) for x in b], value=b[0] if b else None),
                gr.update(choices=item_choices(res, b[0]) if b else [], value=None), drilldown_html(None, "", ""),
                gr.update(choices=view_choices(res), value=view), views_markdown(res),
                gr.update(choices=[("all items", ALL)] + [(task_label(x), x) for x in b], value=ALL),
                decomposition_figure(res, ALL),
                gr.update(choices=[(task_label(x), x) for x in b], value=b[0] if b else None), per_view[4])

    def on_refresh():
        ch = list_results(results_dir, shipped_results(cfg))
        return gr.update(choices=ch, value=ch[0][1] if ch else None)

    started: dict[str, Path] = {}  # run name -> run dir of the evaluations started from this app

    def on_run(variants, mode, n, bench_sel, secret="", request: gr.Request = None):
        """(message, the run's name): the name is the page session's own (a gr.State), so each page follows the
        evaluation it started and no other."""
        if not unlocked(cfg, secret, request):
            return ("🔒 Evaluation launches are locked in public mode: enter the admin secret, or duplicate the Space.",
                    gr.skip())
        jobs = getattr(state, "jobs", None)
        if jobs is None or not hasattr(jobs, "start_eval"):
            return "This app has no job runner; run `python -m eval run ...` from a shell.", gr.skip()
        try:
            run_dir = Path(jobs.start_eval(eval_args(variants, mode, n, bench_sel)))
        except Exception as e:  # noqa: BLE001 — JobBusyError, ValueError: shown to the user
            return shown(f"⚠️ {e}"), gr.skip()
        started[run_dir.name] = run_dir
        return shown(f"Started evaluation in `{run_dir}`."), run_dir.name

    def on_poll(run: str | None = None):
        """The progress of the evaluation this page started (``run``: its name, from the page's session)."""
        jobs = getattr(state, "jobs", None)
        run_dir = started.get(run or "")
        return shown(progress_text(jobs.poll(run_dir) if run_dir and jobs else None))

    gr.Markdown("Accuracy of each variant on seeded samples of four medical benchmarks. Error bars are 95% Wilson "
                "intervals; at n = 200 per benchmark they are about ±6–7 points (±13 at n = 50), so most "
                "differences are not significant. Stars and the verdict use Benjamini-Hochberg q over every "
                "comparison on the page. The seed paper's reported numbers are off by default: they come from "
                "another model, other items and split, another prompt and parser.")
    with gr.Row():
        c["file"] = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Results file", scale=4)
        c["view"] = gr.Dropdown(view_choices(first), value=default_view(first) if first else None,
                                label="Scoring view", scale=2)
        c["refresh"] = gr.Button("↻ Refresh", scale=0)
        c["show_paper"] = gr.Checkbox(False, label="Show the seed paper's numbers (not comparable)", scale=1)
    c["provenance"] = gr.Markdown(provenance_text(first), elem_id="ma-provenance")
    c["chart"] = gr.Plot(accuracy_figure(first), show_label=False)
    header, rows = table_with_tests(first) if first else (["variant"], [])
    rows = marked(first, rows)
    c["table"] = gr.Dataframe(rows, headers=header, interactive=False, wrap=True,
                              label="Accuracy % [95% CI] · invalid rate · cost (eval wall time) · difference from base "
                                    "with q and the detectable difference")
    with gr.Accordion("What each adaptation buys: knowledge or answer format?", open=True):
        c["views_md"] = gr.Markdown(views_markdown(first))
        with gr.Row():
            with gr.Column():
                c["dec_bench"] = gr.Dropdown([("all items", ALL)] + [(task_label(b), b) for b in benches], value=ALL,
                                             label="Gain on")
                c["decomp"] = gr.Plot(decomposition_figure(first), show_label=False)
            with gr.Column():
                c["dist_bench"] = gr.Dropdown([(task_label(b), b) for b in benches],
                                              value=benches[0] if benches else None, label="Predicted answers on")
                c["dist"] = gr.Plot(distribution_figure(first, benches[0]) if benches else go.Figure(),
                                    show_label=False)
    with gr.Row():
        with gr.Column():
            c["sig_bench"] = gr.Dropdown([("all items", ALL)] + [(task_label(b), b) for b in benches], value=ALL,
                                         label="Paired test on")
            c["sig"] = gr.Plot(significance_figure(first), show_label=False)
        with gr.Column():
            subs = [b for b in benches if has_breakdown(b)]
            c["sub_bench"] = gr.Dropdown([(task_label(b), b) for b in subs], value=subs[0] if subs else None,
                                         label="Per-subject breakdown")
            c["subjects"] = gr.Plot(subject_figure(first, subs[0]) if subs else go.Figure(), show_label=False)
    ppl_files = list_perplexity(results_dir)
    first_ppl = read_results(ppl_files[0][1], results_dir) if ppl_files else None
    with gr.Accordion("What CPT buys: perplexity on held-out corpus passages and a general-text control", open=False):
        c["ppl_file"] = gr.Dropdown(ppl_files, value=ppl_files[0][1] if ppl_files else None, label="Perplexity file")
        c["ppl"] = gr.Plot(perplexity_figure(first_ppl), show_label=False)
        c["ppl_md"] = gr.Markdown(perplexity_markdown(first_ppl))
    with gr.Accordion("Per-question drill-down", open=False):
        with gr.Row():
            c["dd_bench"] = gr.Dropdown([(task_label(b), b) for b in benches], value=benches[0] if benches else None,
                                        label="Benchmark", scale=1)
            c["dd_item"] = gr.Dropdown(item_choices(first, benches[0]) if benches else [], label="Item", scale=3)
        c["dd_view"] = gr.HTML(drilldown_html(None, "", ""))
    with gr.Accordion("Run an evaluation (background job)", open=False):
        with gr.Row():
            c["run_variants"] = gr.CheckboxGroup(list(VARIANTS), value=list(VARIANTS), label="Variants")
            c["run_mode"] = gr.Radio(["loglik", "cot"], value=cfg.eval.mode, label="Scoring")
            c["run_n"] = gr.Number(cfg.eval.n, precision=0, label="Items per benchmark (0 = all)")
            c["run_bench"] = gr.CheckboxGroup([(task_label(b), b) for b in cfg.eval.benchmarks],
                                              value=list(cfg.eval.benchmarks), label="Benchmarks")
        c["secret"] = gr.Textbox(label="Admin secret (public mode)", type="password", visible=is_public(cfg))
        c["run"] = gr.Button("Run evaluation", variant="primary")
        c["run_status"] = gr.Markdown(progress_text(None))
    c["timer"] = gr.Timer(POLL_S)

    file_out = [c["chart"], c["table"], c["sig"], c["sub_bench"], c["subjects"], c["sig_bench"], c["dd_bench"],
                c["dd_item"], c["dd_view"], c["view"], c["views_md"], c["dec_bench"], c["decomp"], c["dist_bench"],
                c["dist"]]
    c["file"].change(on_file, [c["file"], c["show_paper"]], file_out)
    c["file"].change(lambda p: provenance_text(load_results(p)), c["file"], c["provenance"])
    c["view"].input(on_view, [c["file"], c["view"], c["show_paper"], c["sig_bench"], c["sub_bench"], c["dist_bench"]],
                    [c["chart"], c["table"], c["sig"], c["subjects"], c["dist"]])
    c["show_paper"].change(lambda p, s, v: accuracy_figure(load_results(p), s, v),
                           [c["file"], c["show_paper"], c["view"]], c["chart"])
    c["refresh"].click(on_refresh, None, c["file"])
    c["ppl_file"].change(lambda p: (perplexity_figure(read_results(p, results_dir)),
                                    perplexity_markdown(read_results(p, results_dir))), c["ppl_file"],
                         [c["ppl"], c["ppl_md"]])
    c["sig_bench"].change(lambda p, b, v: significance_figure(load_results(p), b or ALL, v),
                          [c["file"], c["sig_bench"], c["view"]], c["sig"])
    c["sub_bench"].change(lambda p, b, v: subject_figure(load_results(p), b, v), [c["file"], c["sub_bench"], c["view"]],
                          c["subjects"])
    c["dec_bench"].change(lambda p, b: decomposition_figure(load_results(p), b or ALL), [c["file"], c["dec_bench"]],
                          c["decomp"])
    c["dist_bench"].change(lambda p, b, v: distribution_figure(load_results(p), b, v),
                           [c["file"], c["dist_bench"], c["view"]], c["dist"])
    c["dd_bench"].change(lambda p, b: gr.update(choices=item_choices(load_results(p), b), value=None),
                         [c["file"], c["dd_bench"]], c["dd_item"])
    c["dd_item"].change(lambda p, b, i: drilldown_html(load_results(p), b, i), [c["file"], c["dd_bench"], c["dd_item"]],
                        c["dd_view"])
    c["eval_run"] = gr.State("")  # the evaluation this page started (per session)
    c["run"].click(on_run, [c["run_variants"], c["run_mode"], c["run_n"], c["run_bench"], c["secret"]],
                   [c["run_status"], c["eval_run"]])
    c["timer"].tick(on_poll, c["eval_run"], c["run_status"], show_progress="hidden")
    c["on_file"], c["on_view"], c["on_run"], c["on_poll"] = on_file, on_view, on_run, on_poll
    c["provenance_text"] = provenance_text
    return c

