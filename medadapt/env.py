"""The environment the app runs in: boolean settings from environment variables (:func:`env_flag`), and running as a
Hugging Face Space: the hardware, the profile it picks, persistent storage, ZeroGPU durations (stdlib only).

A Space sets ``SPACE_ID``; ZeroGPU hardware also sets ``SPACES_ZERO_GPU``. CPU hardware runs the small offline
model (the 1.5B reference model answers at a few tokens per second there); a GPU or ZeroGPU runs the reference
model. When persistent storage is mounted (``/data``) runs, index, votes, results and the Hugging Face cache live
there; otherwise they are lost at every restart and the banner says so. Off Spaces nothing here changes anything.
"""
from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def env_flag(name: str) -> bool:
    """A boolean environment variable: on for 1/true/yes/on (any case), off when unset or anything else (``0``)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


PERSISTENT_MOUNT = "/data"  # where Spaces mount persistent storage (MEDADAPT_PERSISTENT_DIR overrides)
CPU_CORPUS_LIMIT = 2000  # snippets of each Hub corpus a CPU Space indexes: a demo slice that builds in about a minute
SLICED = ("cpu", "zerogpu")  # hardware whose setup jobs embed on the CPU (ZeroGPU lends its GPU to requests only)
# spaces.GPU duration for one Compare request: loading onto the GPU and prefill, plus each new token of the batched
# decode (all four variants in one batch), within ZeroGPU's bounds; estimates for the 1.5B reference model.
GPU_BASE_S, GPU_PER_TOKEN_S, GPU_MIN_S, GPU_MAX_S = 20.0, 0.08, 30, 300
HARDWARE_PROFILE = {  # hardware -> (profile, why: shown in the banner)
    "cpu": ("offline", "CPU Space: the small model, since the 1.5B reference model answers at a few tokens per second "
                       "without a GPU"),
    "gpu": ("reference", "GPU Space: the reference model"),
    "zerogpu": ("reference", "ZeroGPU Space: the reference model, each question on a GPU slice sized to its length"),
}


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def gpu_present() -> bool:
    """An NVIDIA GPU is visible to this container (checked without importing torch)."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/gpus").is_dir()


def detect_hardware() -> str:
    """``zerogpu``, ``gpu`` or ``cpu``."""
    if env_flag("SPACES_ZERO_GPU"):
        return "zerogpu"
    return "gpu" if gpu_present() else "cpu"


def space_profile(hardware: str) -> tuple[str, str]:
    """(profile, why) for a Space on ``hardware``."""
    return HARDWARE_PROFILE[hardware]


def persistent_dir() -> Path | None:
    """The mounted persistent storage when running as a Space and it is writable, else None."""
    if not on_space():
        return None
    root = Path(os.environ.get("MEDADAPT_PERSISTENT_DIR") or PERSISTENT_MOUNT)
    return root if root.is_dir() and os.access(root, os.W_OK) else None


def persistent_paths(root: Path) -> dict[str, str]:
    """``paths`` config values that keep runs (with votes), index, results and the model cache under ``root``."""
    base = root / "medadapt"
    return {"runs_dir": str(base / "runs"), "index_dir": str(base / "index"), "results_dir": str(base / "results"),
            "cache_dir": str(base / "cache")}


def use_persistent_hf_home() -> Path | None:
    """Point the Hugging Face cache at persistent storage (unless ``HF_HOME`` is set); call before importing
    transformers or datasets. Returns the cache dir it set."""
    root = persistent_dir()
    if root is None or os.environ.get("HF_HOME"):
        return None
    home = root / ".huggingface"
    os.environ["HF_HOME"] = str(home)
    return home


def gpu_duration(max_new_tokens: int) -> int:
    """Seconds of ZeroGPU time to ask for a Compare request of ``max_new_tokens``."""
    need = GPU_BASE_S + GPU_PER_TOKEN_S * max(0, int(max_new_tokens))
    return int(min(GPU_MAX_S, max(GPU_MIN_S, math.ceil(need))))


def request_duration(max_new_tokens: Any = 256) -> int:
    """Seconds of ZeroGPU time for a Compare request's ``max_new_tokens`` as sent (a bad value: the minimum)."""
    try:
        return gpu_duration(int(max_new_tokens))
    except (TypeError, ValueError):  # a bad value: the handler itself reports it
        return GPU_MIN_S


def zerogpu(fn: Callable, duration: Callable[..., int]) -> Callable:
    """Wrap the Compare handler with ``spaces.GPU`` where the ``spaces`` package is installed (ZeroGPU Spaces);
    unchanged elsewhere. ``duration`` gets the handler's own arguments and sizes each request's GPU time."""
    try:
        import spaces  # only present on Spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
