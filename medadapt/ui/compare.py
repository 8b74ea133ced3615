"""Compare tab: one question, four columns (base, RAG, SFT, MSFT) answering at once, streamed side by side."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import gradio as gr

from medadapt.config import GenerationConfig, RagConfig, setting
from medadapt.variants import VARIANTS, variant_label
from medadapt.serve.choice import concurrent_generations
from medadapt.pipeline import InputError, check_settings, checked
from medadapt.space import zerogpu
from medadapt.state import NO_ADAPTER, AppState
from medadapt.setup_chain import STEP_READY
from medadapt.ui import render
from medadapt.ui.common import warn
from medadapt.ui.inflight import GENERATE
from medadapt.ui.redact import path_redactor
from medadapt.refs import adapter_name
from medadapt.votes import CHOICES, VoteError, answers_key, record_vote, tally_votes

EXAMPLES = [
    "A 45-year-old man has crushing substernal chest pain radiating to the left arm for 30 minutes. "
    "What is the first-line initial management?",
    "What is the mechanism of action of metformin in type 2 diabetes?",
    "A patient has sudden weakness of the left arm and leg after a long flight and a swollen, tender right calf. "
    "Which cardiac abnormality most likely explains this?",
    "Which vitamin deficiency causes megaloblastic anemia with neurological symptoms?",
    "What is the most common cause of community-acquired pneumonia in adults?",
]
NONE_CHOICE = ("(none)", NO_ADAPTER)
SETUP_POLL_S = 3.0  # how often the page checks the first-run setup (cheap: one small JSON file, cached by mtime)
UPDATE_EVERY_S = 0.12  # stream UI updates at most ~8 times a second


def _adapter_dropdown(state: AppState, kind: str) -> dict[str, Any]:
    """Choices: the default (``""``, resolved when asked, so a column the setup prepares starts answering without a
    reload; its label says what it resolves to now), every listed adapter with its origin (shipped, trained here,
    published), and none. Values are names, never server paths (:meth:`AppState.adapters`), and so are the labels."""
    shown = path_redactor(state.cfg)  # a configured adapter folder or a published model's folder may be a path
    choices = [(shown(label), name) for label, name in state.adapter_choices(kind)]
    return {"choices": [(shown(state.default_label(kind)), "")] + choices + [NONE_CHOICE], "value": ""}


def _column_outputs(res) -> list[Any]:
    out: list[Any] = []
    for v in VARIANTS:
        ans = res.answers[v]
        out += [render.answer_markdown(ans), render.reasoning_markdown(ans), render.stats_markdown(ans),
                render.snippets_html(ans)]
    return out


def _slider(cls: type, key: str, value: Any, step: float, suffix: str = "", hi: float | None = None,
            **kw: Any) -> gr.Slider:
    """A slider over a config setting's bounds (``hi`` overrides the upper one)."""
    s = setting(cls, key)
    return gr.Slider(s.lo, s.hi if hi is None else hi, value=value, step=step, label=s.label + suffix, **kw)


def build_compare_tab(state: AppState) -> dict[str, Any]:
    """Build the tab's components inside the current Blocks context and wire its events."""
    c: dict[str, Any] = {}
    gen = state.cfg.generation
    shown = path_redactor(state.cfg)  # no absolute server paths in what a visitor sees
    with gr.Row(equal_height=True):
        c["question"] = gr.Textbox(label="Medical question", lines=3, scale=5, autofocus=True,
                                   placeholder="Type a medical question, e.g. a USMLE-style vignette…")
        with gr.Column(scale=1, min_width=140):
            c["ask"] = gr.Button("Ask all four", variant="primary", elem_id="ma-ask")
            c["stop"] = gr.Button("Stop", variant="stop")
    gr.Examples(EXAMPLES, inputs=[c["question"]], label="Examples")
    with gr.Accordion("Generation and retrieval settings", open=False):
        with gr.Row():
            c["max_new_tokens"] = _slider(GenerationConfig, "max_new_tokens", gen.max_new_tokens, 16,
                                          hi=state.cfg.max_new_tokens_limit)
            c["temperature"] = _slider(GenerationConfig, "temperature", gen.temperature, 0.05, " (0 = greedy)")
            c["top_p"] = _slider(GenerationConfig, "top_p", gen.top_p, 0.05)
            c["repetition_penalty"] = _slider(GenerationConfig, "repetition_penalty", gen.repetition_penalty, 0.05,
                                              " (1 = off)",
                                              info="guards against loops; temperature 0 + penalty 1 = plain greedy")
            c["think_budget"] = _slider(GenerationConfig, "think_budget", gen.think_budget, 16, " (tokens, 0 = off)",
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
    c["setup_status"] = gr.Markdown(shown(render.setup_markdown(state.setup.state())) if state.setup else "",
                                    elem_id="ma-setup-status")
    c["notices"] = gr.Markdown(elem_id="ma-notices")
    with gr.Row(elem_id="ma-columns", equal_height=False):
        for v in VARIANTS:
            with gr.Column(min_width=0, elem_classes=["ma-col"], elem_id=f"ma-col-{v}"):
                gr.Markdown(f"### {variant_label(v)}", elem_classes=["ma-col-title"])
                gr.Markdown(render.SUBTITLES[v], elem_classes=["ma-col-sub"])
                if v in ("sft", "msft"):
                    c[f"{v}_adapter"] = gr.Dropdown(label="Adapter", **_adapter_dropdown(state, v), allow_custom_value=False)
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
    _wire(state, c, shown)
    _wire_feedback(state, c, shown)
    return c


def adapter_names(state: AppState, res: Any) -> dict[str, str]:
    """How an export or a vote names each column's adapter: its run (:func:`medadapt.refs.adapter_name`)."""
    return {v: adapter_name(state.cfg, a.adapter) for v, a in res.answers.items()}


def _wire_feedback(state: AppState, c: dict[str, Any], shown: Callable[[str], str]) -> None:
    def vote(choice, result, request: gr.Request):
        data = result.to_dict() if result else None
        key = answers_key(getattr(request, "session_hash", None) or "", data) if data else None
        try:  # one vote per session per set of answers, checked and recorded atomically (parallel votes race)
            record_vote(state.cfg, choice or "", data, key, adapter_names(state, result) if result else None)
        except VoteError as e:
            return f"⚠️ {e}", gr.skip()
        except OSError as e:
            return f"⚠️ The vote could not be saved: {shown(str(e))}", gr.skip()
        result.voted = True
        counts = tally_votes(state.cfg)
        return "Thanks — vote recorded. Tally so far: " + ", ".join(f"{k} {n}" for k, n in counts.items()), result

    def export(result, exported):
        """The result as Markdown and JSON in the page, which saves them in the browser: no file on the server, no
        server path in either (adapters by their run's name), and each set of answers made once."""
        if result is None or not result.done:
            warn("Ask a question and wait for the answers before exporting.")
            return gr.skip(), gr.skip(), gr.skip(), exported
        key = answers_key("", result.to_dict())
        if key == exported:  # already in the page: nothing to make again
            return gr.skip(), gr.skip(), gr.skip(), exported
        names = adapter_names(state, result)
        md = shown(render.result_markdown(result, names))
        js = shown(json.dumps(render.result_json(result, names), indent=2, default=str, ensure_ascii=False))
        return gr.update(visible=True), md, js, key

    c["vote"].click(vote, inputs=[c["vote_choice"], c["result"]], outputs=[c["vote_status"], c["result"]],
                    api_name="vote")
    c["export"].click(export, inputs=[c["result"], c["exported"]],
                      outputs=[c["export_box"], c["export_md"], c["export_json"], c["exported"]], api_name="export")


def _wire(state: AppState, c: dict[str, Any], shown: Callable[[str], str]) -> None:
    outputs = [c[f"{v}_{p}"] for v in VARIANTS for p in ("answer", "reasoning", "stats", "snippets")]

    def ask(question, max_new_tokens, temperature, top_p, top_k, rag_everywhere, sft_path, msft_path,
            repetition_penalty=None, think_budget=None):
        try:
            settings = check_settings(state.cfg, max_new_tokens, temperature, top_p, repetition_penalty,
                                      think_budget)
            k = checked(RagConfig, "top_k", top_k)
            adapters = {k: state.checked_adapter(k, p) for k, p in (("sft", sft_path), ("msft", msft_path))}
            stream = state.pipeline.compare(question, settings, adapters, bool(rag_everywhere), k)
            last = 0.0
            for res in stream:
                now = time.monotonic()
                if res.done or now - last >= UPDATE_EVERY_S:
                    last = now
                    for ans in res.answers.values():
                        ans.message = shown(ans.message)
                    notes = " ".join(f"⚠️ {shown(n)}" for n in res.notices)
                    yield *_column_outputs(res), notes, res
        except InputError as e:
            warn(shown(str(e)))
            yield *[gr.update()] * len(outputs), f"⚠️ {shown(str(e))}", gr.update()
        except Exception as e:  # the app never crashes on a user's input: report and keep serving
            yield *[gr.update()] * len(outputs), f"⚠️ Generation failed: {type(e).__name__}: {shown(str(e))}", gr.update()

    inputs = [c["question"], c["max_new_tokens"], c["temperature"], c["top_p"], c["top_k"], c["rag_everywhere"],
              c["sft_adapter"], c["msft_adapter"], c["repetition_penalty"], c["think_budget"]]
    # one concurrency group for both triggers (the in-flight limits count it): questions generate side by side, their
    # rows batched together by the engine (``MEDADAPT_BATCHING=off``: one at a time)
    run = dict(fn=zerogpu(ask), inputs=inputs, outputs=outputs + [c["notices"], c["result"]], concurrency_id=GENERATE,
               concurrency_limit=concurrent_generations(), show_progress="minimal")
    ev_click = c["ask"].click(api_name="compare", **run)
    ev_submit = c["question"].submit(api_name=False, **run)
    c["stop"].click(None, cancels=[ev_click, ev_submit])

    def index_status():
        s = state.pipeline.index_status()
        if s.get("built"):
            return f"📚 Index **{s['table']}**: {s['rows']:,} snippets, embedder `{s['embedder']}` ({s['dim']}-d)."
        return "📚 Retrieval index not built yet — press **Build index** (or run `python -m medadapt.retrieval build`)."

    def build(progress=gr.Progress()):
        if state.cfg.public:
            return "Building the index is disabled in public mode."
        if state.setup is not None and state.setup.message_for("rag"):
            return f"📚 The first-run setup is on it: {state.setup.message_for('rag')}."
        try:
            state.pipeline.build_index(lambda done, total: progress((done, total), desc="Embedding snippets"))
        except Exception as e:
            return f"⚠️ Index build failed: {type(e).__name__}: {shown(str(e))}"
        return index_status()

    def refresh():
        return [gr.update(**_adapter_dropdown(state, k)) for k in ("sft", "msft")]

    def setup_tick(seen: str):
        """The setup line; the adapter choices and index line are refreshed when a step finishes."""
        st = state.setup.state()
        text = shown(render.setup_markdown(st))
        done = ",".join(s for s, r in st.steps.items() if r.status in STEP_READY)
        if done == seen:
            return text, gr.skip(), gr.skip(), gr.skip(), seen
        return text, *refresh(), index_status(), done

    c["build_index"].click(build, outputs=c["index_status"], api_name="build_index", concurrency_id="index")
    c["refresh_adapters"].click(refresh, outputs=[c["sft_adapter"], c["msft_adapter"]], api_name="refresh_adapters")
    if state.setup is not None:
        c["setup_seen"] = gr.State("")
        c["setup_timer"] = gr.Timer(SETUP_POLL_S)
        c["setup_timer"].tick(setup_tick, c["setup_seen"], [c["setup_status"], c["sft_adapter"], c["msft_adapter"],
                                                            c["index_status"], c["setup_seen"]],
                              api_name=False, show_progress="hidden", concurrency_limit=None)
    c["index_status_fn"], c["refresh_fn"] = index_status, refresh
