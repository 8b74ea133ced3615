"""A Llama/Qwen2 decoder as an OpenVINO model whose every batch row has its own LoRA adapter: the CPU engine's graph.

OpenVINO GenAI and llama.cpp's server apply one adapter set to a whole batch (rows with different adapters run in
separate passes, each reading all the weights). Decoding on a CPU is bound by reading the weights, so this graph
carries the gathered multi-LoRA of :mod:`medadapt.serve.multilora` (the S-LoRA/Punica idea) inside: base weights are
constants (8- or 4-bit compressed by NNCF), the loaded adapters' factors are *inputs*, and one forward serves base,
RAG, SFT and MSFT rows at once. Adding an adapter at run time is a new set of input tensors, never a recompile.

Per layer ``l`` the inputs are the adapters' A factors side by side per shared input (``a_qkv`` ``[hidden, 3R]``,
``a_o``, ``a_gu`` ``[hidden, 2R]``, ``a_down``) and their B factors per projection (``b_q`` ``[R, out]`` ...), R the
sum of the loaded adapters' ranks, LoRA scaling folded into B; ``lora_mask`` ``[B, R]`` (1 on a row's adapter's
columns) picks each row's block: ``y = base(x) + ((x @ A) * mask) @ B``. The embedding and ``lm_head`` take the same
form with their own columns (``head_mask``), and ``norm_delta`` adds a row's norm-weight changes. The KV cache lives outside the graph (the
engine's :class:`medadapt.serve.openvino.runtime.KVCache`): ``past_k_l``/``past_v_l`` ``[B, kv_heads, S, head_dim]`` come in,
``new_k_l``/``new_v_l`` (this call's positions only) go out, and ``mask`` ``[B, 1, T, S + T]`` (additive) says which
slots each row may attend to, so rows of different lengths share a call. ``logits`` are the last position's.

``export(hf_dir, out_dir, precision)`` (run in the engine's venv: torch, openvino, nncf) traces :class:`Decoder`
from a Hugging Face folder (bf16/fp32 safetensors, no transformers model needed), saves that IR, compresses its
weights with NNCF in a second stage (an interrupted conversion resumes there) and writes ``model.xml``/``.bin`` plus
``graph.json`` (shapes the runtime needs). Only plain RoPE (``rope_type`` default) is supported.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "int8", "int4")
LORA_INPUTS = ("a_qkv", "b_q", "b_k", "b_v", "a_o", "b_o", "a_gu", "b_gate", "b_up", "a_down", "b_down")
SITES = {  # projection -> (A input it shares, its column block in that A, B input)
    "q_proj": ("a_qkv", 0, "b_q"), "k_proj": ("a_qkv", 1, "b_k"), "v_proj": ("a_qkv", 2, "b_v"),
    "o_proj": ("a_o", 0, "b_o"), "gate_proj": ("a_gu", 0, "b_gate"), "up_proj": ("a_gu", 1, "b_up"),
    "down_proj": ("a_down", 0, "b_down"),
}
A_BLOCKS = {"a_qkv": 3, "a_o": 1, "a_gu": 2, "a_down": 1}
ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


class GraphError(ValueError):
    """The model folder cannot be turned into this graph (architecture, RoPE type, missing weights)."""


def read_config(hf_dir: str | Path) -> dict[str, Any]:
    """The shapes the graph and the runtime need, from a HF ``config.json``."""
    cfg = json.loads((Path(hf_dir) / "config.json").read_text(encoding="utf-8"))
    arch = (cfg.get("architectures") or [""])[0]
    if arch not in ARCHITECTURES:
        raise GraphError(f"architecture {arch!r} is not supported by the CPU engine (supported: {ARCHITECTURES})")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise GraphError(f"RoPE type {rope.get('rope_type')!r} is not supported by the CPU engine")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return {
        "architecture": arch, "hidden": cfg["hidden_size"], "intermediate": cfg["intermediate_size"],
        "layers": cfg["num_hidden_layers"], "heads": heads, "kv_heads": cfg.get("num_key_value_heads", heads),
        "head_dim": head_dim, "vocab": cfg["vocab_size"], "eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        "tied": bool(cfg.get("tie_word_embeddings", False)),
        "attention_bias": arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
        "max_position": int(cfg.get("max_position_embeddings", 4096)),
    }


def site_shapes(shape: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each LoRA site of one layer."""
    h, q, kv, m = shape["hidden"], shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"], \
        shape["intermediate"]
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, m),
            "up_proj": (h, m), "down_proj": (m, h)}


def lora_input_shapes(shape: dict[str, Any], rank: int) -> dict[str, tuple[int, int]]:
    """Each per-layer LoRA input's shape for a total rank ``rank``."""
    sites = site_shapes(shape)
    out: dict[str, tuple[int, int]] = {}
    for site, (a_name, _, b_name) in SITES.items():
        fan_in, fan_out = sites[site]
        out[a_name] = (fan_in, A_BLOCKS[a_name] * rank)
        out[b_name] = (rank, fan_out)
    return {k: out[k] for k in LORA_INPUTS}


EXTRA_INPUTS = ("head_mask", "a_emb", "b_emb", "a_head", "b_head", "norm_delta")


def extra_input_shapes(shape: dict[str, Any], rank: int, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """The whole-model adapter inputs: embedding and ``lm_head`` LoRA of total rank ``rank`` (their own columns and
    row mask ``head_mask``, so adapters without them cost nothing there; a whole embedding or head copy becomes a
    low-rank delta), and each row's norm-weight deltas ``[B, 2 * layers + 1, hidden]`` (input and post-attention
    norms per layer, then the final norm)."""
    h, v = shape["hidden"], shape["vocab"]
    return {"head_mask": (batch, rank), "a_emb": (v, rank), "b_emb": (rank, h), "a_head": (h, rank),
            "b_head": (rank, v), "norm_delta": (batch, 2 * shape["layers"] + 1, h)}


def input_names(layers: int) -> list[str]:
    """The graph's inputs in order."""
    names = ["input_ids", "positions", "mask", "lora_mask", *EXTRA_INPUTS]
    names += [f"past_{kv}_{i}" for i in range(layers) for kv in ("k", "v")]
    names += [f"{n}_{i}" for i in range(layers) for n in LORA_INPUTS]
    return names


def output_names(layers: int) -> list[str]:
    return ["logits"] + [f"new_{kv}_{i}" for i in range(layers) for kv in ("k", "v")]


def _decoder_class():
    import torch
    from torch import nn

    class Decoder(nn.Module):
        """The traced module: a Llama/Qwen2 decoder with external KV cache and per-row LoRA inputs."""

        def __init__(self, shape: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
            super().__init__()
            self.s = shape
            self.w = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v, requires_grad=False)
                                       for k, v in weights.items()})
            d = shape["head_dim"]
            inv = 1.0 / (shape["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
            self.register_buffer("inv_freq", inv, persistent=False)

        def p(self, name: str) -> torch.Tensor:
            return self.w[name.replace(".", "__")]

        def norm(self, x: torch.Tensor, name: str, delta: torch.Tensor) -> torch.Tensor:
            var = x.pow(2).mean(-1, keepdim=True)
            return (self.p(name).float() + delta) * (x * torch.rsqrt(var + self.s["eps"]))

        def linear(self, x: torch.Tensor, name: str, bias: bool = False) -> torch.Tensor:
            y = torch.matmul(x, self.p(name + ".weight").float().t())
            return y + self.p(name + ".bias").float() if bias else y

        @staticmethod
        def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            half = x.shape[-1] // 2
            rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
            return x * cos + rot * sin

        def forward(self, input_ids, positions, mask, lora_mask, head_mask, a_emb, b_emb, a_head, b_head, norm_delta,
                    *rest):
            s = self.s
            n_layers, h, kvh, d = s["layers"], s["heads"], s["kv_heads"], s["head_dim"]
            past, lora = rest[:2 * n_layers], rest[2 * n_layers:]
            b, t = input_ids.shape[0], input_ids.shape[1]
            x = torch.nn.functional.embedding(input_ids, self.p("model.embed_tokens.weight").float())
            x = x + torch.matmul(torch.nn.functional.embedding(input_ids, a_emb) * head_mask[:, None, :], b_emb)
            nd = norm_delta[:, :, None, :]  # [B, 2L+1, 1, hidden]
            freqs = positions.float()[..., None] * self.inv_freq  # [B, T, D/2]
            emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # [B, T, 1, D]
            cos, sin = emb.cos(), emb.sin()
            m1 = lora_mask[:, None, :]
            m2, m3 = torch.cat((m1, m1), -1), torch.cat((m1, m1, m1), -1)
            new = []
            for i in range(n_layers):
                a_qkv, b_q, b_k, b_v, a_o, b_o, a_gu, b_gate, b_up, a_down, b_down = \
                    lora[i * len(LORA_INPUTS):(i + 1) * len(LORA_INPUTS)]
                pre = f"model.layers.{i}."
                y = self.norm(x, pre + "input_layernorm.weight", nd[:, 2 * i])
                lq, lk, lv = torch.chunk(torch.matmul(y, a_qkv) * m3, 3, dim=-1)
                bias = s["attention_bias"]
                q = self.linear(y, pre + "self_attn.q_proj", bias) + torch.matmul(lq, b_q)
                k = self.linear(y, pre + "self_attn.k_proj", bias) + torch.matmul(lk, b_k)
                v = self.linear(y, pre + "self_attn.v_proj", bias) + torch.matmul(lv, b_v)
                q = self.rotate(q.view(b, t, h, d), cos, sin).transpose(1, 2)  # [B, H, T, D]
                k = self.rotate(k.view(b, t, kvh, d), cos, sin).transpose(1, 2)  # [B, KV, T, D]
                v = v.view(b, t, kvh, d).transpose(1, 2)
                new += [k, v]
                keys = torch.cat((past[2 * i], k), dim=2)  # [B, KV, S+T, D]
                values = torch.cat((past[2 * i + 1], v), dim=2)
                qg = q.reshape(b, kvh, h // kvh * t, d)  # heads of one KV group next to each other
                scores = torch.matmul(qg, keys.transpose(-1, -2)) * (1.0 / math.sqrt(d))
                scores = scores.view(b, kvh, h // kvh, t, -1) + mask[:, :, None]
                attn = torch.matmul(torch.softmax(scores, dim=-1).view(b, kvh, h // kvh * t, -1), values)
                attn = attn.view(b, h, t, d).transpose(1, 2).reshape(b, t, h * d)
                lo = torch.matmul(torch.matmul(attn, a_o) * m1, b_o)
                x = x + self.linear(attn, pre + "self_attn.o_proj") + lo
                y = self.norm(x, pre + "post_attention_layernorm.weight", nd[:, 2 * i + 1])
                lg, lu = torch.chunk(torch.matmul(y, a_gu) * m2, 2, dim=-1)
                gate = self.linear(y, pre + "mlp.gate_proj") + torch.matmul(lg, b_gate)
                up = self.linear(y, pre + "mlp.up_proj") + torch.matmul(lu, b_up)
                z = torch.nn.functional.silu(gate) * up
                x = x + self.linear(z, pre + "mlp.down_proj") + torch.matmul(torch.matmul(z, a_down) * m1, b_down)
            last = self.norm(x[:, -1], "model.norm.weight", norm_delta[:, 2 * n_layers])
            head = "model.embed_tokens.weight" if s["tied"] else "lm_head.weight"
            logits = torch.matmul(last, self.p(head).float().t())
            logits = logits + torch.matmul(torch.matmul(last, a_head) * head_mask, b_head)
            return (logits, *new)

    return Decoder


def load_weights(hf_dir: str | Path, dtype=None) -> dict[str, Any]:
    """The model folder's tensors (all safetensors shards), in ``dtype`` or as stored (None)."""
    from safetensors import safe_open

    files = sorted(Path(hf_dir).glob("*.safetensors"))
    if not files:
        raise GraphError(f"{hf_dir} has no *.safetensors weights")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                t = h.get_tensor(k)
                out[k] = t if dtype is None else t.to(dtype)
    return out


def example_inputs(shape: dict[str, Any], batch: int = 2, t: int = 3, past: int = 4, rank: int = 2) -> tuple:
    import torch

    layers = shape["layers"]
    kv = (batch, shape["kv_heads"], past, shape["head_dim"])
    lora = []
    for _ in range(layers):
        for name, dims in lora_input_shapes(shape, rank).items():
            lora.append(torch.zeros(dims))
    extra = [torch.zeros(dims) for dims in extra_input_shapes(shape, rank, batch).values()]
    return (torch.zeros(batch, t, dtype=torch.long), torch.arange(t).repeat(batch, 1),
            torch.zeros(batch, 1, t, past + t), torch.zeros(batch, rank), *extra,
            *[torch.zeros(kv) for _ in range(2 * layers)], *lora)


def export(hf_dir: str | Path, out_dir: str | Path, precision: str = "int8", group_size: int = 128,
           log=print) -> Path:
    """The graph of the model at ``hf_dir`` at ``precision`` in ``out_dir`` (the caller renames it into place), in
    two stages that each leave their result in ``out_dir``, so an interrupted conversion resumes at the stage it
    stopped in: the trace (``traced.xml``: the uncompressed IR, weights in the checkpoint's dtype), then the weight
    compression of that IR (``model.xml``; fp32: the trace itself)."""
    import openvino as ov

    if precision not in PRECISIONS:
        raise GraphError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    shape = read_config(hf_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    traced = out_dir / "traced.xml"
    if (out_dir / "traced.done").is_file():
        log("the trace is there from an earlier attempt")
    else:
        _trace(hf_dir, shape, traced, precision, log)
        (out_dir / "traced.done").write_text("ok")
    if precision == "fp32":
        os.replace(traced, out_dir / "model.xml")
        os.replace(traced.with_suffix(".bin"), out_dir / "model.bin")
    else:
        import nncf

        log(f"compressing the weights to {precision} (NNCF)")
        model = ov.Core().read_model(str(traced))
        mode = nncf.CompressWeightsMode.INT8_ASYM if precision == "int8" else nncf.CompressWeightsMode.INT4_ASYM
        fan_ins = (shape["hidden"], shape["intermediate"], shape["heads"] * shape["head_dim"])
        while group_size > 16 and any(f % group_size for f in fan_ins):  # SmolLM2's 576 takes groups of 64
            group_size //= 2
        kwargs = {} if precision == "int8" else {"group_size": group_size, "ratio": 1.0}
        model = nncf.compress_weights(model, mode=mode, **kwargs)
        log("saving the compressed graph")
        ov.save_model(model, out_dir / "model.xml", compress_to_fp16=False)
        del model
        traced.unlink()
        traced.with_suffix(".bin").unlink()
    (out_dir / "traced.done").unlink()
    (out_dir / "graph.json").write_text(json.dumps({"shape": shape, "precision": precision,
                                                    "group_size": group_size if precision == "int4" else None,
                                                    "inputs": input_names(shape["layers"]),
                                                    "outputs": output_names(shape["layers"])}, indent=1))
    return out_dir


def _trace(hf_dir: str | Path, shape: dict[str, Any], out: Path, precision: str, log) -> None:
    """Trace :class:`Decoder` on the model's weights and save the uncompressed IR at ``out``."""
    import openvino as ov
    import torch

    # the stored dtype (a bf16 checkpoint's trace stays at the model's size); fp32 for the unquantized graph
    weights = load_weights(hf_dir, torch.float32 if precision == "fp32" else None)
    need = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if shape["tied"] else ["lm_head.weight"])
    missing = [k for k in need if k not in weights]
    if missing:
        raise GraphError(f"{hf_dir} lacks {missing}")
    log(f"tracing the {shape['layers']}-layer graph")
    decoder = _decoder_class()(shape, weights).eval()
    layers = shape["layers"]
    names = input_names(layers)
    h, v = shape["hidden"], shape["vocab"]
    dyn = {"input_ids": [-1, -1], "positions": [-1, -1], "mask": [-1, 1, -1, -1], "lora_mask": [-1, -1],
           "head_mask": [-1, -1], "a_emb": [v, -1], "b_emb": [-1, h], "a_head": [h, -1], "b_head": [-1, v],
           "norm_delta": [-1, 2 * layers + 1, h]}
    kv = [-1, shape["kv_heads"], -1, shape["head_dim"]]
    inputs = []
    for n in names:
        if n in dyn:
            pshape = dyn[n]
        elif n.startswith("past_"):
            pshape = kv
        else:
            base = n.rsplit("_", 1)[0]
            dims = lora_input_shapes(shape, 1)[base]
            pshape = [dims[0], -1] if base.startswith("a_") else [-1, dims[1]]
        etype = ov.Type.i64 if n in ("input_ids", "positions") else ov.Type.f32
        inputs.append((ov.PartialShape(pshape), etype))
    with torch.no_grad():  # the converted constants share the torch tensors' memory: keep them until saved
        model = ov.convert_model(decoder, example_input=example_inputs(shape), input=inputs)
    for port, name in zip(model.inputs, names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names(layers)):
        port.get_tensor().set_names({name})
    log("saving the traced graph")
    ov.save_model(model, out, compress_to_fp16=False)
    del model, decoder
    weights.clear()
