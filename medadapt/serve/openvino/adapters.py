"""PEFT LoRA adapters as the inputs of the CPU engine's multi-LoRA graph (:mod:`medadapt.serve.openvino.graph`); engine venv.

Every loaded adapter owns a block of columns of width ``r`` (its largest rank) in every layer's A inputs and rows in
its B inputs, with its LoRA scaling folded into B; sites it does not cover stay zero there. Column 0 is a zero
block, so the graph always has R >= 1 even with no adapter. What a PEFT adapter may hold besides LoRA on the seven
projections:

- LoRA on ``lm_head`` or a whole ``lm_head`` / ``embed_tokens`` copy (``modules_to_save``: the delta of a published
  model whose continual pretraining trained them): the change is given to the graph's head / embedding LoRA inputs,
  a whole copy as its truncated SVD (randomized, rank ``full_rank``; the energy kept is reported per adapter);
- whole norm copies: their difference from the base norm weights, added per row (exact);
- anything else (DoRA, biases, other modules) is refused with the reason, as the in-process engine does.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medadapt.serve.openvino.graph import A_BLOCKS, LORA_INPUTS, SITES, extra_input_shapes, lora_input_shapes

PREFIX = "base_model.model."
LAYER_SITE = re.compile(r"^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)$")
NORM = re.compile(r"^model\.(?:layers\.(\d+)\.(input_layernorm|post_attention_layernorm)|norm)$")
FULL_RANK = 64  # rank of the SVD standing for a whole embedding / lm_head copy


class AdapterError(ValueError):
    """The adapter folder cannot be served by the CPU engine; the message says why."""


@dataclass
class Adapter:
    """One adapter's factors, per graph site: ``sites[(layer, proj)] = (A [in, r], B [r, out])`` with the scaling in
    B; ``emb``/``head``: (A, B) for the embedding ([V, r], [r, hidden]) and head ([hidden, r], [r, V]);
    ``norms[j]``: a delta on norm ``j`` (``2 * layer`` + 0/1, or ``2 * layers`` for the final one)."""

    name: str
    path: str
    rank: int = 0  # its column block in the layers' inputs
    head_rank: int = 0  # its column block in the embedding / head inputs
    sites: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    emb: tuple[np.ndarray, np.ndarray] | None = None
    head: tuple[np.ndarray, np.ndarray] | None = None
    norms: dict[int, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. the energy an SVD of a whole copy kept


def _tensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    file = path / "adapter_model.safetensors"
    if file.is_file():
        with safe_open(str(file), framework="pt") as h:
            return {k: h.get_tensor(k).float() for k in h.keys()}
    if (path / "adapter_model.bin").is_file():
        import torch

        return {k: v.float() for k, v in torch.load(path / "adapter_model.bin", map_location="cpu").items()}
    raise AdapterError(f"no adapter_model.safetensors or .bin in {path}")


def _low_rank(delta, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(A [n, r], B [r, m], energy kept) of a randomized truncated SVD of ``delta`` [n, m]."""
    import torch

    total = float(delta.pow(2).sum())
    if total == 0.0:
        return np.zeros((delta.shape[0], 1), np.float32), np.zeros((1, delta.shape[1]), np.float32), 1.0
    torch.manual_seed(0)
    u, s, v = torch.svd_lowrank(delta, q=min(rank, *delta.shape), niter=4)
    kept = float(s.pow(2).sum()) / total
    root = s.sqrt()
    return (u * root).numpy(), (root[:, None] * v.t()).numpy(), kept


class SVDCache:
    """The truncated SVDs of an adapter's whole-module copies, kept on disk (``<dir>/<key>.npz``) so a restarted
    engine does not redo them; the key changes when the adapter's weights file changes."""

    def __init__(self, folder: str | Path | None, adapter: Path, full_rank: int) -> None:
        self.file = None
        if folder:
            import hashlib

            weights = next((adapter / f for f in ("adapter_model.safetensors", "adapter_model.bin")
                            if (adapter / f).is_file()), None)
            st = weights.stat() if weights else None
            key = f"{adapter.resolve()}|{st.st_mtime_ns if st else 0}|{st.st_size if st else 0}|{full_rank}"
            self.file = Path(folder) / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"

    def get(self, module: str, compute):
        """(a, b, kept) of ``module``: from the file when there, else ``compute()`` (then stored)."""
        if self.file is not None and self.file.is_file():
            with np.load(self.file) as z:
                if f"{module}.a" in z:
                    return z[f"{module}.a"], z[f"{module}.b"], float(z[f"{module}.kept"])
        a, b, kept = compute()
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            old = dict(np.load(self.file)) if self.file.is_file() else {}
            tmp = self.file.with_suffix(".tmp.npz")
            np.savez(tmp, **old, **{f"{module}.a": a, f"{module}.b": b, f"{module}.kept": np.float64(kept)})
            os.replace(tmp, self.file)
        return a, b, kept


def read_adapter(name: str, path: str | Path, base, shape: dict[str, Any], full_rank: int = FULL_RANK,
                 cache_dir: str | Path | None = None) -> Adapter:
    """Read the PEFT adapter folder ``path`` for a graph of ``shape``; ``base(name)`` gives a base tensor (float32
    torch) for whole-module copies, whose SVDs are kept in ``cache_dir``. Raises :class:`AdapterError` with the
    reason when it cannot be served."""
    path = Path(path)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise AdapterError(f"adapter {name!r}: no adapter_config.json in {path}")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AdapterError(f"adapter {name!r}: unreadable adapter_config.json: {e}") from e
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"adapter {name!r}: peft_type {config.get('peft_type')!r} is not LORA")
    for flag in ("use_dora", "fan_in_fan_out", "lora_bias"):
        if config.get(flag):
            raise AdapterError(f"adapter {name!r}: {flag}=true is not supported by the CPU engine")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"adapter {name!r}: bias={config.get('bias')!r} is not supported by the CPU engine")
    try:
        state = _tensors(path)
    except AdapterError:
        raise
    except Exception as e:  # a truncated or corrupt weights file
        raise AdapterError(f"adapter {name!r}: corrupt weights file in {path}: {e}") from e
    alpha, r_default = float(config.get("lora_alpha", 8)), int(config.get("r", 8))
    alphas = config.get("alpha_pattern") or {}  # (rank_pattern only sizes the tensors, read as they are)
    pairs: dict[str, dict[str, Any]] = {}
    full: dict[str, Any] = {}
    for key, t in state.items():
        if not key.startswith(PREFIX):
            raise AdapterError(f"adapter {name!r}: unexpected key {key!r}")
        key = key[len(PREFIX):]
        m = re.match(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$", key)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = t
        elif ".lora_" in key:
            raise AdapterError(f"adapter {name!r}: unsupported LoRA tensor {key!r} (embedding LoRA, DoRA, ...)")
        else:
            module = re.sub(r"\.modules_to_save\.[^.]+", "", key.rsplit(".", 1)[0])
            full[module] = t
    out = Adapter(name, str(path))
    svds = SVDCache(cache_dir, path, full_rank)
    head_factors: list[tuple[Any, Any]] = []
    for module, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise AdapterError(f"adapter {name!r}: {module} lacks lora_A or lora_B")
        a, b = ab["lora_A"], ab["lora_B"]  # [r, in], [out, r]
        r = a.shape[0]
        key = next((k for k in alphas if module == k or module.endswith("." + k) or re.fullmatch(k, module)), None)
        al = float(alphas[key]) if key else alpha
        scaling = al / math.sqrt(r) if config.get("use_rslora") else al / r
        site = LAYER_SITE.match(module)
        if site and site.group(2) in SITES and int(site.group(1)) < shape["layers"]:
            out.sites[(int(site.group(1)), site.group(2))] = (a.t().numpy(), (b * scaling).t().numpy())
            out.rank = max(out.rank, r)
        elif module == "lm_head":
            head_factors.append((a.t(), (b * scaling).t()))
        else:
            raise AdapterError(f"adapter {name!r}: LoRA on {module!r} is not supported by the CPU engine")
    for module, t in full.items():
        norm = NORM.match(module)
        if norm:
            idx = 2 * shape["layers"] if norm.group(1) is None else \
                2 * int(norm.group(1)) + (norm.group(2) == "post_attention_layernorm")
            out.norms[idx] = (t - base(module + ".weight")).numpy()
        elif module in ("lm_head", "model.embed_tokens"):
            # a tied model's head is its embedding: a separate lm_head copy differs from that
            target = "lm_head.weight" if module == "lm_head" and not shape["tied"] else "model.embed_tokens.weight"
            # delta [V, hidden] ~ a [V, r] @ b [r, hidden]
            a, b, kept = svds.get(module, lambda t=t, target=target: _low_rank(t - base(target), full_rank))
            if module == "lm_head" or (shape["tied"] and "lm_head" not in full):  # a tied head follows its embedding
                head_factors.append((b.T, a.T))  # logits delta = last @ b^T @ a^T
            if module == "model.embed_tokens":
                out.emb = (a, b)
            out.notes.append(f"whole {module} copy served as its rank-{a.shape[1]} SVD ({kept:.1%} of its change)")
        else:
            raise AdapterError(f"adapter {name!r}: a whole copy of {module!r} (modules_to_save) is not supported by "
                               "the CPU engine")
    if head_factors:
        out.head = (np.concatenate([np.asarray(a, np.float32) for a, _ in head_factors], 1),
                    np.concatenate([np.asarray(b, np.float32) for _, b in head_factors], 0))
    out.head_rank = max(out.head[0].shape[1] if out.head else 0, out.emb[0].shape[1] if out.emb else 0)
    if not (out.sites or out.emb or out.head or out.norms):
        raise AdapterError(f"adapter {name!r}: no weights in {path}")
    return out


class AdapterInputs:
    """The graph inputs for a set of loaded adapters: per layer A/B concatenations, head/embedding factors, and each
    adapter's column block (for the row masks) and norm deltas."""

    def __init__(self, shape: dict[str, Any], adapters: list[Adapter]) -> None:
        self.shape, self.names = shape, [a.name for a in adapters]
        self.blocks: dict[str, tuple[int, int]] = {}
        self.head_blocks: dict[str, tuple[int, int]] = {}
        col = hcol = 1  # column 0: the zero block (the graph always has a rank >= 1)
        for a in adapters:
            self.blocks[a.name] = (col, col + a.rank)
            self.head_blocks[a.name] = (hcol, hcol + a.head_rank)
            col, hcol = col + a.rank, hcol + a.head_rank
        self.rank, self.head_rank = col, hcol
        self.arrays: dict[str, np.ndarray] = {}
        for layer in range(shape["layers"]):
            shapes = lora_input_shapes(shape, self.rank)
            arrays = {n: np.zeros(shapes[n], np.float32) for n in LORA_INPUTS}
            for a in adapters:
                lo, _ = self.blocks[a.name]
                for proj, (a_name, block, b_name) in SITES.items():
                    f = a.sites.get((layer, proj))
                    if f is None:
                        continue
                    fa, fb = f
                    r = fa.shape[1]
                    start = block * self.rank + lo
                    arrays[a_name][:, start:start + r] = fa
                    arrays[b_name][lo:lo + r] = fb
            for n in LORA_INPUTS:
                self.arrays[f"{n}_{layer}"] = arrays[n]
        extra = extra_input_shapes(shape, self.head_rank)
        for key in ("emb", "head"):
            fa_name, fb_name = f"a_{key}", f"b_{key}"
            self.arrays[fa_name] = np.zeros(extra[fa_name], np.float32)
            self.arrays[fb_name] = np.zeros(extra[fb_name], np.float32)
            for a in adapters:
                f = getattr(a, key)
                if f is None:
                    continue
                lo, _ = self.head_blocks[a.name]
                r = f[0].shape[1]
                self.arrays[fa_name][:, lo:lo + r] = f[0]
                self.arrays[fb_name][lo:lo + r] = f[1]
        self.norms = {a.name: a.norms for a in adapters if a.norms}
        assert A_BLOCKS  # the A inputs' block counts are the graph's

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def row_mask(self, names: list[str], head: bool = False) -> np.ndarray:
        """``[B, R]``: 1 on each row's adapter's columns (a base row: all 0); ``head``: the embedding/head columns."""
        blocks = self.head_blocks if head else self.blocks
        mask = np.zeros((len(names), self.head_rank if head else self.rank), np.float32)
        for i, n in enumerate(names):
            if n in blocks:
                lo, hi = blocks[n]
                mask[i, lo:hi] = 1.0
        return mask

    def norm_delta(self, names: list[str]) -> np.ndarray:
        """``[B, 2 * layers + 1, hidden]``: each row's adapter's norm-weight deltas (zeros for most)."""
        out = np.zeros((len(names), 2 * self.shape["layers"] + 1, self.shape["hidden"]), np.float32)
        for i, n in enumerate(names):
            for j, d in self.norms.get(n, {}).items():
                out[i, j] = d
        return out
