"""Start, poll, stop and resume trainer and eval subprocesses; read their run dirs.

The web server never imports trainer code (LlamaBoard-runner style): a job is ``python -m trainers.<job> --config
<run>/launch.yaml --output_dir <run>`` (or ``python -m eval run ... --output_dir <run>``) in its own process group,
its stdout/stderr appended to ``<run>/stdout.log``. A training job may run under ``accelerate launch`` with N processes
(:class:`medadapt.jobs.launcher.Launcher`, recorded in ``launch.json`` so a resume relaunches it the same way). Progress comes from the files of the run directory contract,
read and written through :mod:`medadapt.jobs.rundir`. One job runs at a
time per :class:`JobManager`; the state lives here, not in a browser session, so any page re-attaches to it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from medadapt.config import REPO_ROOT, AppConfig, TrainConfig, to_dict
from medadapt.jobs.lock import lock_holder
from medadapt.jobs.launcher import Launcher
from medadapt.jobs.rundir import (DELTA_JOB, FINAL, INDEX_JOB, TRAIN_JOBS, LogReader, RunDir, RunSnapshot, file_sig,
                             new_run_dir, pid_alive, read_json, runs_root, summarize, tail, write_json_atomic)

LISTED_JOBS = (*TRAIN_JOBS, INDEX_JOB, DELTA_JOB)  # the runs the Training tab lists


class JobError(RuntimeError):
    """A job cannot be started, stopped or resumed; the message says why."""


class JobBusyError(JobError):
    """Another job is already running in this app."""


@contextmanager
def writable(run_dir: Path):
    """Turn a disk-full or permission error on the run dir into a JobError that says what to fix."""
    try:
        yield
    except OSError as e:
        raise JobError(f"cannot write the run directory {run_dir}: {e.strerror or e}. Free disk space or fix its "
                       "permissions (or set MEDADAPT_RUNS_DIR to a writable folder).") from e


def child_env(cfg: AppConfig) -> dict[str, str]:
    """The environment of a job: this one plus the app's profile, model and dirs, so the job sees the same config."""
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", MEDADAPT_PROFILE=cfg.profile, MEDADAPT_MODEL=cfg.model.name_or_path)
    for name in ("data_dir", "cache_dir", "runs_dir", "index_dir", "results_dir"):  # empty data_dir: none (Hub data)
        env[f"MEDADAPT_{name.upper()}"] = str(cfg.paths.resolve(name)) if getattr(cfg.paths, name) else ""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def default_commands() -> dict[str, list[str]]:
    cmds = {job: [sys.executable, "-m", f"trainers.{job}"] for job in TRAIN_JOBS}
    cmds["eval"] = [sys.executable, "-m", "eval", "run"]
    cmds[INDEX_JOB] = [sys.executable, "-m", "medadapt.retrieval", "build"]
    cmds[DELTA_JOB] = [sys.executable, "-m", "medadapt.delta_job", "prepare"]
    return cmds


# ---------------------------------------------------------------- the manager

class JobManager:
    """Runs at most one trainer/eval subprocess at a time and reports on every run in the runs dir.

    ``commands`` maps a job name to the argv prefix that runs it (tests swap in a fake trainer).
    """

    def __init__(self, cfg: AppConfig, commands: dict[str, list[str]] | None = None):
        self.cfg = cfg
        self.commands = {**default_commands(), **(commands or {})}
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._run_dir: Path | None = None
        self._adopted: tuple[Path, int] | None = self._find_orphan()
        self._logs = LogReader()
        self._snaps: dict[Path, tuple[tuple, RunSnapshot]] = {}

    # -- where things live
    @property
    def runs_root(self) -> Path:
        return runs_root(self.cfg)

    def new_run_dir(self, job: str) -> Path:
        return new_run_dir(self.runs_root, job)

    def _find_orphan(self) -> tuple[Path, int] | None:
        """A job still running from an earlier app process (so a restarted app re-attaches to it)."""
        for run_dir in self._run_dirs():
            st = RunDir(run_dir).status()
            if st.get("status") == "running" and pid_alive(st.get("pid")):
                return run_dir, int(st["pid"])
        return None

    def _run_dirs(self) -> list[Path]:
        if not self.runs_root.is_dir():
            return []
        dirs = [p for p in self.runs_root.iterdir() if p.is_dir() and any(
            f.exists() for f in (RunDir(p).status_file, RunDir(p).launch_json, RunDir(p).log_file))]
        return sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)

    # -- launching
    def running(self) -> Path | None:
        """The run dir of the job running now, or None."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return self._run_dir
            if self._adopted and pid_alive(self._adopted[1]):
                return self._adopted[0]
            self._adopted = None
            holder = lock_holder(self.cfg)  # a job this app did not start (the shell, another app)
            if holder and holder.get("run_dir") and Path(holder["run_dir"]).is_dir():
                return Path(holder["run_dir"])
            return None

    def active_run(self) -> Path | None:
        """The run to show live: the running one, else the last launched here, else the newest on disk."""
        run = self.running() or self._run_dir
        if run is None:
            dirs = self._run_dirs()
            run = dirs[0] if dirs else None
        return run

    def _refuse_if_busy(self) -> None:
        busy = self.running()
        if busy is not None:
            raise JobBusyError(f"a job is already running ({busy.name}); stop it or wait until it finishes")

    def start(self, tcfg: TrainConfig, source: str = "", output_dir: str | Path | None = None,
              launcher: Launcher | None = None) -> Path:
        """Launch trainer ``tcfg.job`` on ``tcfg`` in a new run dir (or ``output_dir``), in one process or under
        ``launcher`` (accelerate with N processes); returns the run dir."""
        if tcfg.job not in TRAIN_JOBS:
            raise JobError(f"unknown job {tcfg.job!r}; expected one of {', '.join(TRAIN_JOBS)}")
        launcher = launcher or Launcher()
        if launcher.problems():
            raise JobError("; ".join(launcher.problems()))
        with self._lock:
            self._refuse_if_busy()
            run_dir = Path(output_dir) if output_dir else self.new_run_dir(tcfg.job)
            with writable(run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)
                data = to_dict(tcfg)
                data["output_dir"] = str(run_dir)
                launch = RunDir(run_dir).launch_yaml
                launch.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
                argv = [*self.commands[tcfg.job], "--config", str(launch), "--output_dir", str(run_dir)]
                self._spawn(run_dir, tcfg.job, launcher.wrap(argv), source, launcher)
            return run_dir

    def start_eval(self, args: list[str], output_dir: str | Path | None = None) -> Path:
        """Launch ``python -m eval run <args> --output_dir D``; D follows the same log/status contract."""
        with self._lock:
            self._refuse_if_busy()
            run_dir = Path(output_dir) if output_dir else self.new_run_dir("eval")
            with writable(run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)
                argv = [*self.commands["eval"], *args, "--output_dir", str(run_dir)]
                self._spawn(run_dir, "eval", argv, " ".join(args))
            return run_dir

    def start_index(self, output_dir: str | Path | None = None, args: list[str] | tuple[str, ...] = ()) -> Path:
        """Launch the index build as a job (``output_dir`` again: resume a partial build there)."""
        with self._lock:
            self._refuse_if_busy()
            run_dir = Path(output_dir) if output_dir else self.new_run_dir(INDEX_JOB)
            with writable(run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)
                argv = [*self.commands[INDEX_JOB], *args, "--output_dir", str(run_dir)]
                self._spawn(run_dir, INDEX_JOB, argv, "retrieval index")
            return run_dir

    def start_delta(self, kind: str, source: str, output_dir: str | Path | None = None) -> Path:
        """Launch the preparation of a published full model's delta as a job (``medadapt.delta_job``)."""
        with self._lock:
            self._refuse_if_busy()
            run_dir = Path(output_dir) if output_dir else self.new_run_dir(DELTA_JOB)
            with writable(run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)
                argv = [*self.commands[DELTA_JOB], "--kind", kind, "--source", source, "--output_dir", str(run_dir)]
                self._spawn(run_dir, DELTA_JOB, argv, f"published {kind} model {source}")
            return run_dir

    def resume(self, run_dir: str | Path | None = None) -> Path:
        """Relaunch a stopped or failed run (default: the active one) in its dir with ``--resume``."""
        with self._lock:
            self._refuse_if_busy()
            run_dir = Path(run_dir) if run_dir else self.active_run()
            if run_dir is None or not run_dir.is_dir():
                raise JobError("no run selected to resume")
            snap = self.poll(run_dir)
            if snap.job not in TRAIN_JOBS:
                raise JobError(f"{run_dir.name} is a {snap.job!r} run; only training runs can be resumed")
            if snap.status == "finished":
                raise JobError(f"{run_dir.name} already finished; start a new run instead")
            run = RunDir(run_dir)
            if not run.has_checkpoint():
                raise JobError(f"{run_dir.name} has no checkpoint to resume from; start a new run instead")
            config = next((p for p in (run.launch_yaml, run.config_file) if p.exists()), None)
            if config is None:
                raise JobError(f"{run_dir.name} has no launch.yaml or config.yaml")
            argv = [*self.commands[snap.job], "--config", str(config), "--output_dir", str(run_dir), "--resume"]
            launcher = self.launcher_of(run_dir)
            self._spawn(run_dir, snap.job, launcher.wrap(argv), snap.config, launcher)
            return run_dir

    @staticmethod
    def launcher_of(run_dir: Path) -> Launcher:
        """How ``run_dir`` was launched (``launch.json``; single process when it names none)."""
        return Launcher.from_dict(read_json(RunDir(run_dir).launch_json).get("launcher"))

    def _spawn(self, run_dir: Path, job: str, argv: list[str], source: str, launcher: Launcher | None = None) -> None:
        run = RunDir(run_dir)
        run.stop_file.unlink(missing_ok=True)
        write_json_atomic(run.launch_json, {"job": job, "config": source, "argv": argv, "launched": time.time(),
                                            "launcher": (launcher or Launcher()).to_dict()})
        with open(run.stdout_file, "ab") as out:
            out.write(f"=== {datetime.now():%Y-%m-%d %H:%M:%S} $ {' '.join(argv)}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=child_env(self.cfg), stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                raise JobError(f"could not launch {argv[0]}: {e}") from e
        run.write_status({"status": "running", "job": job, "pid": proc.pid, "started": time.time()})
        self._proc, self._run_dir, self._adopted = proc, run_dir, None

    # -- stopping
    def stop(self, force: bool = False) -> Path:
        """Ask the running job to save a checkpoint and exit (``STOP`` file; ``force``: also SIGTERM, which the
        trainers treat the same way, for a job stuck before its next step); returns its run dir."""
        run_dir = self.running()
        if run_dir is None:
            raise JobError("no job is running")
        RunDir(run_dir).stop_file.touch()
        if force:
            with self._lock:
                pid = self._proc.pid if self._proc is not None and self._run_dir == run_dir else (
                    self._adopted[1] if self._adopted else None)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        return run_dir

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM the running job (trainers also save and stop on it); SIGKILL after ``timeout`` seconds."""
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- reading runs
    def _liveness(self, run_dir: Path, status: dict[str, Any]) -> tuple[bool | None, int | None]:
        """(alive, exit code) of the process behind a run; alive None when no process is known."""
        with self._lock:
            if self._proc is not None and self._run_dir == run_dir:
                rc = self._proc.poll()
                return rc is None, rc
        if status.get("pid") is None:
            return None, None
        return pid_alive(status["pid"]), None

    def poll(self, run_dir: str | Path | None = None) -> RunSnapshot | None:
        """A snapshot of ``run_dir`` (default: the active run); a dead job left 'running' is marked failed."""
        run_dir = Path(run_dir) if run_dir else self.active_run()
        if run_dir is None:
            return None
        run = RunDir(run_dir)
        sig = (file_sig(run.status_file), file_sig(run.log_file))
        cached = self._snaps.get(run_dir)
        if cached is not None and cached[0] == sig:
            return cached[1]  # a finished/failed/stopped run whose files have not changed
        status = run.status()
        records = self._logs.records(run_dir)
        config = run.launch_source()
        state, error = status.get("status") or "unknown", status.get("error") or ""
        alive, rc = self._liveness(run_dir, status)
        if alive:
            if run.stop_requested():
                state = "stopping"
            elif state not in FINAL:
                state = "running" if records else "starting"
        elif state == "running" or (state == "unknown" and alive is False):
            how = f"exited with code {rc}" if rc is not None else f"(pid {status.get('pid')}) is no longer alive"
            error = error or f"the job process {how} without reporting a final status"
            last = tail(run.stdout_file, 12)
            if last:
                error += f"\n--- last lines of stdout.log ---\n{last}"
            state = "failed"
            status = {**status, "status": "failed", "error": error, "ended": time.time()}
            try:
                run.write_status(status)
            except OSError:
                pass
        if state == "failed" and not error:
            error = tail(run.stdout_file, 12) or "the job failed without an error message"
        snap = summarize(run_dir, status, records, state, error, config)
        if state in FINAL:
            self._snaps[run_dir] = ((file_sig(run.status_file), sig[1]), snap)
        return snap

    def list_runs(self, jobs: tuple[str, ...] | None = LISTED_JOBS) -> list[RunSnapshot]:
        """Every run under the runs dir of the active profile (``jobs`` filters by job), newest first."""
        snaps = [self.poll(d) for d in self._run_dirs()]
        return [s for s in snaps if s is not None and (jobs is None or s.job in jobs)]

    def wait(self, run_dir: Path, timeout: float = 60.0, until: tuple[str, ...] = FINAL) -> RunSnapshot:
        """Poll ``run_dir`` until its status is in ``until``; raises TimeoutError (with the snapshot) otherwise."""
        deadline = time.time() + timeout
        while True:
            snap = self.poll(run_dir)
            if snap is not None and snap.status in until and (snap.active or self.running() != run_dir):
                return snap  # a final status counts once the process has exited too
            if time.time() > deadline:
                raise TimeoutError(f"{run_dir.name} still {snap.status if snap else 'missing'} after {timeout}s")
            time.sleep(0.1)
