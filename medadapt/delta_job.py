"""A published full model's delta as a job: ``python -m medadapt.delta_job prepare --kind K --source S --output_dir
RUN`` downloads the model (or reads it from the Hugging Face cache), extracts its low-rank delta against the base
(:mod:`medadapt.delta`) and publishes it as ``RUN/adapter``, reporting through the run directory like a trainer.

``status.json`` (running → finished | failed, ``job: "delta"``, the kind and source) and ``log.jsonl`` lines
``{"stage": "download"|"extract", "step", "total_steps", "elapsed_s", "eta_s"}`` (download: bytes; extract: the
model's tensors), so the first-run setup shows it in the Compare column it prepares and the Training tab lists it.
Running it again on a finished source finds the prepared delta and finishes at once.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from medadapt.adapters import list_adapters, prepare_delta, prepared_delta, published
from medadapt.config import AppConfig, load_config
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


def main(argv: list[str] | None = None) -> int:
    """``python -m medadapt.delta_job prepare [--profile P] [--kind K --source S --output_dir RUN]``: extract the
    delta of every published model the profile offers (``adapters.models``), or of one as a job in a run dir (the
    first-run setup's step), so Compare lists them; ``list`` shows every adapter with its origin."""
    p = argparse.ArgumentParser(prog="python -m medadapt.delta_job", description=main.__doc__.split("\n")[0])
    p.add_argument("cmd", choices=["prepare", "list"])
    p.add_argument("--profile", default=None)
    p.add_argument("--kind", choices=["sft", "msft", "cpt"], help="with --source: prepare that one model")
    p.add_argument("--source", help="a full model folder or Hub id the profile lists under adapters.models")
    p.add_argument("--output_dir", help="as a job: status.json and log.jsonl in this run dir (the adapter in it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.profile)
    if args.cmd == "list":
        for kind in ("sft", "msft", "cpt"):
            for info in list_adapters(cfg, kind):
                print(f"{kind}: {info.label} [{info.ref}]")
            for source in published(cfg, kind):
                if prepared_delta(cfg, kind, source) is None:
                    print(f"{kind}: published · {source}: not prepared")
        return 0
    if args.source or args.output_dir:
        if not (args.kind and args.source):
            p.error("--kind and --source go together (and --output_dir needs them)")
        if args.source not in published(cfg, args.kind):
            print(f"error: {args.source} is not among the profile's published {args.kind} models "
                  f"(adapters.models): {published(cfg, args.kind)}", file=sys.stderr)
            return 2
        try:
            path = run_delta_job(cfg, args.kind, args.source, Path(args.output_dir) if args.output_dir else None)
        except Exception as e:  # noqa: BLE001 — recorded in the run dir; one line here
            print(f"{args.kind}: {args.source}: failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"{args.kind}: {args.source} -> {path}")
        return 0
    failed = 0
    for kind, sources in (cfg.adapters.models or {}).items():
        for source in sources:
            try:
                print(f"{kind}: {source} -> {prepare_delta(cfg, kind, source)}")
            except Exception as e:  # noqa: BLE001 — report each and go on
                failed += 1
                print(f"{kind}: {source}: failed: {type(e).__name__}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
