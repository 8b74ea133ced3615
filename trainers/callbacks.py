"""Trainer callbacks: the live JSONL log + status heartbeat, and the STOP-file / SIGTERM stop request.

transformers is imported only when a callback class is first used (:func:`__getattr__`): a trainer process imports
this module before it decides on Unsloth, which must be imported before transformers to patch it.

Under ``accelerate launch`` rank 0 alone reads the STOP file and writes the log; a stop request (STOP on rank 0, or
SIGTERM on any rank) is agreed across ranks at the end of every step (:func:`trainers.dist.any_rank`), so every rank
saves the same checkpoint and stops on the same step.
"""
from __future__ import annotations

import functools
import signal
import time
from typing import Any

from medadapt.jobs.rundir import RunDir
from trainers import dist


class StopRequest:
    """Set by SIGTERM/SIGINT or a ``STOP`` file in the run dir; checked at the end of every step."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.signalled = False

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.signalled = True
        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (in-process use): only the STOP file works then
            pass

    @property
    def requested(self) -> bool:
        """This rank's view: its own signal, and (rank 0 only) the STOP file."""
        return self.signalled or (dist.is_main() and self.run.stop_requested())


def __getattr__(name: str) -> Any:
    """``StopCallback`` and ``JsonlLogCallback``, built (importing transformers) on first access."""
    if name in ("StopCallback", "JsonlLogCallback"):
        return _callbacks()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _callbacks() -> dict[str, type]:
    from transformers import TrainerCallback

    return {"StopCallback": type("StopCallback", (_StopCallback, TrainerCallback), {}),
            "JsonlLogCallback": type("JsonlLogCallback", (_JsonlLogCallback, TrainerCallback), {})}


class _StopCallback:
    """On a stop request: save a checkpoint now and end training (the caller then reports ``stopped``)."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if dist.any_rank(self.stop.requested):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class _JsonlLogCallback:
    """Appends contract lines to ``log.jsonl``: step, total_steps, epoch, loss, eval_loss, lr, tokens/s, elapsed, ETA.

    ``step_offset``/``total_offset`` shift a stage's steps onto the job's (MSFT: CPT steps, then SFT steps).
    """

    def __init__(self, run: RunDir, stage: str = "", step_offset: int = 0, extra_total: int = 0) -> None:
        self.run, self.stage = run, stage
        self.step_offset, self.extra_total = step_offset, extra_total
        self.t0 = time.time()
        self.step0 = 0
        self.tokens0 = 0
        self.last: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.time()
        self.step0 = state.global_step
        self.tokens0 = state.num_input_tokens_seen or 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if not state.is_world_process_zero or ("loss" not in logs and "eval_loss" not in logs):
            return
        now = time.time()
        elapsed = now - self.t0
        done = state.global_step - self.step0
        total = state.max_steps
        rec: dict[str, Any] = {
            "step": state.global_step + self.step_offset, "total_steps": total + self.step_offset + self.extra_total,
            "epoch": round(state.epoch or 0.0, 4), "loss": logs.get("loss"), "eval_loss": logs.get("eval_loss"),
            "lr": logs.get("learning_rate"), "elapsed_s": round(elapsed, 2), "time": now,
        }
        if "loss" in logs and elapsed > 0:
            tokens = (state.num_input_tokens_seen or 0) - self.tokens0
            rec["tokens_per_s"] = round(tokens / elapsed, 1) if tokens else None
            if done > 0:
                rec["eta_s"] = round(elapsed / done * (total - state.global_step + self.extra_total), 1)
        if self.stage:
            rec["stage"] = self.stage
        for key in ("loss", "eval_loss"):
            if logs.get(key) is not None:
                self.last[key] = float(logs[key])
        self.run.log(rec)
