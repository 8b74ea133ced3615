"""One job at a time per runs dir, across processes: every trainer, eval run and index build holds
``<runs_dir>/<profile>/job.lock`` (an exclusive ``flock``) while it runs, and writes who it is into the file.

The app's :class:`medadapt.jobs.runner.JobManager` reads the holder (:func:`lock_holder`, without taking the lock) to refuse a
second job and to show a job it did not start — one launched from the shell or by another app — as running.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medadapt.config import AppConfig
from medadapt.jobs.rundir import pid_alive, runs_root

LOCK_NAME = "job.lock"


class JobLockError(RuntimeError):
    """Another job holds the runs dir's job lock."""


def lock_path(cfg: AppConfig) -> Path:
    return runs_root(cfg) / LOCK_NAME


def lock_holder(cfg: AppConfig) -> dict[str, Any] | None:
    """``{"pid", "job", "run_dir", "since"}`` of the live process holding the lock, or None."""
    try:
        data = json.loads(lock_path(cfg).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not pid_alive(data.get("pid")):
        return None  # free, or left by a killed process (the kernel released its flock)
    return data


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another job"
    return f"{holder.get('job', 'a job')} (pid {holder.get('pid')}, run dir {Path(str(holder.get('run_dir'))).name})"


@contextmanager
def hold_job_lock(cfg: AppConfig, run_dir: Path | str, job: str, wait_s: float = 5.0) -> Iterator[None]:
    """Hold the job lock for the ``with`` block; :class:`JobLockError` if another job keeps it for ``wait_s``."""
    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise JobLockError(f"{describe(lock_holder(cfg))} is already running in {path.parent}; wait for it "
                                   "or stop it (one job at a time per runs dir)") from None
            time.sleep(0.1)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "job": job, "run_dir": str(run_dir),
                                 "since": time.time()}).encode())
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
