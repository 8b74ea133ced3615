"""The Training tab's behaviour: form ↔ config, launch/stop/resume, the live view and past runs.

:class:`TrainController` holds every handler the tab builder (:mod:`medadapt.ui.train`) binds its events to; it
returns values and ``gr.update``/``gr.skip``, never builds layout. All job state lives in ``state.jobs`` (a
:class:`medadapt.jobs.runner.JobManager`), so a page refresh or a second browser tab re-attaches to the running job.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr

from medadapt.charts.loss import loss_figure
from medadapt.jobs.runner import JobError
from medadapt.jobs.launcher import Launcher
from medadapt.jobs.rundir import RunDir
from medadapt.jobs.train_form import (FIELDS, FormError, cli_command, config_path, config_to_form, config_yaml,
                                 form_to_config, list_configs, load_base, save_config)
from medadapt.setup_chain import interrupted
from medadapt.ui import render
from medadapt.ui import train_view as view
from medadapt.ui.common import is_public, unlocked
from medadapt.ui.redact import path_redactor

RUN_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")  # a run dir name, never a path
NO_RUN_CARD = "_Click a run in the table (or pick it here) to see its loss chart and model card._"


class TrainController:
    """The Training tab's event handlers over one app state (``cfg``, ``jobs``, optional ``setup``)."""

    def __init__(self, state: Any) -> None:
        self.state, self.cfg, self.jobs = state, state.cfg, state.jobs
        self.runs_dir, self.data_dir = self.cfg.paths.resolve("runs_dir"), self.cfg.paths.resolve("data_dir")
        self.shown = path_redactor(self.cfg)  # no absolute server paths in messages, errors and log tails

    def bullet(self, messages: list[str], icon: str = "⚠️") -> str:
        return "\n".join(f"{icon} {self.shown(m)}" for m in messages)

    # ---------------------------------------------------------------- the form
    def config_choices(self, job: str) -> list[tuple[str, str]]:
        """(label, name) of the configs of ``job``: names like ``offline/sft.yaml``, never server paths."""
        return list_configs(self.cfg.profile, self.runs_dir, job)

    def form_defaults(self, job: str, config: str | None) -> dict[str, Any]:
        """Form values of a base config (the form's initial values)."""
        base = load_base(config, self.cfg.profile, self.runs_dir)
        return config_to_form(form_to_config(job, {}, base, self.data_dir, self.runs_dir))

    def _build_config(self, job: str, config: str, values: tuple[Any, ...], probe: bool = True):
        base = load_base(config, self.cfg.profile, self.runs_dir)
        tcfg = form_to_config(job, dict(zip((f.key for f in FIELDS), values)), base, self.data_dir, self.runs_dir,
                              probe)
        return tcfg, base

    def _cli(self, tcfg: Any, config: str | None, base: dict[str, Any], launcher: Launcher | None) -> str:
        path = config_path(config, self.cfg.profile, self.runs_dir) if config else None
        return self.shown(cli_command(tcfg, path, base, launcher))

    @staticmethod
    def launcher(values: tuple[Any, ...]) -> Launcher:
        """The launcher inputs that follow the form fields: kind, processes, accelerate config (absent: one process)."""
        kind, nproc, config = (list(values[len(FIELDS):]) + [None, None, None])[:3]
        try:
            n = 1 if nproc in (None, "") else int(nproc)
        except (TypeError, ValueError):
            n = 0
        return Launcher.from_dict({"kind": kind or "single", "num_processes": n if kind == "accelerate" else 1,
                                   "config_file": config})

    def preview(self, job: str, config: str, *values: Any) -> tuple[str, str, str]:
        """YAML, command and messages of the form as it stands. In public mode dataset paths are checked by name only
        (inside the data or runs dir): whether a file exists is for a launch to find out, behind the admin secret."""
        launcher = self.launcher(values)
        try:
            tcfg, base = self._build_config(job, config, values, probe=not is_public(self.cfg))
            if launcher.problems():
                raise FormError(launcher.problems())
        except FormError as e:
            return gr.skip(), gr.skip(), self.bullet(e.messages)
        return self.shown(config_yaml(tcfg)), self._cli(tcfg, config, base, launcher), ""

    def on_job(self, job: str):
        choices = self.config_choices(job)
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def on_config(self, job: str, config: str, *launch: Any):
        try:
            base = load_base(config, self.cfg.profile, self.runs_dir)
            tcfg = form_to_config(job, {}, base, self.data_dir, self.runs_dir, probe=not is_public(self.cfg))
        except FormError as e:
            return [gr.skip()] * (len(FIELDS) + 2) + [self.bullet(e.messages)]
        values = config_to_form(tcfg)
        launcher = self.launcher((None,) * len(FIELDS) + launch)
        cli = self._cli(tcfg, config, base, None if launcher.problems() else launcher)
        return [values[f.key] for f in FIELDS] + [self.shown(config_yaml(tcfg)), cli, ""]

    def on_save(self, request: gr.Request, secret: str, name: str, job: str, config: str, *values: Any):
        if not unlocked(self.cfg, secret, request):
            return gr.skip(), "🔒 Saving configs is locked in public mode."
        try:
            tcfg, _ = self._build_config(job, config, values)
            path = save_config(tcfg, name, self.runs_dir)
        except FormError as e:
            return gr.skip(), self.bullet(e.messages)
        return (gr.update(choices=self.config_choices(job), value=f"saved/{path.name}"),
                f"💾 Saved `{self.shown(str(path))}`.")

    # ---------------------------------------------------------------- jobs
    def on_start(self, request: gr.Request, secret: str, job: str, config: str, *values: Any) -> str:
        if not unlocked(self.cfg, secret, request):
            return "🔒 Launching is locked in public mode: enter the admin secret, or duplicate the Space to train."
        try:
            tcfg, _ = self._build_config(job, config, values)
        except FormError as e:
            return "**Fix these values first:**\n\n" + self.bullet(e.messages)
        label = next((lbl for lbl, name in self.config_choices(job) if name == config), "")
        try:
            run = self.jobs.start(tcfg, source=label, launcher=self.launcher(values))
        except JobError as e:
            gr.Warning(self.shown(str(e)))
            return f"⛔ {self.shown(str(e))}"
        return f"🚀 Started **{run.name}** — live progress below. Output: `{self.shown(str(run))}`"

    def on_stop(self, request: gr.Request, secret: str) -> str:
        if not unlocked(self.cfg, secret, request):
            return "🔒 Stopping jobs is locked in public mode."
        running = self.jobs.running()
        again = running is not None and RunDir(running).stop_requested()
        try:
            run = self.jobs.stop(force=again)
        except JobError as e:
            return f"ℹ️ {self.shown(str(e))}"
        if again:
            return f"⏹ Stop sent again to **{run.name}** as a signal (SIGTERM): it checkpoints and exits."
        return (f"⏹ Stop requested for **{run.name}**: it saves a checkpoint at the next step, then stops "
                "(press Stop again to signal it if it seems stuck).")

    def on_resume(self, request: gr.Request, secret: str, selected: str) -> str:
        if not unlocked(self.cfg, secret, request):
            return "🔒 Resuming jobs is locked in public mode."
        try:
            run = self.jobs.resume(self.run_by_name(selected) if selected else None)
        except JobError as e:
            gr.Warning(self.shown(str(e)))
            return f"⛔ {self.shown(str(e))}"
        return f"▶️ Resumed **{run.name}** from its last checkpoint."

    # ---------------------------------------------------------------- runs and the live view
    def run_by_name(self, name: str) -> Path:
        run_dir = self.jobs.runs_root / name
        if not RUN_NAME.match(name) or not run_dir.is_dir():
            raise JobError(f"no run named {name!r} in {self.jobs.runs_root}")
        return run_dir

    def runs_table(self) -> list[list[str]]:
        return [[self.shown(cell) for cell in view.run_row(s)] for s in self.jobs.list_runs()]

    def run_names(self) -> Any:
        return gr.update(choices=[""] + [r[0] for r in self.runs_table()])

    def setup_text(self) -> str:
        setup = getattr(self.state, "setup", None)
        if setup is None:
            return ""
        st = setup.state()
        return self.shown(render.setup_markdown(st, interrupted(st)))

    def live_view(self) -> tuple[str, Any, str]:
        """(progress card, loss chart, log tail) of the active run: the tab's first paint."""
        snap = self.jobs.poll()
        chart = loss_figure(snap.records if snap else [], title=f"Loss — {snap.run_dir.name}" if snap else "Loss")
        return self.shown(view.progress_html(snap)), chart, self.shown(view.tail_text(snap)) if snap else ""

    def poll(self, seen: dict[str, Any]):
        """Live card, chart, log tail; the chart and runs list only when something changed."""
        snap = self.jobs.poll()
        seen = dict(seen or {})
        key = (str(snap.run_dir), snap.status, len(snap.records)) if snap else None
        changed = key != seen.get("key")
        status_changed = not snap or (str(snap.run_dir), snap.status) != seen.get("status")
        seen.update(key=key, status=(str(snap.run_dir), snap.status) if snap else None)
        title = f"Loss — {snap.run_dir.name}" if snap else "Loss"
        fig = loss_figure(snap.records if snap else [], title=title) if changed else gr.skip()
        log = self.shown(view.tail_text(snap)) if snap else ""
        live = {"run": snap.run_dir.name, "status": snap.status, "step": snap.step, "total_steps": snap.total_steps,
                "loss": snap.loss, "eval_loss": snap.eval_loss, "error": self.shown(snap.error or "")} if snap else {}
        table = self.runs_table() if changed else gr.skip()
        names = self.run_names() if status_changed else gr.skip()
        done = snap.run_dir.name if snap and status_changed and snap.status == "finished" else gr.skip()
        return self.shown(view.progress_html(snap)), fig, log, live, table, names, done, seen, self.setup_text()

    def show_run(self, name: str):
        if not name:
            return gr.skip(), NO_RUN_CARD
        try:
            run_dir = self.run_by_name(name)
        except JobError as e:
            return gr.skip(), f"⚠️ {self.shown(str(e))}"
        snap = self.jobs.poll(run_dir)
        return loss_figure(snap.records, title=f"Loss — {name}"), self.shown(view.model_card(snap))

    def on_select(self, evt: gr.SelectData, table: Any) -> str:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            return str(table.iloc[row, 0]) if hasattr(table, "iloc") else str(table[row][0])
        except (IndexError, KeyError, TypeError):
            return gr.skip()
