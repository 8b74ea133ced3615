"""The index build as a job: ``python -m medadapt.retrieval build --output_dir RUN`` reports through a run directory.

The same contract as the trainers (docs/ARCHITECTURE.md): ``status.json`` (running → finished | failed),
``log.jsonl`` lines ``{"step": snippets embedded, "total_steps": snippets, "elapsed_s", "eta_s", "time"}``, so the
Training tab and the first-run setup watch an index build the way they watch training. The build itself resumes
(only missing snippets are embedded), so running the job again in the same run dir continues it.
"""
from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from medadapt.config import AppConfig
from medadapt.jobs.lock import hold_job_lock
from medadapt.jobs.rundir import RunDir

JOB = "index"


def run_index_job(cfg: AppConfig, run_dir: Path, limit: int | None = None, rebuild: bool = False,
                  on_progress: Callable[[int, int], None] | None = None) -> int:
    """Build (or resume) the profile's index, reporting in ``run_dir`` (and to ``on_progress``); returns the table's
    rows, raises on failure."""
    from medadapt.retrieval.index import build_index

    run = RunDir(run_dir).create()
    prev_wall = float(run.status().get("wall_s") or 0.0)
    started = time.time()
    state = {"status": "running", "job": JOB, "pid": os.getpid(), "started": started, "ended": None, "error": None,
             "run_dir": str(run_dir)}
    run.write_status(state)
    first: list[int] = []  # snippets already present when this process started (a resumed build)

    def progress(done: int, total: int) -> None:
        if not first:
            first.append(done)
        elapsed = time.time() - started
        new = done - first[0]
        eta = elapsed / new * (total - done) if new > 0 else None
        run.log({"step": done, "total_steps": total, "elapsed_s": round(elapsed, 2),
                 "eta_s": None if eta is None else round(eta, 1), "time": time.time()})
        if on_progress:
            on_progress(done, total)

    try:
        with hold_job_lock(cfg, run_dir, JOB):  # one job per runs dir, across processes
            rows = build_index(cfg, progress, limit, rebuild=rebuild)
    except BaseException as e:
        run.write_status({**state, "status": "failed", "ended": time.time(), "error": f"{type(e).__name__}: {e}",
                          "wall_s": round(prev_wall + time.time() - started, 1),
                          "traceback": traceback.format_exc()[-4000:]})
        raise
    from medadapt.retrieval.index import failure_message, source_report

    failed = source_report(cfg).get("failed") or {}
    run.write_status({**state, "status": "finished", "ended": time.time(), "steps": rows,
                      "wall_s": round(prev_wall + time.time() - started, 1), "table": cfg.rag.table,
                      "failed_sources": failed, "warning": failure_message(failed) if failed else None})
    return rows
