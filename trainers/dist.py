"""The trainers under ``accelerate launch`` (DDP, DeepSpeed, FSDP): which rank this is, and what ranks agree on.

One process (``python -m trainers.sft``) is rank 0 of a world of 1 and nothing here talks to anyone. Under
``accelerate launch`` / ``torchrun`` every rank runs the same job: rank 0 alone writes ``status.json``, ``log.jsonl``,
the config, the adapter and its model card, holds the job lock and pushes to the Hub; the run directory, a STOP
request and "is there a finished CPT adapter" are decided by rank 0 and broadcast, so all ranks take the same path and
stop on the same step. The process group is the one accelerate sets up (gloo on CPU, NCCL on CUDA); it is created here
early (``PartialState``) so the ranks can agree before the HF Trainer exists.
"""
from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """Rank 0 (also the only process of a single-process run)."""
    return rank() == 0


def distributed() -> bool:
    return world_size() > 1


def init() -> None:
    """Join the launcher's process group now (idempotent; a no-op for one process)."""
    if not distributed():
        return
    import torch.distributed as tdist

    if tdist.is_available() and not tdist.is_initialized():
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available(), backend=None if torch.cuda.is_available() else "gloo")


def _group_ready() -> bool:
    if not distributed():
        return False
    import torch.distributed as tdist

    return tdist.is_available() and tdist.is_initialized()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not _group_ready():
        return value
    import torch.distributed as tdist

    box = [value if is_main() else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (an all-reduce MAX of one number)."""
    if not _group_ready():
        return bool(flag)
    import torch
    import torch.distributed as tdist

    device = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if _group_ready():
        import torch.distributed as tdist

        tdist.barrier()


# ---------------------------------------------------------------- TrainConfig → TrainingArguments

def trainer_kwargs(tcfg: Any, cuda: bool) -> dict[str, Any]:
    """The TrainingArguments of a multi-process run: the DDP settings (gloo on CPU). DeepSpeed and FSDP come from the
    accelerate config the run is launched with (``configs/accelerate/*.yaml``)."""
    kw: dict[str, Any] = {"ddp_find_unused_parameters": False}  # LoRA: frozen base weights are not "unused"
    if distributed() and not cuda:
        kw["ddp_backend"] = "gloo"
    return kw
