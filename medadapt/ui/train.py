"""Training tab layout: configure a job (form ↔ YAML ↔ CLI), launch it, watch it live, browse past runs.

Layout only: every event is bound to a method of :class:`medadapt.ui.train_controller.TrainController`. Public mode
locks launching behind ``MEDADAPT_ADMIN_PASSWORD``.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from medadapt.charts.loss import loss_figure
from medadapt.jobs.launcher import DEFAULT_CONFIG, KIND_LABELS, accelerate_configs
from medadapt.jobs.train_form import FIELDS, JOB_LABELS, JOBS
from medadapt.ui import train_view as view
from medadapt.ui.common import is_public
from medadapt.ui.train_controller import NO_RUN_CARD, TrainController

POLL_S = 2.0
PUBLIC_NOTE = (
    "🔒 **Training is locked in this public demo** — it would tie up the shared hardware. To train your own "
    "adapters, **duplicate this Space** (⋮ menu → *Duplicate this Space*) onto your own hardware, or clone the "
    "repository and run `python app.py` locally; there the Start button works without a password. Admins can "
    "unlock launching here with the admin secret (`MEDADAPT_ADMIN_PASSWORD`)."
)


def build_train_tab(state: Any) -> dict[str, Any]:
    """Build the Training tab inside the current Blocks context; returns its components by name (the controller
    as ``c["controller"]``)."""
    ctl = TrainController(state)
    cfg, jobs, shown = ctl.cfg, ctl.jobs, ctl.shown
    c: dict[str, Any] = {"controller": ctl}

    # ---------------------------------------------------------------- layout
    public = is_public(cfg)
    if public:
        gr.Markdown(PUBLIC_NOTE)
    c["secret"] = gr.Textbox(label="Admin secret", type="password", visible=public, max_lines=1,
                             placeholder="MEDADAPT_ADMIN_PASSWORD")
    gr.Markdown(f"Train LoRA adapters from the browser. Each job runs as its own process (`python -m trainers.<job>`, "
                "or `accelerate launch` over N processes) "
                f"with its output in `{shown(str(jobs.runs_root))}/`; a finished adapter shows up in the **Compare** tab's "
                "choices. Closing or reloading this page does not stop a job.", elem_classes="ma-train-intro")
    first_configs = ctl.config_choices("sft")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            gr.Markdown("### ① Configure")
            with gr.Row():
                c["job"] = gr.Radio([(JOB_LABELS[j], j) for j in JOBS], value="sft", label="Job", scale=3)
                c["config"] = gr.Dropdown(first_configs, value=first_configs[0][1] if first_configs else None,
                                          label="Base config", scale=2, info="configs/<profile>/ and your saved ones",
                                          allow_custom_value=True)
            first = c["config"].value
            defaults = ctl.form_defaults("sft", first)
            init_yaml, init_cli, _ = ctl.preview("sft", first, *(defaults[f.key] for f in FIELDS))
            c["fields"] = []
            with gr.Group():
                for i in range(0, len(FIELDS) - 2, 3):
                    with gr.Row():
                        for f in FIELDS[i:i + 3]:
                            c["fields"].append(gr.Number(defaults[f.key], label=f.label, min_width=110,
                                                         info=f.info or f"{f.lo:g} – {f.hi:g}"))
                with gr.Row():
                    f_pack, f_data = FIELDS[-2], FIELDS[-1]
                    c["fields"].append(gr.Checkbox(defaults[f_pack.key], label=f_pack.label, scale=1,
                                                   info=f_pack.info))
                    c["fields"].append(gr.Textbox(defaults[f_data.key], label=f_data.label, info=f_data.info,
                                                  scale=3, max_lines=1))
            with gr.Row(equal_height=True):
                c["launcher"] = gr.Radio([(lbl, k) for k, lbl in KIND_LABELS.items()], value="single",
                                         label="Launcher", scale=3,
                                         info="accelerate: DDP / DeepSpeed / FSDP over N processes (GPUs; gloo on CPU)")
                c["nproc"] = gr.Number(2, label="Processes", precision=0, minimum=1, maximum=64, min_width=90,
                                       scale=1)
                c["accel_config"] = gr.Dropdown(accelerate_configs(), value=DEFAULT_CONFIG, label="accelerate config",
                                                scale=2, allow_custom_value=True)
            c["form_message"] = gr.Markdown()
            with gr.Accordion("YAML and equivalent command", open=True):
                c["cli"] = gr.Code(init_cli, label="Equivalent CLI command", language="shell", lines=2, max_lines=4,
                                   interactive=False,
                                   buttons=["copy"], wrap_lines=True)
                c["yaml"] = gr.Code(init_yaml, label="Exact config YAML", language="yaml", lines=10, max_lines=18,
                                    interactive=False, buttons=["copy", "download"])
            with gr.Row(equal_height=True):
                c["save_name"] = gr.Textbox(label="Save config as", placeholder="my-sft-run", max_lines=1, scale=3)
                c["save"] = gr.Button("Save config", scale=1)
        with gr.Column(scale=6, min_width=420):
            gr.Markdown("### ② Run")
            with gr.Row():
                c["start"] = gr.Button("Start training", variant="primary", elem_id="ma-train-start")
                c["stop"] = gr.Button("Stop", variant="stop", elem_id="ma-train-stop")
                c["resume"] = gr.Button("Resume", elem_id="ma-train-resume")
            c["message"] = gr.Markdown(elem_id="ma-train-message")
            c["setup"] = gr.Markdown(ctl.setup_text(), elem_id="ma-train-setup")
            progress, chart, log = ctl.live_view()
            c["progress"] = gr.HTML(progress, elem_id="ma-train-live")
            c["chart"] = gr.Plot(chart, elem_id="ma-train-chart", show_label=False)
            c["log"] = gr.Textbox(log, label="Log tail (stdout.log)", lines=8,
                                  max_lines=8, autoscroll=True, interactive=False, elem_id="ma-train-log")
            c["live"] = gr.JSON(visible=False)
    gr.Markdown("### ③ Runs")
    runs = ctl.runs_table()
    c["runs"] = gr.Dataframe(runs, headers=view.RUN_COLUMNS, interactive=False, wrap=True,
                             max_height=320, elem_id="ma-train-runs")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=200):
            c["run_pick"] = gr.Dropdown([""] + [r[0] for r in runs], value="", label="Run", filterable=True,
                                        allow_custom_value=True)
            c["run_card"] = gr.Markdown(NO_RUN_CARD, elem_id="ma-train-card")
        c["run_chart"] = gr.Plot(loss_figure([], title="Loss — pick a run", height=300), show_label=False, scale=2)
    # the name of the last run seen finishing: other tabs hook ``.change`` to refresh their adapter choices
    c["finished_run"] = gr.Textbox(visible=False)
    c["seen"] = gr.State({})
    c["timer"] = gr.Timer(POLL_S)

    # ---------------------------------------------------------------- events
    launch = [c["launcher"], c["nproc"], c["accel_config"]]
    form = [c["job"], c["config"], *c["fields"], *launch]
    c["job"].change(ctl.on_job, c["job"], c["config"], api_name="configs")
    c["config"].change(ctl.on_config, [c["job"], c["config"], *launch],
                       [*c["fields"], c["yaml"], c["cli"], c["form_message"]], api_name="load_config")
    for comp in [*c["fields"], *launch]:
        comp.input(ctl.preview, form, [c["yaml"], c["cli"], c["form_message"]], api_name=False, show_progress="hidden")
    c["preview_btn"] = gr.Button(visible=False)
    c["preview_btn"].click(ctl.preview, form, [c["yaml"], c["cli"], c["form_message"]], api_name="preview")
    c["save"].click(ctl.on_save, [c["secret"], c["save_name"], *form], [c["config"], c["form_message"]],
                    api_name="save_config")
    live_out = [c["progress"], c["chart"], c["log"], c["live"], c["runs"], c["run_pick"], c["finished_run"], c["seen"],
                c["setup"]]
    for btn, fn, inputs, name in ((c["start"], ctl.on_start, [c["secret"], *form], "start"),
                                  (c["stop"], ctl.on_stop, [c["secret"]], "stop"),
                                  (c["resume"], ctl.on_resume, [c["secret"], c["run_pick"]], "resume")):
        btn.click(fn, inputs, c["message"], api_name=name).then(ctl.poll, c["seen"], live_out, api_name=False)
    c["timer"].tick(ctl.poll, c["seen"], live_out, api_name="poll", show_progress="hidden", concurrency_limit=None)
    c["runs"].select(ctl.on_select, c["runs"], c["run_pick"], api_name=False)
    c["run_pick"].change(ctl.show_run, c["run_pick"], [c["run_chart"], c["run_card"]], api_name="show_run")
    return c
