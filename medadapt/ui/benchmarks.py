"""Benchmarks tab layout: accuracy with 95% CIs per benchmark, baselines, the paper's numbers, paired tests,
drill-down, perplexity, and a Run button for evaluations.

Layout only: every event is bound to a method of :class:`medadapt.ui.benchmarks_controller.BenchmarksController`.
"""
from __future__ import annotations

from typing import Any

import gradio as gr
import plotly.graph_objects as go

from medadapt.data.benchmarks import has_breakdown
from eval.report import ALL, benchmarks_of
from eval.views import default_view
from medadapt.charts.results import (accuracy_figure, decomposition_figure, distribution_figure, perplexity_figure,
                                     significance_figure, subject_figure)
from medadapt.ui.benchmarks_controller import BenchmarksController, bench_choices
from medadapt.ui.benchmarks_view import (drilldown_html, item_choices, perplexity_markdown, progress_text,
                                         view_choices, views_markdown)
from medadapt.ui.common import is_public
from medadapt.variants import VARIANTS

POLL_S = 3.0


def build_benchmarks_tab(state: Any) -> dict[str, Any]:
    """Build the Benchmarks tab inside the current Blocks context; returns its components by name (the controller
    as ``c["controller"]``)."""
    ctl = BenchmarksController(state)
    cfg = ctl.cfg
    c: dict[str, Any] = {"controller": ctl}
    choices = ctl.files()
    first = ctl.load(choices[0][1]) if choices else None
    benches = benchmarks_of(first) if first else list(cfg.eval.benchmarks)

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
    c["provenance"] = gr.Markdown(ctl.provenance_text(first), elem_id="ma-provenance")
    c["chart"] = gr.Plot(accuracy_figure(first), show_label=False)
    header, rows = ctl.table(first)
    c["table"] = gr.Dataframe(rows, headers=header, interactive=False, wrap=True,
                              label="Accuracy % [95% CI] · invalid rate · cost (eval wall time) · difference from base "
                                    "with q and the detectable difference")
    with gr.Accordion("What each adaptation buys: knowledge or answer format?", open=True):
        c["views_md"] = gr.Markdown(views_markdown(first))
        with gr.Row():
            with gr.Column():
                c["dec_bench"] = gr.Dropdown(bench_choices(benches, True), value=ALL, label="Gain on")
                c["decomp"] = gr.Plot(decomposition_figure(first), show_label=False)
            with gr.Column():
                c["dist_bench"] = gr.Dropdown(bench_choices(benches), value=benches[0] if benches else None, label="Predicted answers on")
                c["dist"] = gr.Plot(distribution_figure(first, benches[0]) if benches else go.Figure(),
                                    show_label=False)
    with gr.Row():
        with gr.Column():
            c["sig_bench"] = gr.Dropdown(bench_choices(benches, True), value=ALL, label="Paired test on")
            c["sig"] = gr.Plot(significance_figure(first), show_label=False)
        with gr.Column():
            subs = [b for b in benches if has_breakdown(b)]
            c["sub_bench"] = gr.Dropdown(bench_choices(subs), value=subs[0] if subs else None,
                                         label="Per-subject breakdown")
            c["subjects"] = gr.Plot(subject_figure(first, subs[0]) if subs else go.Figure(), show_label=False)
    ppl_files = ctl.perplexity_files()
    first_ppl = ctl.load(ppl_files[0][1]) if ppl_files else None
    with gr.Accordion("What CPT buys: perplexity on held-out corpus passages and a general-text control", open=False):
        c["ppl_file"] = gr.Dropdown(ppl_files, value=ppl_files[0][1] if ppl_files else None, label="Perplexity file")
        c["ppl"] = gr.Plot(perplexity_figure(first_ppl), show_label=False)
        c["ppl_md"] = gr.Markdown(perplexity_markdown(first_ppl))
    with gr.Accordion("Per-question drill-down", open=False):
        with gr.Row():
            c["dd_bench"] = gr.Dropdown(bench_choices(benches), value=benches[0] if benches else None,
                                        label="Benchmark", scale=1)
            c["dd_item"] = gr.Dropdown(item_choices(first, benches[0]) if benches else [], label="Item", scale=3)
        c["dd_view"] = gr.HTML(drilldown_html(None, "", ""))
    with gr.Accordion("Run an evaluation (background job)", open=False):
        with gr.Row():
            c["run_variants"] = gr.CheckboxGroup(list(VARIANTS), value=list(VARIANTS), label="Variants")
            c["run_mode"] = gr.Radio(["loglik", "cot"], value=cfg.eval.mode, label="Scoring")
            c["run_n"] = gr.Number(cfg.eval.n, precision=0, label="Items per benchmark (0 = all)")
            c["run_bench"] = gr.CheckboxGroup(bench_choices(cfg.eval.benchmarks),
                                              value=list(cfg.eval.benchmarks), label="Benchmarks")
        c["secret"] = gr.Textbox(label="Admin secret (public mode)", type="password", visible=is_public(cfg))
        c["run"] = gr.Button("Run evaluation", variant="primary")
        c["run_status"] = gr.Markdown(progress_text(None))
    c["timer"] = gr.Timer(POLL_S)

    file_out = [c["chart"], c["table"], c["sig"], c["sub_bench"], c["subjects"], c["sig_bench"], c["dd_bench"],
                c["dd_item"], c["dd_view"], c["view"], c["views_md"], c["dec_bench"], c["decomp"], c["dist_bench"],
                c["dist"]]
    c["file"].change(ctl.on_file, [c["file"], c["show_paper"]], file_out)
    c["file"].change(ctl.on_provenance, c["file"], c["provenance"])
    c["view"].input(ctl.on_view, [c["file"], c["view"], c["show_paper"], c["sig_bench"], c["sub_bench"],
                                  c["dist_bench"]], [c["chart"], c["table"], c["sig"], c["subjects"], c["dist"]])
    c["show_paper"].change(ctl.on_paper, [c["file"], c["show_paper"], c["view"]], c["chart"])
    c["refresh"].click(ctl.on_refresh, None, c["file"])
    c["ppl_file"].change(ctl.on_perplexity, c["ppl_file"], [c["ppl"], c["ppl_md"]])
    c["sig_bench"].change(ctl.on_significance, [c["file"], c["sig_bench"], c["view"]], c["sig"])
    c["sub_bench"].change(ctl.on_subjects, [c["file"], c["sub_bench"], c["view"]], c["subjects"])
    c["dec_bench"].change(ctl.on_decomposition, [c["file"], c["dec_bench"]], c["decomp"])
    c["dist_bench"].change(ctl.on_distribution, [c["file"], c["dist_bench"], c["view"]], c["dist"])
    c["dd_bench"].change(ctl.on_items, [c["file"], c["dd_bench"]], c["dd_item"])
    c["dd_item"].change(ctl.on_item, [c["file"], c["dd_bench"], c["dd_item"]], c["dd_view"])
    c["eval_run"] = gr.State("")  # the evaluation this page started (per session)
    c["run"].click(ctl.on_run, [c["run_variants"], c["run_mode"], c["run_n"], c["run_bench"], c["secret"]],
                   [c["run_status"], c["eval_run"]])
    c["timer"].tick(ctl.on_poll, c["eval_run"], c["run_status"], show_progress="hidden")
    return c
