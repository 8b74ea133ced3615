"""The Benchmarks tab's pure view helpers: the table with its tests, the views' notes, the drill-down, the perplexity
ratios, the choices of the dropdowns, the Run button's arguments and the job's progress line.
"""
from __future__ import annotations

import html
from typing import Any

from medadapt.data.benchmarks import task_label
from eval.decompose import ALPHA, explain, page_tests
from eval.perplexity import GENERAL_SOURCE, SETS as PPL_SETS
from eval.report import ALL, drilldown, summary_table
from eval.views import VIEWS, decoding_note, default_view, protocol_label, view_label, views_of
from medadapt.variants import variant_label


def table_with_tests(results: dict, view: str | None = None) -> tuple[list[str], list[list]]:
    """:func:`eval.report.summary_table` plus, per variant, its pooled difference from base in this view with q (BH
    over the page) and the smallest difference the paired test detects at 80% power for this n."""
    header, rows = summary_table(results, view)
    view = view or default_view(results)
    tests = page_tests(results)
    extra = {}
    for (a, b, v, bench), g in tests.items():
        if a == "base" and v == view and bench == ALL:
            extra[variant_label(b)] = (f"{100 * g['diff']:+.1f}, q = {g['q']:.2g}" + (" *" if g["q"] < ALPHA else ""),
                               f"±{100 * g['mdd']:.1f}")
    out = []
    for r in rows:
        name = str(r[0]).split(" ⚠")[0]
        out.append(r + list(extra.get(name, ("", ""))))
    return header + ["vs base (points, q)", "detectable vs base (80% power)"], out


def view_choices(results: dict | None) -> list[tuple[str, str]]:
    return [(view_label(v), v) for v in views_of(results)] if results else []


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
