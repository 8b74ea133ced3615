"""One training job end to end: run dir, status.json lifecycle, stop handling, adapter publish, optional Hub push.

Each job module (``sft``, ``cpt``, ``msft``) supplies a ``body(ctx) -> Outcome``; :func:`execute` does the rest.
Under ``accelerate launch`` every rank runs :func:`execute`; rank 0 alone picks the run dir (broadcast to the others),
holds the job lock, writes the status, config and adapter and pushes (:mod:`trainers.dist`).
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medadapt.config import OFFLINE_MODEL, OFFLINE_MODEL_HUB_ID, AppConfig, ConfigError, TrainConfig, to_dict
from medadapt.jobs.lock import JobLockError, hold_job_lock
from medadapt.jobs.rundir import RunDir, latest_unfinished, new_run_dir, runs_root
from trainers import dist
from trainers.publish import publish_adapter

log = logging.getLogger(__name__)


@dataclass
class Context:
    tcfg: TrainConfig
    app: AppConfig
    run: RunDir
    stop: Any  # trainers.callbacks.StopRequest
    rt: Any  # trainers.common.Runtime
    model_path: str
    resume: bool


@dataclass
class Outcome:
    stopped: bool
    steps: int
    final_loss: float | None
    final_eval_loss: float | None
    model: Any = None
    tokenizer: Any = None
    state_dict: dict | None = None  # DeepSpeed ZeRO-3 / FSDP: the weights gathered onto rank 0 (None: the model's)
    data: dict[str, Any] = field(default_factory=dict)
    lineage: list[str] = field(default_factory=list)


def run_dir_for(tcfg: TrainConfig, app: AppConfig, resume: bool) -> Path:
    if resume and not tcfg.output_dir:
        found = latest_unfinished(runs_root(app), tcfg.job)
        if found is None:
            raise ConfigError(f"--resume: no unfinished {tcfg.job} run under {runs_root(app)}")
        return found
    path = Path(tcfg.output_dir).expanduser().resolve() if tcfg.output_dir else new_run_dir(runs_root(app), tcfg.job)
    if resume and not path.exists():
        raise ConfigError(f"--resume: {path} does not exist")
    return path


def execute(tcfg: TrainConfig, body: Callable[[Context], Outcome], app: AppConfig | None = None,
            resume: bool = False) -> dict[str, Any]:
    """Run ``body`` inside a run dir; returns the final status dict (``finished``/``stopped``; raises on failure)."""
    from trainers.callbacks import StopRequest
    from trainers.common import app_config, base_model, runtime

    dist.init()
    main = dist.is_main()
    app = app or app_config(tcfg)
    path = Path(_agreed(lambda: str(run_dir_for(tcfg, app, resume))))
    tcfg.output_dir = str(path)
    _single_process_options(tcfg)
    run = RunDir(path).create()
    prev_wall = float(run.status().get("wall_s") or 0.0) if resume else 0.0
    if resume and main:  # a STOP left by the stopped session; a fresh run honours a STOP created before it started
        run.stop_file.unlink(missing_ok=True)
    started = time.time()
    if main:
        run.write_config(to_dict(tcfg))
        run.update_status(status="running", job=tcfg.job, pid=os.getpid(), started=started, ended=None, error=None,
                          adapter=None, run_dir=str(path), world_size=dist.world_size())
    dist.barrier()  # the other ranks start once the STOP of a stopped session is gone
    stop = StopRequest(run)
    stop.install()
    lock, locked = hold_job_lock(app, path, tcfg.job), False
    try:
        if main:
            lock.__enter__()  # one job per runs dir, across processes (medadapt.jobs.lock)
            locked = True
        rt = runtime(tcfg)
        model_path = base_model(tcfg, app)
        out = body(Context(tcfg, app, run, stop, rt, model_path, resume))
        wall = prev_wall + time.time() - started
        fields: dict[str, Any] = {"final_loss": out.final_loss, "final_eval_loss": out.final_eval_loss,
                                  "steps": out.steps, "wall_s": round(wall, 1)}
        if out.stopped:
            return run.update_status(status="stopped", ended=time.time(), **fields) if main else fields
        meta = {"job": tcfg.job, "base_model": model_path, "base_model_id": base_model_id(tcfg, app),
                "lineage": out.lineage or [f"base: {model_path}"],
                "steps": out.steps, "final_loss": out.final_loss, "final_eval_loss": out.final_eval_loss,
                "losses": {"train": out.final_loss, "eval": out.final_eval_loss}, "wall_s": round(wall, 1),
                "data": out.data, **rt.record(), "run_dir": str(path), "created": time.time(),
                "config": to_dict(tcfg)}
        adapter = publish_adapter(out.model, out.tokenizer, run.adapter, meta, out.state_dict)
        if not main:
            return fields
        if tcfg.push_to_hub:
            push_to_hub(adapter, tcfg.push_to_hub)
        return run.update_status(status="finished", ended=time.time(), adapter=str(adapter), **fields)
    except BaseException as e:
        if not main:
            raise
        run.update_status(status="failed", ended=time.time(), wall_s=round(prev_wall + time.time() - started, 1),
                          error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
        raise
    finally:
        if locked:
            lock.__exit__(None, None, None)


def _agreed(decide: Callable[[], str]) -> str:
    """Rank 0's answer on every rank; its ConfigError is raised on every rank."""
    answer: tuple[str, str] = ("", "")
    if dist.is_main():
        try:
            answer = (decide(), "")
        except ConfigError as e:
            answer = ("", str(e))
    value, error = dist.broadcast(answer)
    if error:
        raise ConfigError(error)
    return value


def _single_process_options(tcfg: TrainConfig) -> None:
    """Unsloth trains on one GPU only: ``use_unsloth=auto`` falls back to PEFT under several ranks."""
    if not dist.distributed():
        return
    if str(tcfg.use_unsloth).lower() == "true":
        raise ConfigError("use_unsloth=true trains on one process only; set use_unsloth=auto or false for "
                          f"{dist.world_size()} processes")
    tcfg.use_unsloth = "false"


def base_model_id(tcfg: TrainConfig, app: AppConfig) -> str:
    """The base model's Hub id for the model card (the offline GGUF is SmolLM2-135M-Instruct)."""
    name = tcfg.base_model or app.model.name_or_path
    return OFFLINE_MODEL_HUB_ID if name == OFFLINE_MODEL else name


def push_to_hub(adapter: Path, repo_id: str) -> None:
    """Upload the adapter folder when ``HF_TOKEN`` is set (skipped with a log line otherwise)."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        log.warning("push_to_hub=%s but no HF_TOKEN set: not pushing", repo_id)
        return
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=True)
    api.upload_folder(folder_path=str(adapter), repo_id=repo_id, commit_message="MedAdapt adapter")


def cli_main(job: str, description: str, body: Callable[[Context], Outcome], argv: list[str] | None = None) -> int:
    """Shared ``main()``: parse, run, print one summary line; errors become a message and exit code 1."""
    from trainers.cli import config_from_args, make_parser

    args = make_parser(job, description).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tcfg = config_from_args(args, job)
        status = execute(tcfg, body, resume=args.resume)
    except (ConfigError, FileNotFoundError, ValueError, JobLockError) as e:
        print(f"error: {e}")
        return 1
    if not dist.is_main():
        return 0
    print(f"{job}: {status['status']} after {status.get('steps')} steps in {status.get('wall_s')} s; "
          f"loss {status.get('final_loss')} eval_loss {status.get('final_eval_loss')}; "
          f"adapter {status.get('adapter') or '-'} (run dir {status.get('run_dir')})")
    return 0


def entry_points(job: str, description: str,
                 body: Callable[[Context], Outcome]) -> tuple[Callable[..., dict[str, Any]], Callable[..., int]]:
    """A job module's ``run(tcfg, app=None, resume=False)`` (train in this process; the run's final status) and its
    CLI ``main(argv=None)`` (:func:`cli_main`), both around ``body``."""
    def run(tcfg: TrainConfig, app: AppConfig | None = None, resume: bool = False) -> dict[str, Any]:
        return execute(tcfg, body, app, resume)

    def main(argv: list[str] | None = None) -> int:
        return cli_main(job, description, body, argv)

    run.__doc__ = f"Train the {job} job in this process; returns the run's final status (see the run directory)."
    main.__doc__ = f"``python -m trainers.{job}``: {description}"
    return run, main


def train_adapter(ctx: Context, job: str, build_data: Callable[[TrainConfig, AppConfig, Any], tuple[list, list, dict]],
                  *, adapter: str | None = None, data: tuple | None = None, ckpt_stage: str = "",
                  **stage: Any) -> Outcome:
    """One job's training stage (:class:`Context` ``ctx``): load the model (continuing ``adapter``), build its data
    (or take ``data``), :func:`trainers.common.train_stage` it (``stage``: its keywords) and return the
    :class:`Outcome`, whose lineage names the base and ``job``'s sources; the caller publishes."""
    from trainers.common import load_trainable, train_stage

    model, tok = load_trainable(ctx.tcfg, ctx.model_path, ctx.rt, adapter)
    train, evals, info = data or build_data(ctx.tcfg, ctx.app, tok)
    res = train_stage(ctx.tcfg, model, tok, train, evals, ctx.run.checkpoints(ckpt_stage), ctx.rt, ctx.run, ctx.stop,
                      resume=ctx.resume, **stage)
    return Outcome(res.stopped, res.steps, res.final_loss, res.final_eval_loss, model, tok, res.state_dict, info,
                   [f"base: {ctx.model_path}", f"{job}: {', '.join(info['sources'])} ({res.steps} steps)"])
