"""A full fine-tuned model served as a low-rank delta against the base: a PEFT LoRA adapter folder.

The seed published merged models (LoRA merged into the base, saved as full weights). Loading each as a second full
model would break the engine's one-base batching (every variant one row of one batch over one set of weights).
:func:`extract_delta` turns a full model into an ordinary PEFT LoRA adapter on the base instead:

- every linear weight ``W_ft - W_base`` is approximated by its truncated SVD of rank ``r`` (``A = sqrt(S) V^T``,
  ``B = U sqrt(S)``, scaling 1); a merged LoRA of rank <= r (the seed's r8 CPT + r16 SFT: rank <= 24) is recovered
  up to the merge's rounding;
- a changed embedding, ``lm_head`` or norm (the seed's CPT trained ``embed_tokens`` and ``lm_head`` fully) is kept
  whole as a PEFT ``modules_to_save`` copy, which the engine switches per row;
- what neither can carry (a changed bias, a tensor the base lacks) is listed in the report, never dropped silently.

The folder holds ``adapter_config.json``, ``adapter_model.safetensors`` and ``medadapt.json`` (source, rank, per-layer
energy kept, the full copies, what is not represented). :func:`fidelity` compares base + delta with the full model
(next-token agreement and KL on given prompts); docs/PERFORMANCE.md has the figures per rank.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from medadapt.jobs.rundir import write_dir_atomic

log = logging.getLogger(__name__)

PREFIX = "base_model.model."
FULL_COPY = re.compile(r"(^|\.)(embed_tokens|lm_head|wte|wpe|[a-z_]*norm[a-z_0-9]*)$")  # kept whole when changed
SAME = 0.0  # a tensor whose max |difference| is at most this counts as unchanged


class DeltaError(RuntimeError):
    """The two models cannot be compared (another architecture, missing weights)."""


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise DeltaError(f"{folder} has no *.safetensors weights (a full model folder is needed)")
    return files


class Weights:
    """Lazy read access to a model folder's safetensors tensors by name (sharded or not)."""

    def __init__(self, folder: str | Path) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        self._handles = [safe_open(str(f), framework="pt") for f in weight_files(self.folder)]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> Any:
        return self._where[name].get_tensor(name)


def tied_embeddings(folder: str | Path) -> bool:
    """The model's ``lm_head`` shares the input embedding (``tie_word_embeddings`` in its config)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))


def is_full_model(path: str | Path) -> bool:
    """A local folder with a ``config.json`` and safetensors weights (not a PEFT adapter)."""
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors")) and not (p / "adapter_config.json").exists()


def low_rank(delta: Any, rank: int, exact_below: int = 4096) -> tuple[Any, Any, float]:
    """(A [r, in], B [out, r], share of the delta's energy kept) of the best rank-``rank`` approximation; an exact SVD
    for small matrices, a randomized one (``torch.svd_lowrank``, 4 power iterations) for large ones."""
    import torch

    d = delta.float()
    total = float(d.pow(2).sum())
    r = min(rank, *d.shape)
    if min(d.shape) <= exact_below and max(d.shape) <= 4 * exact_below:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        u, s, vh = u[:, :r], s[:r], vh[:r]
    else:
        u, s, v = torch.svd_lowrank(d, q=min(r + 8, *d.shape), niter=4)
        u, s, vh = u[:, :r], s[:r], v[:, :r].T
    root = s.sqrt()
    kept = float(s.pow(2).sum()) / total if total > 0 else 1.0
    return (root[:, None] * vh).contiguous(), (u * root[None, :]).contiguous(), min(kept, 1.0)


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _linear_weights(base: Weights, tuned: Weights) -> Iterator[str]:
    for name in tuned.names():
        if name.endswith(".weight") and not FULL_COPY.search(_module(name)) and name in base:
            yield name


def extract_delta(base: str | Path, tuned: str | Path, out: str | Path, rank: int, *, dtype: str = "bfloat16",
                  source: str = "", kind: str = "", device: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the rank-``rank`` delta of full model ``tuned`` against ``base`` as a PEFT adapter folder ``out``
    (atomically: a temp folder renamed); returns the report also written to ``out/medadapt.json``.
    ``progress(done, total)`` after each of the tuned model's tensors."""
    import torch
    from safetensors.torch import save_file

    base_w, tuned_w = Weights(base), Weights(tuned)
    out = Path(out)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    store = getattr(torch, dtype)
    tensors: dict[str, Any] = {}
    energy: dict[str, float] = {}
    full: list[str] = []
    unrepresented: list[str] = []
    targets: set[str] = set()
    names = tuned_w.names()
    for done, name in enumerate(names):
        if progress:
            progress(done, len(names))
        t = tuned_w.get(name)
        if name not in base_w:
            unrepresented.append(f"{name}: not in the base model")
            continue
        b = base_w.get(name)
        if tuple(b.shape) != tuple(t.shape):
            raise DeltaError(f"{name}: shape {tuple(t.shape)} vs the base's {tuple(b.shape)} (another architecture?)")
        diff = t.to(device, torch.float32) - b.to(device, torch.float32)
        if float(diff.abs().max()) <= SAME:
            continue
        module, pname = name.rsplit(".", 1)
        if FULL_COPY.search(module):
            full.append(module)
            continue
        if pname != "weight" or diff.dim() != 2:
            unrepresented.append(f"{name}: changed {pname} (max |delta| {float(diff.abs().max()):.3g})")
            continue
        a, bmat, kept = low_rank(diff, rank)
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.to("cpu", store)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = bmat.to("cpu", store)
        energy[module] = round(kept, 6)
        targets.add(module.rsplit(".", 1)[-1])
    if progress:
        progress(len(names), len(names))
    for module in sorted(set(full)):  # whole copies of every parameter of that module, from the tuned model
        for name in tuned_w.names():
            if _module(name) == module:
                tensors[f"{PREFIX}{name}"] = tuned_w.get(name).to(store)
    embed = next((m for m in full if m.endswith("embed_tokens")), None)
    if embed and tied_embeddings(tuned) and "lm_head.weight" not in tuned_w:  # the output layer shares the changed
        tensors[f"{PREFIX}lm_head.weight"] = tuned_w.get(f"{embed}.weight").to(store).clone()  # embedding: copy it
        full.append("lm_head")
    if not tensors:
        raise DeltaError(f"{tuned} does not differ from {base}")
    if not targets:  # only whole copies changed: PEFT needs one LoRA target, so a zero pair on the first linear
        name = next(_linear_weights(base_w, tuned_w))
        out_f, in_f = tuned_w.get(name).shape
        tensors[f"{PREFIX}{_module(name)}.lora_A.weight"] = torch.zeros(rank, in_f, dtype=store)
        tensors[f"{PREFIX}{_module(name)}.lora_B.weight"] = torch.zeros(out_f, rank, dtype=store)
        targets.add(_module(name).rsplit(".", 1)[-1])
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
              "use_rslora": False, "bias": "none", "target_modules": sorted(targets),
              "modules_to_save": sorted(set(full)) or None, "base_model_name_or_path": str(base),
              "inference_mode": True, "fan_in_fan_out": False, "init_lora_weights": True}
    kept = list(energy.values())
    report = {"job": kind, "source": source or str(tuned), "base_model": str(base), "delta": {
        "rank": rank, "dtype": dtype, "layers": len(energy),
        "energy_kept_min": round(min(kept), 6) if kept else None,
        "energy_kept_mean": round(sum(kept) / len(kept), 6) if kept else None,
        "full_copies": sorted(set(full)), "unrepresented": unrepresented, "energy_kept": energy}}
    with write_dir_atomic(out) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (tmp / "medadapt.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if unrepresented:
        log.warning("delta of %s: not represented: %s", source or tuned, "; ".join(unrepresented[:5]))
    return report


def fidelity(base: str | Path, tuned: str | Path, adapter: str | Path, prompts: Sequence[str],
             dtype: str = "float32") -> dict[str, float]:
    """Base + delta adapter against the full model on ``prompts``: ``agree`` (share of positions whose argmax
    next token is the same), ``kl`` (mean KL(full || delta) per position, nats) and the full model's own shift from
    the base (``kl_base``), so the delta's error reads against the size of the fine-tune."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tuned))
    dt = getattr(torch, dtype)
    full = AutoModelForCausalLM.from_pretrained(str(tuned), dtype=dt).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(base), dtype=dt).eval()
    with_delta = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=dt),
                                           str(adapter)).eval()
    agree = n = 0
    kl = kl_base = 0.0
    with torch.inference_mode():
        for text in prompts:
            ids = tok(text, return_tensors="pt").input_ids
            p = torch.log_softmax(full(ids).logits.float()[0], -1)
            q = torch.log_softmax(with_delta(ids).logits.float()[0], -1)
            r = torch.log_softmax(plain(ids).logits.float()[0], -1)
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            n += p.shape[0]
            kl += float((p.exp() * (p - q)).sum(-1).sum())
            kl_base += float((p.exp() * (p - r)).sum(-1).sum())
    return {"agree": agree / n, "kl": kl / n, "kl_base": kl_base / n, "positions": n}
