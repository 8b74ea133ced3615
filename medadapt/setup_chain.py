"""First-run setup: build what the active profile lacks — the RAG index, the SFT adapter, the MSFT adapter — as one
chain of ordinary jobs (``medadapt.jobs``), so a fresh clone answers in all four Compare columns with no command.

With ``rag.index_repo`` set, the index step first pulls a prebuilt index from that Hub dataset repo
(:mod:`medadapt.index_pull`) and builds only when that fails. The chain runs in the app (a background thread,
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
from medadapt.jobs import INDEX_JOB, JobBusyError, JobError, JobManager
from medadapt.rundir import FINAL, RunDir, file_sig, pid_alive, read_json, write_json_atomic

log = logging.getLogger(__name__)

STEPS = (INDEX_JOB, "sft", "msft")
VARIANT = {INDEX_JOB: "rag", "sft": "sft", "msft": "msft"}  # the Compare column each step prepares
DOING = {INDEX_JOB: "building the retrieval index", "sft": "training SFT", "msft": "training MSFT"}
STAGE = {"cpt": "continual pretraining", "sft": "SFT stage"}
STEP_TITLES = {INDEX_JOB: "RAG index", "sft": "SFT adapter", "msft": "MSFT adapter"}
STATE_FILE, LOCK_FILE = "setup.json", "setup.lock"
POLL_S = 1.0


def setup_enabled() -> bool:
    """False when ``MEDADAPT_SETUP`` is ``off`` (or 0/false/no)."""
    return os.environ.get("MEDADAPT_SETUP", "on").strip().lower() not in ("off", "0", "false", "no")


def step_needed(cfg: AppConfig, step: str) -> bool:
    """Whether the profile still lacks what ``step`` makes (a complete index, or an adapter of that kind)."""
    if step == INDEX_JOB:
        from medadapt.rag import index_status

        return not index_status(cfg)["complete"]
    from medadapt.adapters import resolve_adapter

    return resolve_adapter(cfg, step) is None


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

    def __init__(self, cfg: AppConfig, jobs: JobManager, configs: Path | None = None) -> None:
        self.cfg, self.jobs = cfg, jobs
        self.configs = configs or configs_dir(cfg)
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
            return f"Setup failed while {DOING[step]}: {rec.error.splitlines()[0] if rec.error else 'unknown error'}. " \
                   + what_to_do(step)
        if rec.status == "stopped":
            return (f"Preparing paused: {DOING[step]} was stopped. Resume it in the Training tab, or restart the app "
                    "to continue the setup.")
        if not running or rec.status in STEP_READY:
            return None
        if rec.status == "running":
            return "preparing: " + progress_text(step, rec)
        if rec.status == "waiting":
            return f"preparing: waiting for another job to finish before {DOING[step]}"
        before = [DOING[s] for s in STEPS[:STEPS.index(step)] if st.steps[s].status in STEP_OPEN]
        queued = f" (after {' and '.join(before)})" if before else ""
        return f"preparing: {DOING[step]} is queued{queued}; this column answers as soon as it is done"

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
        self._save()
        for step in STEPS:
            rec = self._state.steps[step]
            try:
                needed = step_needed(self.cfg, step)
                if needed and step == INDEX_JOB and self.cfg.rag.index_repo:
                    from medadapt.index_pull import pull_index

                    needed = not (pull_index(self.cfg) and not step_needed(self.cfg, step))
            except Exception as e:  # e.g. the data dir is missing: this step cannot even be checked
                needed, rec.status, rec.error = False, "failed", f"{type(e).__name__}: {e}"
            if not needed and rec.status != "failed":
                rec.status = "done" if rec.run_dir else "skipped"
            elif needed:
                self._run_step(step, rec, on_update)
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

    def _run_step(self, step: str, rec: StepRecord, on_update: Callable[[str, StepRecord], None] | None) -> None:
        rec.started, rec.error = time.time(), ""
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
                return self._start(step, earlier)
            except JobBusyError:
                if rec.status != "waiting":
                    rec.status = "waiting"
                    self._save()
                    if on_update:
                        on_update(step, rec)
                time.sleep(POLL_S * 2)

    def _start(self, step: str, earlier: Path | None) -> Path:
        resumable = earlier is not None and earlier.is_dir() and RunDir(earlier).status().get("status") != "finished"
        if step == INDEX_JOB:  # the build resumes by itself: run it again in the same dir
            return self.jobs.start_index(earlier if resumable else None)
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


def progress_text(step: str, rec: StepRecord) -> str:
    """``training SFT, step 40/120, about 3 min left`` (what a preparing column and the CLI say)."""
    doing = DOING[step] + (f" ({STAGE.get(rec.stage, rec.stage)})" if rec.stage else "")
    unit = "snippets" if step == INDEX_JOB else "step"
    if rec.total_steps:
        count = (f"{rec.step:,}/{rec.total_steps:,} {unit}" if step == INDEX_JOB
                 else f"step {rec.step}/{rec.total_steps}")
        doing += f", {count}"
    if rec.eta_s is not None:
        doing += f", {about(rec.eta_s)} left"
    elif not rec.step:
        doing += ", starting"
    return doing


def about(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, int(round(seconds / 10.0)) * 10)} s"
    return f"about {int(round(seconds / 60.0))} min"
