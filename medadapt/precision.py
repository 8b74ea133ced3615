"""Which float type a device computes natively: one answer for the embedder, the trainers and the setup."""
from __future__ import annotations

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def cpu_bf16() -> bool:
    """True on CPUs whose oneDNN computes bfloat16 natively (AVX512-BF16 or AMX): matmuls ~1.5-2x fp32's speed."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def train_precision(requested: str, cuda: bool) -> str:
    """``bf16``/``fp16``/``fp32`` for a training job. ``auto``: bf16 on CUDA GPUs that have it, else fp16; on the CPU
    bf16 where it is native, else fp32. A frozen base in bf16 with fp32 LoRA weights is standard mixed precision."""
    if requested not in PRECISIONS:
        from medadapt.config import ConfigError

        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if requested != "auto":
        if requested == "fp16" and not cuda:
            from medadapt.config import ConfigError

            raise ConfigError("precision fp16 needs CUDA (CPUs compute bf16 or fp32)")
        return requested
    if cuda:
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16() else "fp32"
