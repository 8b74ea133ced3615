"""A published full model's delta as a job: ``python -m medadapt.adapters prepare --kind K --source S --output_dir
RUN`` downloads the model (or reads it from the Hugging Face cache), extracts its low-rank delta against the base
(:mod:`medadapt.delta`) and publishes it as ``RUN/adapter``, reporting through the run directory like a trainer.

``status.json`` (running → finished | failed, ``job: "delta"``, the kind and source) and ``log.jsonl`` lines
``{"stage": "download"|"extract", "step", "total_steps", "elapsed_s", "eta_s"}`` (download: bytes; extract: the
model's tensors), so the first-run setup shows it in the Compare column it prepares and the Training tab lists it.
Running it again on a finished source finds the prepared delta and finishes at once.
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from medadapt.adapters import prepare_delta, prepared_delta
from medadapt.config import AppConfig
from medadapt.jobs.lock import hold_job_lock
from medadapt.jobs.rundir import DELTA_JOB, RunDir, new_run_dir, runs_root


def run_delta_job(cfg: AppConfig, kind: str, source: str, run_dir: Path | None = None) -> Path:
    """Prepare the delta of ``source`` for variant ``kind`` reporting in ``run_dir`` (a new ``delta-<time>`` run
    when None); returns the adapter folder, raises on failure (recorded in ``status.json``)."""
    run = RunDir(run_dir or new_run_dir(runs_root(cfg), DELTA_JOB)).create()
    started = time.time()
    state = {"status": "running", "job": DELTA_JOB, "kind": kind, "source": source, "pid": os.getpid(),
             "started": started, "ended": None, "error": None, "run_dir": str(run.path)}
    run.write_status(state)
    began: dict[str, float] = {}
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.time()
        began.setdefault(stage, now)
        if now - last[0] < 0.5 and done < total:
            return  # at most two log lines a second
        last[0] = now
        spent = now - began[stage]
        eta = spent / done * (total - done) if done and total else None
        run.log({"stage": stage, "step": done, "total_steps": total, "elapsed_s": round(now - started, 2),
                 "eta_s": None if eta is None else round(eta, 1), "time": now})

    try:
        with hold_job_lock(cfg, run.path, DELTA_JOB):  # one job per runs dir, across processes
            found = prepared_delta(cfg, kind, source)
            adapter = found.path if found is not None else prepare_delta(cfg, kind, source, run.path, progress)
    except BaseException as e:
        run.write_status({**state, "status": "failed", "ended": time.time(), "error": f"{type(e).__name__}: {e}",
                          "wall_s": round(time.time() - started, 1), "traceback": traceback.format_exc()[-4000:]})
        raise
    run.write_status({**state, "status": "finished", "ended": time.time(), "adapter": str(adapter),
                      "wall_s": round(time.time() - started, 1)})
    return adapter
