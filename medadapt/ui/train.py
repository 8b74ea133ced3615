"""Training tab: configure a job (form ↔ YAML ↔ CLI), launch it as a subprocess, watch it live, browse past runs.

All job state lives in ``state.jobs`` (a :class:`medadapt.jobs.JobManager`), so a page refresh or a second browser
tab re-attaches to the running job. Public mode locks launching behind ``MEDADAPT_ADMIN_PASSWORD``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr

from medadapt.charts import loss_figure
from medadapt.jobs import JobError
from medadapt.train_form import (FIELDS, JOB_LABELS, JOBS, FormError, cli_command, config_to_form, config_yaml,
                                 form_to_config, list_configs, load_base, save_config)
from medadapt.ui import render
from medadapt.ui import train_view as view
from medadapt.ui.common import is_public, unlocked
from medadapt.ui.redact import path_redactor

POLL_S = 2.0
RUN_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")  # a run dir name, never a path
PUBLIC_NOTE = (
    "🔒 **Training is locked in this public demo** — it would tie up the shared hardware. To train your own "
    "adapters, **duplicate this Space** (⋮ menu → *Duplicate this Space*) onto your own hardware, or clone the "
    "repository and run `python app.py` locally; there the Start button works without a password. Admins can "
    "unlock launching here with the admin secret (`MEDADAPT_ADMIN_PASSWORD`)."
)


def bullet(messages: list[str], icon: str = "⚠️", shown: Any = str) -> str:
    return "\n".join(f"{icon} {shown(m)}" for m in messages)


def build_train_tab(state: Any) -> dict[str, Any]:
    """Build the Training tab inside the current Blocks context; returns its components by name."""
    cfg, jobs = state.cfg, state.jobs
    runs_dir, data_dir = cfg.paths.resolve("runs_dir"), cfg.paths.resolve("data_dir")
    c: dict[str, Any] = {}
    shown = path_redactor(cfg)  # no absolute server paths in messages, errors and log tails

    # ---------------------------------------------------------------- handlers
    def config_choices(job: str) -> list[tuple[str, str]]:
        return list_configs(cfg.profile, runs_dir, job)

    def form_values(values: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip((f.key for f in FIELDS), values))

    def build_config(job: str, config_path: str, values: tuple[Any, ...]):
        base = load_base(config_path, cfg.profile, runs_dir)
        tcfg = form_to_config(job, form_values(values), base, data_dir, runs_dir)
        return tcfg, base

    def preview(job: str, config_path: str, *values: Any) -> tuple[str, str, str]:
        try:
            tcfg, base = build_config(job, config_path, values)
        except FormError as e:
            return gr.skip(), gr.skip(), bullet(e.messages, shown=shown)
        return config_yaml(tcfg), cli_command(tcfg, Path(config_path) if config_path else None, base), ""

    def on_job(job: str):
        choices = config_choices(job)
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def on_config(job: str, config_path: str):
        try:
            base = load_base(config_path, cfg.profile, runs_dir)
            tcfg = form_to_config(job, {}, base, data_dir, runs_dir)
        except FormError as e:
            return [gr.skip()] * (len(FIELDS) + 2) + [bullet(e.messages, shown=shown)]
        values = config_to_form(tcfg)
        cli = cli_command(tcfg, Path(config_path) if config_path else None, base)
        return [values[f.key] for f in FIELDS] + [config_yaml(tcfg), cli, ""]

    def on_save(request: gr.Request, secret: str, name: str, job: str, config_path: str, *values: Any):
        if not unlocked(cfg, secret, request):
            return gr.skip(), "🔒 Saving configs is locked in public mode."
        try:
            tcfg, _ = build_config(job, config_path, values)
            path = save_config(tcfg, name, runs_dir)
        except FormError as e:
            return gr.skip(), bullet(e.messages, shown=shown)
        return gr.update(choices=config_choices(job), value=str(path)), f"💾 Saved `{shown(str(path))}`."

    def on_start(request: gr.Request, secret: str, job: str, config_path: str, *values: Any) -> str:
        if not unlocked(cfg, secret, request):
            return "🔒 Launching is locked in public mode: enter the admin secret, or duplicate the Space to train."
        try:
            tcfg, _ = build_config(job, config_path, values)
        except FormError as e:
            return "**Fix these values first:**\n\n" + bullet(e.messages, shown=shown)
        label = next((lbl for lbl, p in config_choices(job) if p == config_path), "")
        try:
            run = jobs.start(tcfg, source=label)
        except JobError as e:
            gr.Warning(shown(str(e)))
            return f"⛔ {shown(str(e))}"
        return f"🚀 Started **{run.name}** — live progress below. Output: `{shown(str(run))}`"

    def on_stop(request: gr.Request, secret: str) -> str:
        if not unlocked(cfg, secret, request):
            return "🔒 Stopping jobs is locked in public mode."
        running = jobs.running()
        again = running is not None and (running / "STOP").exists()
        try:
            run = jobs.stop(force=again)
        except JobError as e:
            return f"ℹ️ {shown(str(e))}"
        if again:
            return f"⏹ Stop sent again to **{run.name}** as a signal (SIGTERM): it checkpoints and exits."
        return (f"⏹ Stop requested for **{run.name}**: it saves a checkpoint at the next step, then stops "
                "(press Stop again to signal it if it seems stuck).")

    def on_resume(request: gr.Request, secret: str, selected: str) -> str:
        if not unlocked(cfg, secret, request):
            return "🔒 Resuming jobs is locked in public mode."
        try:
            run = jobs.resume(run_by_name(selected) if selected else None)
        except JobError as e:
            gr.Warning(shown(str(e)))
            return f"⛔ {shown(str(e))}"
        return f"▶️ Resumed **{run.name}** from its last checkpoint."

    def run_by_name(name: str) -> Path:
        run_dir = jobs.runs_root / name
        if not RUN_NAME.match(name) or not run_dir.is_dir():
            raise JobError(f"no run named {name!r} in {jobs.runs_root}")
        return run_dir

    def runs_table() -> list[list[str]]:
        return [[shown(cell) for cell in view.run_row(s)] for s in jobs.list_runs()]

    def run_names() -> Any:
        return gr.update(choices=[""] + [r[0] for r in runs_table()])

    def poll(seen: dict[str, Any]):
        """Live card, chart, log tail; the chart and runs list only when something changed."""
        snap = jobs.poll()
        seen = dict(seen or {})
        key = (str(snap.run_dir), snap.status, len(snap.records)) if snap else None
        changed = key != seen.get("key")
        status_changed = not snap or (str(snap.run_dir), snap.status) != seen.get("status")
        seen.update(key=key, status=(str(snap.run_dir), snap.status) if snap else None)
        title = f"Loss — {snap.run_dir.name}" if snap else "Loss"
        fig = loss_figure(snap.records if snap else [], title=title) if changed else gr.skip()
        log = shown(view.tail_text(snap)) if snap else ""
        live = {"run": snap.run_dir.name, "status": snap.status, "step": snap.step, "total_steps": snap.total_steps,
                "loss": snap.loss, "eval_loss": snap.eval_loss, "error": shown(snap.error or "")} if snap else {}
        table = runs_table() if changed else gr.skip()
        names = run_names() if status_changed else gr.skip()
        done = snap.run_dir.name if snap and status_changed and snap.status == "finished" else gr.skip()
        setup = shown(render.setup_markdown(state.setup.state())) if getattr(state, "setup", None) else ""
        return shown(view.progress_html(snap)), fig, log, live, table, names, done, seen, setup

    def show_run(name: str):
        if not name:
            return gr.skip(), "_Click a run in the table (or pick it here) to see its loss chart and model card._"
        try:
            run_dir = run_by_name(name)
        except JobError as e:
            return gr.skip(), f"⚠️ {shown(str(e))}"
        snap = jobs.poll(run_dir)
        return loss_figure(snap.records, title=f"Loss — {name}"), shown(view.model_card(snap))

    def on_select(evt: gr.SelectData, table: Any) -> str:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            return str(table.iloc[row, 0]) if hasattr(table, "iloc") else str(table[row][0])
        except (IndexError, KeyError, TypeError):
            return gr.skip()

    # ---------------------------------------------------------------- layout
    public = is_public(cfg)
    if public:
        gr.Markdown(PUBLIC_NOTE)
    c["secret"] = gr.Textbox(label="Admin secret", type="password", visible=public, max_lines=1,
                             placeholder="MEDADAPT_ADMIN_PASSWORD")
    gr.Markdown(f"Train LoRA adapters from the browser. Each job runs as its own process (`python -m trainers.<job>`) "
                f"with its output in `{shown(str(jobs.runs_root))}/`; a finished adapter shows up in the **Compare** tab's "
                "choices. Closing or reloading this page does not stop a job.", elem_classes="ma-train-intro")
    first_configs = config_choices("sft")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            gr.Markdown("### ① Configure")
            with gr.Row():
                c["job"] = gr.Radio([(JOB_LABELS[j], j) for j in JOBS], value="sft", label="Job", scale=3)
                c["config"] = gr.Dropdown(first_configs, value=first_configs[0][1] if first_configs else None,
                                          label="Base config", scale=2, info="configs/<profile>/ and your saved ones",
                                          allow_custom_value=True)
            first = c["config"].value
            defaults = config_to_form(form_to_config("sft", {}, load_base(first, cfg.profile, runs_dir),
                                                     data_dir, runs_dir))
            init_yaml, init_cli, _ = preview("sft", first, *(defaults[f.key] for f in FIELDS))
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
                                                   info="concatenate short examples"))
                    c["fields"].append(gr.Textbox(defaults[f_data.key], label=f_data.label, info=f_data.info,
                                                  scale=3, max_lines=1))
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
            c["setup"] = gr.Markdown(shown(render.setup_markdown(state.setup.state())) if getattr(state, "setup", None) else "",
                                     elem_id="ma-train-setup")
            snap = jobs.poll()
            c["progress"] = gr.HTML(shown(view.progress_html(snap)), elem_id="ma-train-live")
            c["chart"] = gr.Plot(loss_figure(snap.records if snap else [], title=f"Loss — {snap.run_dir.name}"
                                             if snap else "Loss"), elem_id="ma-train-chart", show_label=False)
            c["log"] = gr.Textbox(shown(view.tail_text(snap)) if snap else "", label="Log tail (stdout.log)", lines=8,
                                  max_lines=8, autoscroll=True, interactive=False, elem_id="ma-train-log")
            c["live"] = gr.JSON(visible=False)
    gr.Markdown("### ③ Runs")
    c["runs"] = gr.Dataframe(runs_table(), headers=view.RUN_COLUMNS, interactive=False, wrap=True,
                             max_height=320, elem_id="ma-train-runs")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=200):
            c["run_pick"] = gr.Dropdown([""] + [r[0] for r in runs_table()], value="", label="Run", filterable=True,
                                        allow_custom_value=True)
            c["run_card"] = gr.Markdown(show_run("")[1], elem_id="ma-train-card")
        c["run_chart"] = gr.Plot(loss_figure([], title="Loss — pick a run", height=300), show_label=False, scale=2)
    # the name of the last run seen finishing: other tabs hook ``.change`` to refresh their adapter choices
    c["finished_run"] = gr.Textbox(visible=False)
    c["seen"] = gr.State({})
    c["timer"] = gr.Timer(POLL_S)

    # ---------------------------------------------------------------- events
    form = [c["job"], c["config"], *c["fields"]]
    c["job"].change(on_job, c["job"], c["config"], api_name="configs")
    c["config"].change(on_config, [c["job"], c["config"]], [*c["fields"], c["yaml"], c["cli"], c["form_message"]],
                       api_name="load_config")
    for comp in c["fields"]:
        comp.input(preview, form, [c["yaml"], c["cli"], c["form_message"]], api_name=False, show_progress="hidden")
    c["preview_btn"] = gr.Button(visible=False)
    c["preview_btn"].click(preview, form, [c["yaml"], c["cli"], c["form_message"]], api_name="preview")
    c["save"].click(on_save, [c["secret"], c["save_name"], *form], [c["config"], c["form_message"]],
                    api_name="save_config")
    live_out = [c["progress"], c["chart"], c["log"], c["live"], c["runs"], c["run_pick"], c["finished_run"], c["seen"],
                c["setup"]]
    for btn, fn, inputs, name in ((c["start"], on_start, [c["secret"], *form], "start"),
                                  (c["stop"], on_stop, [c["secret"]], "stop"),
                                  (c["resume"], on_resume, [c["secret"], c["run_pick"]], "resume")):
        btn.click(fn, inputs, c["message"], api_name=name).then(poll, c["seen"], live_out, api_name=False)
    c["timer"].tick(poll, c["seen"], live_out, api_name="poll", show_progress="hidden", concurrency_limit=None)
    c["runs"].select(on_select, c["runs"], c["run_pick"], api_name=False)
    c["run_pick"].change(show_run, c["run_pick"], [c["run_chart"], c["run_card"]], api_name="show_run")
    return c
