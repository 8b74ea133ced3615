"""Compare tab layout: one question, four columns (base, RAG, SFT, MSFT) answering at once, streamed side by side.

Layout only: every event is bound to a method of :class:`medadapt.ui.compare_controller.CompareController`; a
control's key in the tab is the name of the input it sends (:func:`medadapt.ui.compare_controller.compare_inputs`).
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from medadapt.config import GenSettings, RagConfig, setting
from medadapt.serve.choice import concurrent_generations
from medadapt.env import zerogpu
from medadapt.state import AppState
from medadapt.ui import render
from medadapt.ui.compare_controller import COLUMN_PARTS, CompareController
from medadapt.ui.inflight import GENERATE
from medadapt.variants import VARIANTS, variant_label
from medadapt.votes import CHOICES

EXAMPLES = [
    "A 45-year-old man has crushing substernal chest pain radiating to the left arm for 30 minutes. "
    "What is the first-line initial management?",
    "What is the mechanism of action of metformin in type 2 diabetes?",
    "A patient has sudden weakness of the left arm and leg after a long flight and a swollen, tender right calf. "
    "Which cardiac abnormality most likely explains this?",
    "Which vitamin deficiency causes megaloblastic anemia with neurological symptoms?",
    "What is the most common cause of community-acquired pneumonia in adults?",
]
SETUP_POLL_S = 3.0  # how often the page checks the first-run setup (cheap: one small JSON file, cached by mtime)


def _slider(cls: type, key: str, value: Any, step: float, suffix: str = "", hi: float | None = None,
            **kw: Any) -> gr.Slider:
    """A slider over a config setting's bounds (``hi`` overrides the upper one)."""
    s = setting(cls, key)
    return gr.Slider(s.lo, s.hi if hi is None else hi, value=value, step=step, label=s.label + suffix, **kw)


def build_compare_tab(state: AppState) -> dict[str, Any]:
    """Build the tab's components inside the current Blocks context and wire its events to its controller
    (``c["controller"]``)."""
    ctl = CompareController(state)
    c: dict[str, Any] = {"controller": ctl}
    gen = state.cfg.generation
    with gr.Row(equal_height=True):
        c["question"] = gr.Textbox(label="Medical question", lines=3, scale=5, autofocus=True,
                                   placeholder="Type a medical question, e.g. a USMLE-style vignette…")
        with gr.Column(scale=1, min_width=140):
            c["ask"] = gr.Button("Ask all four", variant="primary", elem_id="ma-ask")
            c["stop"] = gr.Button("Stop", variant="stop")
    gr.Examples(EXAMPLES, inputs=[c["question"]], label="Examples")
    with gr.Accordion("Generation and retrieval settings", open=False):
        with gr.Row():
            c["max_new_tokens"] = _slider(GenSettings, "max_new_tokens", gen.max_new_tokens, 16,
                                          hi=state.cfg.max_new_tokens_limit)
            c["temperature"] = _slider(GenSettings, "temperature", gen.temperature, 0.05, " (0 = greedy)")
            c["top_p"] = _slider(GenSettings, "top_p", gen.top_p, 0.05)
            c["repetition_penalty"] = _slider(GenSettings, "repetition_penalty", gen.repetition_penalty, 0.05,
                                              " (1 = off)",
                                              info="guards against loops; temperature 0 + penalty 1 = plain greedy")
            c["think_budget"] = _slider(GenSettings, "think_budget", gen.think_budget, 16, " (tokens, 0 = off)",
                                        hi=state.cfg.max_new_tokens_limit,
                                        info="a reasoning still open after this many tokens is closed (</think>) "
                                             "and the model answers")
        with gr.Row():
            c["top_k"] = _slider(RagConfig, "top_k", state.cfg.rag.top_k, 1)
            c["rag_everywhere"] = gr.Checkbox(False, label="Add retrieval to SFT and MSFT too (ablation)")
        with gr.Row():
            c["index_status"] = gr.Markdown(elem_id="ma-index-status")
            c["build_index"] = gr.Button("Build index", size="sm")
            c["refresh_adapters"] = gr.Button("Refresh adapters", size="sm")
    c["setup_status"] = gr.Markdown(ctl.setup_text(), elem_id="ma-setup-status")
    c["notices"] = gr.Markdown(elem_id="ma-notices")
    with gr.Row(elem_id="ma-columns", equal_height=False):
        for v in VARIANTS:
            with gr.Column(min_width=0, elem_classes=["ma-col"], elem_id=f"ma-col-{v}"):
                gr.Markdown(f"### {variant_label(v)}", elem_classes=["ma-col-title"])
                gr.Markdown(render.SUBTITLES[v], elem_classes=["ma-col-sub"])
                if v in ("sft", "msft"):
                    c[f"{v}_adapter"] = gr.Dropdown(label="Adapter", **ctl.adapter_dropdown(v), allow_custom_value=False)
                c[f"{v}_answer"] = gr.Markdown(elem_id=f"ma-answer-{v}", min_height=80)
                with gr.Accordion("Chain of thought", open=False):
                    c[f"{v}_reasoning"] = gr.Markdown(elem_id=f"ma-reasoning-{v}")
                c[f"{v}_stats"] = gr.Markdown(elem_classes=["ma-stats"], elem_id=f"ma-stats-{v}")
                c[f"{v}_snippets"] = gr.HTML(elem_id=f"ma-snippets-{v}")
    with gr.Row(equal_height=True):
        c["vote_choice"] = gr.Radio([(variant_label(k) if k != "all_bad" else "All bad", k) for k in CHOICES],
                                    label="Which answer is best?", scale=3)
        c["vote"] = gr.Button("Submit vote", scale=1)
        c["export"] = gr.Button("Export result (Markdown + JSON)", scale=1)
    c["vote_status"] = gr.Markdown()
    with gr.Accordion("Exported result: download or copy (made in your browser, nothing is stored on the server)",
                      open=True, visible=False) as c["export_box"]:
        with gr.Row():
            c["export_md"] = gr.Code(label="Markdown", language="markdown", interactive=False, lines=8, max_lines=16,
                                     buttons=["copy", "download"])
            c["export_json"] = gr.Code(label="JSON", language="json", interactive=False, lines=8, max_lines=16,
                                       buttons=["copy", "download"])
    c["result"] = gr.State(None)
    c["exported"] = gr.State("")  # the answers last exported in this page (each set once)
    _wire(ctl, c)
    return c


def _wire(ctl: CompareController, c: dict[str, Any]) -> None:
    outputs = [c[f"{v}_{p}"] for v in VARIANTS for p in COLUMN_PARTS]
    # one concurrency group for both triggers (the in-flight limits count it): questions generate side by side, their
    # rows batched together by the engine (``MEDADAPT_BATCHING=off``: one at a time)
    run = dict(fn=zerogpu(ctl.ask, ctl.duration), inputs=[c[name] for name in ctl.inputs],
               outputs=outputs + [c["notices"], c["result"]], concurrency_id=GENERATE,
               concurrency_limit=concurrent_generations(), show_progress="minimal")
    ev_click = c["ask"].click(api_name="compare", **run)
    ev_submit = c["question"].submit(api_name=False, **run)
    c["stop"].click(None, cancels=[ev_click, ev_submit])
    c["vote"].click(ctl.vote, inputs=[c["vote_choice"], c["result"]], outputs=[c["vote_status"], c["result"]],
                    api_name="vote")
    c["export"].click(ctl.export, inputs=[c["result"], c["exported"]],
                      outputs=[c["export_box"], c["export_md"], c["export_json"], c["exported"]], api_name="export")
    c["build_index"].click(ctl.build, outputs=c["index_status"], api_name="build_index", concurrency_id="index")
    c["refresh_adapters"].click(ctl.refresh, outputs=[c["sft_adapter"], c["msft_adapter"]],
                                api_name="refresh_adapters")
    if ctl.state.setup is not None:
        c["setup_seen"] = gr.State("")
        c["setup_timer"] = gr.Timer(SETUP_POLL_S)
        c["setup_timer"].tick(ctl.setup_tick, c["setup_seen"], [c["setup_status"], c["sft_adapter"],
                                                                c["msft_adapter"], c["index_status"], c["setup_seen"]],
                              api_name=False, show_progress="hidden", concurrency_limit=None)
    c["index_status_fn"], c["refresh_fn"] = ctl.index_status, ctl.refresh
