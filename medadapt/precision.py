"""Which float type a device computes natively: one answer for the embedder and the trainers."""
from __future__ import annotations

import logging

from medadapt.config import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def cpu_bf16() -> bool:
    """True on CPUs whose oneDNN computes bfloat16 natively (AVX512-BF16 or AMX)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def train_precision(requested: str, cuda: bool) -> str:
    """``bf16``/``fp16``/``fp32`` for a training job. ``auto``: bf16 on CUDA GPUs that have it, else fp16; fp32 on
    the CPU. CPU bf16 is a choice, not the default: on the 2-core AMX box it ran 1.28x fp32's step rate in two
    sittings and 0.85x in a third, and changing it would change the offline adapters (docs/PERFORMANCE.md). Half
    precision keeps the frozen base in it and the trained weights in fp32 (standard mixed precision)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if requested == "auto":
        if not cuda:
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and not cuda:
        raise ConfigError("precision fp16 needs CUDA (on the CPU: bf16 or fp32)")
    if requested == "bf16" and not cuda and not cpu_bf16():
        log.warning("precision bf16: this CPU has no native bf16 (AVX512-BF16/AMX); it will be emulated, slowly")
    return requested
