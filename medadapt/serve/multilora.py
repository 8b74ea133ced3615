"""Gathered multi-LoRA: every row of one batch runs through its own LoRA adapter (or none) in one pass.

PEFT's mixed-adapter batches (``adapter_names=[...]``) loop over the adapters inside every LoRA layer, slicing the
batch per adapter. Here each wrapped ``nn.Linear`` keeps all adapters' A matrices side by side (``A_cat``:
``[in, R]``, R = sum of ranks) and their B matrices stacked (``B_cat``: ``[R, out]``). One forward is
``y = base(x) + ((x @ A_cat) * row_mask) @ B_cat``: two matmuls whatever the adapter mix (the S-LoRA/Punica idea,
with a mask instead of a gather because a handful of adapters times rank 16 is cheaper to compute than to gather on
CPU). The mask row of a sample holds its adapter's LoRA scaling on that adapter's columns and 0 elsewhere, so base
rows get exactly nothing added. Scaling sits in the mask, not in B, so a power-of-two ``alpha/r`` gives the same
rounding as PEFT. ``modules_to_save`` (full copies of e.g. ``lm_head``) are switched per row by :class:`RowSwitch`.

Decode steps have only a few rows; there every wrapped layer (the engine wraps all linears, ``lm_head`` included)
computes ``W @ x^T`` instead of ``x @ W^T``: MKL takes a faster path for that shape when the weights stream from RAM
(see docs/PERFORMANCE.md, "Compare latency").

Adapters are read from a PEFT adapter folder with PEFT's own loaders (:func:`read_adapter`); the base model's
weights are never copied.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medadapt.serve.api import AdapterLoadError

PREFIX = "base_model.model."


@dataclass
class LoraWeights:
    """One adapter read from disk: per module path, (A [r, in], B [out, r], scaling); plus full module copies."""

    name: str
    lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    full: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # modules_to_save: path -> state dict


def read_adapter(name: str, path: str | Path) -> LoraWeights:
    """Read a PEFT LoRA adapter folder with PEFT's loaders (``LoraConfig.from_pretrained``, ``load_peft_weights``);
    raise :class:`AdapterLoadError` with a clear reason when it is unusable."""
    from peft import LoraConfig
    from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, load_peft_weights
    from peft.utils.other import get_pattern_key

    path = Path(path)
    if not (path / CONFIG_NAME).is_file():  # checked here: PEFT would look the folder name up on the Hub
        raise AdapterLoadError(f"adapter {name!r}: no {CONFIG_NAME} in {path}")
    try:
        config = LoraConfig.from_pretrained(str(path))  # PeftConfig's loader; a config without peft_type is LoRA
    except (OSError, ValueError, TypeError, KeyError) as e:  # bad JSON is a ValueError
        raise AdapterLoadError(f"adapter {name!r}: unreadable {CONFIG_NAME} in {path}: {e}") from e
    if not isinstance(config, LoraConfig):
        raise AdapterLoadError(f"adapter {name!r}: peft_type {str(config.peft_type)!r} is not LORA")
    for flag in ("use_dora", "fan_in_fan_out", "lora_bias"):
        if getattr(config, flag, False):
            raise AdapterLoadError(f"adapter {name!r}: {flag}=true is not supported by the gathered backend")
    if config.bias != "none":
        raise AdapterLoadError(f"adapter {name!r}: bias={config.bias!r} is not supported")
    if not any((path / f).is_file() for f in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)):  # else PEFT asks the Hub
        raise AdapterLoadError(f"adapter {name!r}: no {SAFETENSORS_WEIGHTS_NAME} or .bin in {path}")
    try:
        state = load_peft_weights(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise AdapterLoadError(f"adapter {name!r}: corrupt weights file in {path}: {e}") from e
    out = LoraWeights(name)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if not key.startswith(PREFIX):
            raise AdapterLoadError(f"adapter {name!r}: unexpected key {key!r}")
        key = key[len(PREFIX):]
        m = re.match(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$", key)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = tensor
        elif ".lora_" in key:
            raise AdapterLoadError(f"adapter {name!r}: unsupported LoRA tensor {key!r} (embedding LoRA, DoRA, ...)")
        else:
            module, _, pname = key.rpartition(".")
            out.full.setdefault(module, {})[pname] = tensor
    for module, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise AdapterLoadError(f"adapter {name!r}: {module} lacks lora_A or lora_B")
        r = ab["lora_A"].shape[0]
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
        scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        out.lora[module] = (ab["lora_A"], ab["lora_B"], float(scaling))
    if not out.lora and not out.full:
        raise AdapterLoadError(f"adapter {name!r}: no weights in {path}")
    return out


class LoraRouter:
    """Which adapter each row of the current forward uses; hands every layer its cached row mask."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self._masks: dict[tuple, torch.Tensor | None] = {}
        self._index: dict[str, torch.Tensor | None] = {}

    def set_rows(self, rows: list[str]) -> None:
        if rows != self.rows:
            self.rows = list(rows)
            self._masks.clear()
            self._index.clear()

    def mask(self, layout: tuple, like: torch.Tensor) -> torch.Tensor | None:
        """``[B, R]`` mask for a layer with columns ``layout`` = ((name, rank, scaling), ...).

        None when no row of the batch uses any adapter of that layer."""
        if not layout:
            return None
        if layout not in self._masks:
            m = torch.zeros(len(self.rows), sum(r for _, r, _ in layout), dtype=like.dtype, device=like.device)
            col = 0
            for name, r, scaling in layout:
                for i, row in enumerate(self.rows):
                    if row == name:
                        m[i, col:col + r] = scaling
                col += r
            self._masks[layout] = m if bool(m.any()) else None
        return self._masks[layout]

    def row_index(self, name: str, device: torch.device) -> torch.Tensor | None:
        if name not in self._index:
            idx = [i for i, row in enumerate(self.rows) if row == name]
            self._index[name] = torch.tensor(idx, device=device) if idx else None
        return self._index[name]


SKINNY_ROWS = 6  # up to this many rows, W @ x^T beats x @ W^T with MKL on CPU when weights stream from RAM


def use_skinny(x: torch.Tensor) -> bool:
    rows = x.numel() // x.shape[-1]
    return 2 <= rows <= SKINNY_ROWS and x.device.type == "cpu"


class MultiLoraLinear(nn.Module):
    """``nn.Linear`` plus every loaded adapter's LoRA delta, selected per row by the router's mask."""

    def __init__(self, base_layer: nn.Linear, router: LoraRouter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.router = router
        self.layout: tuple = ()
        self.A_cat: torch.Tensor | None = None  # [in, R]: the adapters' lora_A^T side by side
        self.B_cat: torch.Tensor | None = None  # [R, out]: their lora_B^T stacked

    def set_adapter(self, name: str, a: torch.Tensor | None, b: torch.Tensor | None, scaling: float = 1.0) -> None:
        """Add, replace (same name) or, with ``a=None``, remove one adapter's rank block."""
        w = self.base_layer.weight
        keep_a, keep_b, layout, col = [], [], [], 0
        for n, r, s in self.layout:
            if n != name:
                keep_a.append(self.A_cat[:, col:col + r])
                keep_b.append(self.B_cat[col:col + r])
                layout.append((n, r, s))
            col += r
        if a is not None:
            if a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] or a.shape[0] != b.shape[1]:
                raise AdapterLoadError(
                    f"adapter {name!r}: LoRA shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit a linear layer "
                    f"{tuple(w.shape)} (adapter trained on another base model?)"
                )
            keep_a.append(a.to(w.dtype).t())
            keep_b.append(b.to(w.dtype).t())
            layout.append((name, a.shape[0], scaling))
        self.layout = tuple(layout)
        self.A_cat = torch.cat(keep_a, 1).contiguous().to(w.device) if keep_a else None
        self.B_cat = torch.cat(keep_b, 0).contiguous().to(w.device) if keep_b else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.router.mask(self.layout, x) if self.A_cat is not None else None
        if use_skinny(x):
            x2 = x.reshape(-1, x.shape[-1])
            y = torch.mm(self.base_layer.weight, x2.t()).t()  # W x^T: MKL's fast path for a few rows
            if self.base_layer.bias is not None:
                y = y + self.base_layer.bias
            if mask is None:
                return y.reshape(*x.shape[:-1], -1)
            y = y.contiguous().addmm_(torch.mm(x2, self.A_cat).mul_(mask), self.B_cat)
            return y.view(*x.shape[:-1], -1)
        y = self.base_layer(x)
        if mask is None:
            return y
        h = torch.matmul(x, self.A_cat)  # [B, T, R]
        h = h * (mask.unsqueeze(1) if h.dim() == 3 else mask)
        return torch.matmul(h, self.B_cat).add_(y)


class RowSwitch(nn.Module):
    """A module with per-adapter full replacements (PEFT ``modules_to_save``): rows of an adapter use its copy."""

    def __init__(self, base_module: nn.Module, router: LoraRouter) -> None:
        super().__init__()
        self.base_module = base_module
        self.router = router
        self.variants = nn.ModuleDict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_module(x)
        for name, module in self.variants.items():
            idx = self.router.row_index(name, x.device)
            if idx is not None:
                y = y.index_copy(0, idx, module(x.index_select(0, idx)).to(y.dtype))
        return y


class MultiLora:
    """Installs gathered LoRA layers into a HF model and keeps the adapters loaded under names."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.router = LoraRouter()
        self.names: set[str] = set()

    def _get(self, path: str) -> tuple[nn.Module, str, nn.Module]:
        parent_path, _, child = path.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            return parent, child, getattr(parent, child)
        except AttributeError as e:
            raise AdapterLoadError(f"the base model has no module {path!r} (adapter for another model?)") from e

    def _lora_layer(self, path: str) -> MultiLoraLinear:
        parent, child, module = self._get(path)
        inner = module.base_module if isinstance(module, RowSwitch) else module
        if isinstance(inner, MultiLoraLinear):
            return inner
        if type(inner) is not nn.Linear:
            raise AdapterLoadError(f"module {path!r} is a {type(inner).__name__}, not a Linear layer")
        wrapped = MultiLoraLinear(inner, self.router)
        if inner is module:
            setattr(parent, child, wrapped)
        else:
            module.base_module = wrapped
        return wrapped

    def _switch(self, path: str) -> RowSwitch:
        parent, child, module = self._get(path)
        if isinstance(module, RowSwitch):
            return module
        wrapped = RowSwitch(module, self.router)
        setattr(parent, child, wrapped)
        return wrapped

    def wrap_all_linear(self) -> int:
        """Wrap every ``nn.Linear`` (so all of them take the skinny decode path); returns how many."""
        paths = [name for name, m in self.model.named_modules() if type(m) is nn.Linear]
        for path in paths:
            self._lora_layer(path)
        return len(paths)

    def add(self, weights: LoraWeights) -> None:
        """Load (or replace) adapter ``weights.name``; on error the model is left without that adapter."""
        self.remove(weights.name)
        try:
            for path, (a, b, scaling) in weights.lora.items():
                self._lora_layer(path).set_adapter(weights.name, a, b, scaling)
            for path, state in weights.full.items():
                switch = self._switch(path)
                plain = switch.base_module
                clone = copy.deepcopy(plain.base_layer if isinstance(plain, MultiLoraLinear) else plain)
                try:
                    clone.load_state_dict(state, strict=True)
                except RuntimeError as e:
                    raise AdapterLoadError(f"adapter {weights.name!r}: {path} does not fit: {e}") from e
                switch.variants[weights.name] = clone
        except Exception:
            self.remove(weights.name)
            raise
        self.names.add(weights.name)
        self.router.set_rows([])

    def remove(self, name: str) -> None:
        for module in self.model.modules():
            if isinstance(module, MultiLoraLinear) and any(n == name for n, _, _ in module.layout):
                module.set_adapter(name, None, None)
            elif isinstance(module, RowSwitch) and name in module.variants:
                del module.variants[name]
        self.names.discard(name)
        self.router.set_rows([])
