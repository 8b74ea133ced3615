"""First-run setup: prepare what the active profile lacks — the RAG index, the SFT adapter, the MSFT adapter — as one
chain of ordinary jobs (``medadapt.jobs.runner``), so a fresh clone answers in all four Compare columns with no command.

What each step does, cheapest first: the index step copies the profile's shipped table (:mod:`medadapt.shipped`,
seconds), else pulls a prebuilt one from ``rag.index_repo`` (:mod:`medadapt.retrieval.index_pull`), else builds it. The SFT and
MSFT steps skip when the profile ships adapters (or one is trained or configured); when the profile lists published
models (``adapters.models``) they prepare those models' deltas as ``delta`` jobs (download, extract, publish as an
adapter in the runs dir; :mod:`medadapt.delta_job`; the MSFT step also prepares the published CPT models, which the
MSFT column offers); only a profile with none of these trains. Training is also what happens when asked
(``MEDADAPT_SETUP_TRAIN=1``, ``python -m medadapt setup --train``): then a step trains unless a trained adapter of its
kind exists. The chain runs in the app (a background thread,
``python app.py``) or in the shell (``python -m medadapt setup``). Each step is a job in its own run dir, launched
with the profile's own config (``configs/<profile>/<job>.yaml``), so the Training tab shows it live like any run.
The chain's state is ``<runs_dir>/<profile>/setup.json``: every process (a second app, a reloaded page) reads it,
and a restarted app continues from it: a job still running is waited for, a stopped or killed one is resumed from
its checkpoint, a finished step is skipped.
``<runs_dir>/<profile>/setup.lock`` (an advisory ``flock``) makes sure only one process runs the chain at a time.
``MEDADAPT_SETUP=off`` turns the automatic start off.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medadapt.config import REPO_ROOT, AppConfig, ConfigError, load_train_config
from medadapt.jobs.runner import INDEX_JOB, JobBusyError, JobError, JobManager
from medadapt.jobs.rundir import FINAL, RunDir, file_sig, pid_alive, read_json, write_json_atomic

log = logging.getLogger(__name__)

STEPS = (INDEX_JOB, "sft", "msft")
VARIANT = {INDEX_JOB: "rag", "sft": "sft", "msft": "msft"}  # the Compare column each step prepares
DOING = {INDEX_JOB: "building the retrieval index", "sft": "training SFT", "msft": "training MSFT"}
STAGE = {"cpt": "continual pretraining", "sft": "SFT stage", "download": "downloading", "extract": "extracting its delta"}
STEP_TITLES = {INDEX_JOB: "RAG index", "sft": "SFT adapter", "msft": "MSFT adapter"}
# how a ready step got its result (StepRecord.how)
HOW = {"shipped": "shipped", "trained": "trained here", "published": "published model", "configured": "configured",
       "copied": "shipped index copied", "pulled": "prebuilt index pulled", "built": "built here"}
STATE_FILE, LOCK_FILE = "setup.json", "setup.lock"
POLL_S = 1.0


def setup_enabled() -> bool:
    """False when ``MEDADAPT_SETUP`` is ``off`` (or 0/false/no)."""
    return os.environ.get("MEDADAPT_SETUP", "on").strip().lower() not in ("off", "0", "false", "no")


def train_requested() -> bool:
    """``MEDADAPT_SETUP_TRAIN`` on (1/true/yes/on): the setup trains SFT and MSFT even where adapters are shipped or
    published (``python -m medadapt setup --train`` sets it)."""
    return os.environ.get("MEDADAPT_SETUP_TRAIN", "").strip().lower() in ("1", "true", "yes", "on")


def step_needed(cfg: AppConfig, step: str, train: bool = False) -> bool:
    """Whether the profile still lacks what ``step`` makes: a complete index, or an adapter of that kind (with
    ``train``: a trained one), counting published models whose delta is prepared."""
    if step == INDEX_JOB:
        from medadapt.retrieval.rag import index_status

        return not index_status(cfg)["complete"]
    return bool(adapter_tasks(cfg, step, train))


def published_for(cfg: AppConfig, step: str) -> list[tuple[str, str]]:
    """(kind, source) of the published models a step prepares: its own kind's, and for MSFT the CPT models too."""
    from medadapt.adapters import published

    kinds = (step, "cpt") if step == "msft" else (step,)
    return [(k, s) for k in kinds for s in published(cfg, k)]


def adapter_tasks(cfg: AppConfig, step: str, train: bool = False) -> list[tuple[str, str, str]]:
    """What an adapter step still has to do: ``[("train", step, "")]``, ``[("delta", kind, source), …]`` or []."""
    from medadapt.adapters import prepared_delta, resolve_adapter, trained_adapters

    if train:
        return [] if trained_adapters(cfg, step) else [("train", step, "")]
    todo = [("delta", k, s) for k, s in published_for(cfg, step) if prepared_delta(cfg, k, s) is None]
    if todo:
        return todo
    return [] if resolve_adapter(cfg, step) is not None else [("train", step, "")]


def ready_how(cfg: AppConfig, step: str) -> str:
    """How a ready adapter step's column is served (a :data:`HOW` key)."""
    from medadapt.adapters import default_adapter

    if getattr(cfg.adapters, step, "auto") not in ("auto", ""):
        return "configured"
    info = default_adapter(cfg, step)
    return info.origin if info is not None else ""


def configs_dir(cfg: AppConfig) -> Path:
    """Where the setup's trainer configs live: ``MEDADAPT_SETUP_CONFIGS`` or ``configs/<profile>/``."""
    custom = os.environ.get("MEDADAPT_SETUP_CONFIGS", "").strip()
    return Path(custom).expanduser().resolve() if custom else REPO_ROOT / "configs" / cfg.profile


def what_to_do(step: str) -> str:
    where = "its run in the Training tab (log tail)" if step != INDEX_JOB else "the index run in the Training tab"
    return (f"See {where}, fix the cause, then restart the app or run `python -m medadapt setup` to retry "
            "(finished steps are kept).")


# A step's status (StepRecord.status), grouped by what it means for the chain and for the step's Compare column.
STEP_OPEN = ("pending", "waiting", "running")  # still to come in this chain
STEP_READY = ("done", "skipped")  # its column can answer (skipped: the index or adapter was already there)
STEP_UNFINISHED = ("failed", "stopped")  # ended without its result; a retry (app restart, `medadapt setup`) resumes it
STEP_ENDED = STEP_READY + STEP_UNFINISHED


@dataclass
class StepRecord:
    """One step of the chain as ``setup.json`` stores it."""

    status: str = "pending"  # one of STEP_OPEN or STEP_ENDED
    run_dir: str = ""
    step: int = 0
    total_steps: int | None = None
    eta_s: float | None = None
    stage: str = ""
    error: str = ""
    started: float | None = None
    ended: float | None = None
    task: str = ""  # what runs now: build | train | delta:<kind>:<source>
    how: str = ""  # how the step's result came about, once ready (a HOW key)


@dataclass
class SetupState:
    """The whole chain: who runs it, its status, one record per step."""

    status: str = "idle"  # idle | running | done | failed | stopped
    pid: int | None = None
    started: float | None = None
    ended: float | None = None
    steps: dict[str, StepRecord] = field(default_factory=lambda: {s: StepRecord() for s in STEPS})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SetupState:
        known = set(StepRecord.__dataclass_fields__)
        steps = {s: StepRecord(**{k: v for k, v in (data.get("steps", {}).get(s) or {}).items() if k in known})
                 for s in STEPS}
        return cls(data.get("status", "idle"), data.get("pid"), data.get("started"), data.get("ended"), steps)


def interrupted(st: SetupState) -> bool:
    """The setup says it runs but its process is gone (the app exited mid-setup)."""
    return st.status == "running" and not pid_alive(st.pid)


class SetupLock:
    """A non-blocking exclusive ``flock`` on ``setup.lock``; held by the process that runs the chain."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class SetupChain:
    """Runs (``run``/``start``) or reports on (``state``/``message_for``) the profile's first-run setup."""

    def __init__(self, cfg: AppConfig, jobs: JobManager, configs: Path | None = None,
                 train: bool | None = None) -> None:
        self.cfg, self.jobs = cfg, jobs
        self.configs = configs or configs_dir(cfg)
        self.train = train_requested() if train is None else train
        self.root = jobs.runs_root
        self.lock = SetupLock(self.root / LOCK_FILE)
        self._thread: threading.Thread | None = None
        self._state = SetupState()
        self._cache: tuple[Any, SetupState] | None = None

    # -- reading (any process)
    def state(self) -> SetupState:
        """The chain's state as ``setup.json`` has it (re-read only when the file changed)."""
        path = self.root / STATE_FILE
        sig = file_sig(path)
        if self._cache is not None and self._cache[0] == sig:
            return self._cache[1]
        state = SetupState.from_dict(read_json(path)) if sig else SetupState()
        self._cache = (sig, state)
        return state

    def message_for(self, variant: str) -> str | None:
        """What a Compare column that the setup prepares should say, or None when the setup has nothing to say."""
        step = next((s for s, v in VARIANT.items() if v == variant), None)
        st = self.state()
        if step is None or st.status == "idle":
            return None
        rec = st.steps[step]
        running = st.status == "running" and pid_alive(st.pid)
        if rec.status == "failed":
            return f"Setup failed while {doing(step, rec)}: " \
                   f"{rec.error.splitlines()[0] if rec.error else 'unknown error'}. " + what_to_do(step)
        if rec.status == "stopped":
            return (f"Preparing paused: {doing(step, rec)} was stopped. Resume it in the Training tab, or restart the "
                    "app to continue the setup.")
        if not running or rec.status in STEP_READY:
            return None
        if rec.status == "running":
            return "preparing: " + progress_text(step, rec)
        if rec.status == "waiting":
            return f"preparing: waiting for another job to finish before {doing(step, rec)}"
        before = [doing(s, st.steps[s]) for s in STEPS[:STEPS.index(step)] if st.steps[s].status in STEP_OPEN]
        queued = f" (after {' and '.join(before)})" if before else ""
        return f"preparing: {doing(step, rec)} is queued{queued}; this column answers as soon as it is done"

    # -- running (one process at a time)
    def start(self) -> bool:
        """Run the chain in a daemon thread if anything is missing and no other process runs it; True if started."""
        if self._thread is not None and self._thread.is_alive():
            return False
        if not self.lock.acquire():
            log.info("first-run setup: another process runs it (see %s)", self.root / STATE_FILE)
            return False
        self._thread = threading.Thread(target=self._run_locked, name="medadapt-setup", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, on_update: Callable[[str, StepRecord], None] | None = None) -> SetupState:
        """Run the chain in this thread (the CLI); raises :class:`SetupBusyError` when another process runs it."""
        if not self.lock.acquire():
            pid = (self.root / LOCK_FILE).read_text().strip() or "?"
            raise SetupBusyError(f"another process (pid {pid}) is running the setup; its progress is in "
                                 f"{self.root / STATE_FILE} and in the app's Training tab")
        return self._run_locked(on_update)

    def _run_locked(self, on_update: Callable[[str, StepRecord], None] | None = None) -> SetupState:
        try:
            return self._run(on_update)
        except Exception as e:  # never let the thread die silently: the state file says what happened
            log.exception("first-run setup crashed")
            self._state.status, self._state.ended = "failed", time.time()
            for rec in self._state.steps.values():
                if rec.status in STEP_OPEN:
                    rec.status, rec.error = "failed", f"the setup crashed: {type(e).__name__}: {e}"
            self._save()
            return self._state
        finally:
            self.lock.release()

    def _run(self, on_update: Callable[[str, StepRecord], None] | None) -> SetupState:
        prev = self.state()
        self._state = SetupState("running", os.getpid(), time.time())
        for step in STEPS:  # keep earlier attempts' run dirs, so a restarted chain continues them
            self._state.steps[step].run_dir = prev.steps[step].run_dir
            self._state.steps[step].task = prev.steps[step].task
            self._state.steps[step].how = prev.steps[step].how if step == INDEX_JOB else ""
        self._save()
        for step in STEPS:
            rec = self._state.steps[step]
            try:
                tasks = self._tasks(step, rec)
            except Exception as e:  # e.g. the data dir is missing: this step cannot even be checked
                tasks, rec.status, rec.error = [], "failed", f"{type(e).__name__}: {e}"
            if not tasks and rec.status not in ("failed", "done"):  # done: the index was installed just now
                rec.status = "done" if rec.run_dir else "skipped"
                rec.how = rec.how if step == INDEX_JOB else ready_how(self.cfg, step)
            for task in tasks:
                self._run_step(step, rec, on_update, task)
                if rec.status != "done":
                    break
            if tasks and rec.status == "done":
                rec.how = "built" if step == INDEX_JOB else ("trained" if tasks[0][0] == "train" else "published")
            self._save()
            if on_update:
                on_update(step, rec)
            if rec.status == "stopped":
                break  # someone stopped a setup job on purpose: do not start the next one behind their back
        statuses = {r.status for r in self._state.steps.values()}
        self._state.status = "failed" if "failed" in statuses else "stopped" if "stopped" in statuses else "done"
        self._state.ended = time.time()
        self._save()
        log.info("first-run setup %s: %s", self._state.status,
                 ", ".join(f"{s} {r.status}" for s, r in self._state.steps.items()))
        return self._state

    def _tasks(self, step: str, rec: StepRecord) -> list[tuple[str, str, str]]:
        """What ``step`` still has to run as jobs (``(what, kind, source)``); an index that can be copied or pulled
        is installed here (seconds) and leaves nothing to run."""
        if step != INDEX_JOB:
            return adapter_tasks(self.cfg, step, self.train)
        if not step_needed(self.cfg, step):
            return []
        from medadapt.retrieval.index_pull import install_shipped_index, pull_index

        for how, install in (("copied", install_shipped_index), ("pulled", pull_index)):
            if install(self.cfg) and not step_needed(self.cfg, step):
                rec.how, rec.status, rec.ended = how, "done", time.time()
                return []
        return [("build", INDEX_JOB, "")]

    def _run_step(self, step: str, rec: StepRecord, on_update: Callable[[str, StepRecord], None] | None,
                  task: tuple[str, str, str] = ("train", "", "")) -> None:
        rec.started, rec.error = time.time(), ""
        what, kind, source = task
        new_task = f"delta:{kind}:{source}" if what == "delta" else what
        if rec.task and rec.task != new_task:
            rec.run_dir = ""  # the earlier attempt's run was another task (another published model)
        rec.task, rec.step, rec.total_steps, rec.eta_s, rec.stage = new_task, 0, None, None, ""
        try:
            run_dir = self._launch(step, rec, on_update)
        except (JobError, ConfigError, OSError) as e:
            rec.status, rec.error, rec.ended = "failed", str(e), time.time()
            return
        rec.run_dir, rec.status = str(run_dir), "running"
        self._save()
        while True:
            snap = self.jobs.poll(run_dir)
            if snap is not None:
                changed = (snap.step, snap.total_steps, snap.stage) != (rec.step, rec.total_steps, rec.stage)
                rec.step, rec.total_steps, rec.eta_s, rec.stage = snap.step, snap.total_steps, snap.eta_s, snap.stage
                if snap.status in FINAL and self.jobs.running() != run_dir:
                    break
                if changed:
                    self._save()
                    if on_update:
                        on_update(step, rec)
            time.sleep(POLL_S)
        rec.ended = time.time()
        if snap.status == "finished":
            rec.status = "done"
        elif snap.status == "stopped":
            rec.status = "stopped"
        else:
            rec.status, rec.error = "failed", snap.error or "the job failed without an error message"

    def _launch(self, step: str, rec: StepRecord, on_update: Callable[[str, StepRecord], None] | None) -> Path:
        """Start the step's job, continuing an earlier attempt when there is one; waits while another job runs."""
        earlier = Path(rec.run_dir) if rec.run_dir else None
        while True:
            if earlier is not None and earlier.is_dir() and self.jobs.running() == earlier:
                return earlier  # still running from an earlier app process: wait for it
            try:
                return self._start(step, earlier, rec.task)
            except JobBusyError:
                if rec.status != "waiting":
                    rec.status = "waiting"
                    self._save()
                    if on_update:
                        on_update(step, rec)
                time.sleep(POLL_S * 2)

    def _start(self, step: str, earlier: Path | None, task: str = "train") -> Path:
        resumable = earlier is not None and earlier.is_dir() and RunDir(earlier).status().get("status") != "finished"
        if step == INDEX_JOB:  # the build resumes by itself: run it again in the same dir
            return self.jobs.start_index(earlier if resumable else None)
        if task.startswith("delta:"):  # the extraction starts over (its adapter is published atomically)
            _, kind, source = task.split(":", 2)
            return self.jobs.start_delta(kind, source, earlier if resumable else None)
        if resumable and RunDir(earlier).has_checkpoint():  # type: ignore[arg-type]
            return self.jobs.resume(earlier)
        path = self.configs / f"{step}.yaml"
        if not path.exists():
            raise ConfigError(f"no {step} config for profile {self.cfg.profile!r}: {path}")
        tcfg = load_train_config(path, {"profile": self.cfg.profile})
        where = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        return self.jobs.start(tcfg, source=f"first-run setup ({where})")

    def _save(self) -> None:
        write_json_atomic(self.root / STATE_FILE, asdict(self._state))


class SetupBusyError(RuntimeError):
    """Another process holds the setup lock."""


def doing(step: str, rec: StepRecord | None = None) -> str:
    """What a step is doing in words: ``training SFT``, ``preparing the published MSFT model X``, …"""
    task = rec.task if rec is not None else ""
    if task.startswith("delta:"):
        _, kind, source = task.split(":", 2)
        return f"preparing the published {kind.upper()} model {source}"
    return DOING[step]


def progress_text(step: str, rec: StepRecord) -> str:
    """``training SFT, step 40/120, about 3 min left`` (what a preparing column and the CLI say)."""
    text = doing(step, rec) + (f" ({STAGE.get(rec.stage, rec.stage)})" if rec.stage else "")
    if rec.total_steps:
        if step == INDEX_JOB:
            count = f"{rec.step:,}/{rec.total_steps:,} snippets"
        elif rec.stage == "download":
            count = f"{rec.step / 2**20:,.0f}/{rec.total_steps / 2**20:,.0f} MB"
        elif rec.stage == "extract":
            count = f"{rec.step}/{rec.total_steps} tensors"
        else:
            count = f"step {rec.step}/{rec.total_steps}"
        text += f", {count}"
    if rec.eta_s is not None:
        text += f", {about(rec.eta_s)} left"
    elif not rec.step:
        text += ", starting"
    return text


def about(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, int(round(seconds / 10.0)) * 10)} s"
    return f"about {int(round(seconds / 60.0))} min"
