"""Assemble the tabs into one ``gr.Blocks`` (no logic of its own beyond wiring page-load refreshes)."""
from __future__ import annotations

import gradio as gr

from medadapt.state import AppState
from medadapt.ui.benchmarks import build_benchmarks_tab
from medadapt.ui.common import banner
from medadapt.ui.compare import build_compare_tab
from medadapt.ui.train import build_train_tab
from medadapt.ui.votes_view import build_votes_section


def build_demo(state: AppState) -> gr.Blocks:
    # delete_cache: every hour, Gradio removes files older than an hour from its cache (uploads, served files)
    with gr.Blocks(title="MedAdapt — base vs RAG vs SFT vs MSFT", delete_cache=(3600, 3600)) as demo:
        gr.HTML(banner(state.cfg))
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                compare = build_compare_tab(state)
            with gr.Tab("Training", id="training"):
                train = build_train_tab(state)
            with gr.Tab("Benchmarks", id="benchmarks"):
                build_benchmarks_tab(state)
                votes = build_votes_section(state)
        demo.load(compare["index_status_fn"], outputs=compare["index_status"])
        adapter_dropdowns = [compare["sft_adapter"], compare["msft_adapter"]]
        demo.load(compare["refresh_fn"], outputs=adapter_dropdowns)
        train["finished_run"].change(compare["refresh_fn"], outputs=adapter_dropdowns)  # new adapters, no restart
        compare["vote"].click(votes["refresh_fn"], outputs=votes["plot"])  # the tally follows new votes
    return demo
