"""Which variants to evaluate and how: the base model once, every adapter attached by name with peft.

A variant spec is ``base``, ``rag`` (base + retrieved snippets), ``sft`` / ``msft`` / ``cpt`` (the configured
adapter, by default the newest finished run of that kind), ``NAME=SOURCE`` (a PEFT adapter folder, a full fine-tuned
model folder or a Hub model id such as the seed's ``MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-sft-merged``:
a full model is evaluated as its low-rank delta against the base, :mod:`medadapt.delta`), and any of those with a
``+rag`` suffix (adapter + snippets, e.g. ``sft+rag``). A variant whose adapter is missing is *skipped* with a
reason, not an error, so one missing training run does not stop the evaluation of the others.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from medadapt.adapters import is_adapter_dir, resolve_adapter, resolve_source
from medadapt.config import AppConfig
from medadapt.shipped import adapter_checksum


class VariantSpecError(ValueError):
    """A ``--variants`` entry cannot be understood."""


@dataclass
class Variant:
    name: str
    adapter: str | None = None  # adapter folder; None: the base weights
    rag: bool = False
    skipped: str = ""  # why this variant is not evaluated ("" when it is)
    meta: dict = field(default_factory=dict)  # the adapter's medadapt.json (job, steps, losses, …)

    @property
    def peft_name(self) -> str:
        return re.sub(r"\W", "_", self.name.removesuffix("+rag")) or "adapter"


def _adapter_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "medadapt.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        meta = {}
    out = {k: meta.get(k) for k in ("job", "base_model", "lineage", "steps", "wall_s", "data", "source", "delta")
           if k in meta}
    if isinstance(out.get("delta"), dict):  # a full model's delta: its summary, not the per-layer energies
        out["delta"] = {k: v for k, v in out["delta"].items() if k != "energy_kept"}
    out["sha256"] = adapter_checksum(path)  # the adapter's identity (its weights file), as the Benchmarks tab names it
    return out


def resolve_variant(cfg: AppConfig, spec: str) -> Variant:
    spec = spec.strip()
    if not spec:
        raise VariantSpecError("empty variant name")
    core, rag = (spec[:-4], True) if spec.endswith("+rag") else (spec, False)
    if core == "rag":
        return Variant("rag", rag=True)
    if core == "base":
        return Variant(spec, rag=rag)
    if "=" in core:
        name, path = core.split("=", 1)
        name = name + ("+rag" if rag else "")
        p = resolve_source(cfg, name.removesuffix("+rag"), path)
        if p is None or not is_adapter_dir(p):
            return Variant(name, path, rag, skipped=f"{path} is neither a PEFT adapter folder, a full model folder nor "
                                                    "a reachable Hub model id (see the log)")
        return Variant(name, str(p.resolve()), rag, meta=_adapter_meta(p))
    if core in ("sft", "msft", "cpt"):
        p = resolve_adapter(cfg, core)
        if p is None:
            where = cfg.paths.resolve("runs_dir") / cfg.profile
            return Variant(spec, None, rag, skipped=(
                f"no finished {core} adapter under {where} (train one: python -m trainers.{core} "
                f"--config configs/{cfg.profile}/{core}.yaml) and adapters.{core} is {getattr(cfg.adapters, core, 'auto')!r}"))
        return Variant(spec, str(p), rag, meta=_adapter_meta(p))
    raise VariantSpecError(f"unknown variant {spec!r}: use base, rag, sft, msft, NAME=ADAPTER_DIR, optionally +rag")


def resolve_variants(cfg: AppConfig, specs: list[str]) -> list[Variant]:
    out = [resolve_variant(cfg, s) for s in specs]
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise VariantSpecError(f"duplicate variant names in {names}")
    return out


def model_folder(cfg: AppConfig) -> str:
    """The base model folder; the offline model's float32 conversion serves every inference dtype (cast on load)."""
    from medadapt.models import resolve_model_path

    return resolve_model_path(cfg.model.name_or_path, cfg.paths.resolve("cache_dir"), "float32")


def set_threads(cfg: AppConfig) -> None:
    """torch's CPU threads for scoring: ``model.num_threads`` (0: leave torch's default), as the engine does."""
    import torch

    if cfg.model.num_threads and cfg.model.num_threads > 0:
        torch.set_num_threads(cfg.model.num_threads)


def load_for_variants(cfg: AppConfig, variants: list[Variant], device: str | None = None):
    """``(model, tokenizer)``: the base loaded once, each evaluated variant's adapter attached under its name."""
    from medadapt.models import load_model, load_tokenizer

    path = model_folder(cfg)
    tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    model = load_model(path, cfg.model.dtype, cfg.model.trust_remote_code, device)
    with_adapter = [v for v in variants if v.adapter and not v.skipped]
    if with_adapter:
        from peft import PeftModel

        loaded: dict[str, str] = {}
        for v in with_adapter:
            if v.peft_name in loaded:
                continue
            if not loaded:
                model = PeftModel.from_pretrained(model, v.adapter, adapter_name=v.peft_name)
            else:
                model.load_adapter(v.adapter, adapter_name=v.peft_name)
            loaded[v.peft_name] = v.adapter
        model.eval()
    return model, tokenizer


@contextmanager
def activate(model, variant: Variant):
    """Make ``model`` behave as ``variant``: its adapter enabled, or every adapter disabled for base/rag."""
    if not hasattr(model, "peft_config"):
        if variant.adapter:
            raise RuntimeError(f"variant {variant.name} needs adapter {variant.adapter} but the model has none loaded")
        yield model
        return
    if variant.adapter:
        model.set_adapter(variant.peft_name)
        ctx = nullcontext()
    else:
        ctx = model.disable_adapter()
    with ctx:
        yield model
