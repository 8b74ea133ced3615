"""A stand-in for a "published merged model" (the study's SFT/CPT/MSFT pushes: full model folders): a base with
seeded low-rank changes, saved as a full Hugging Face folder. Used by ``tests/test_published_setup.py`` and
``tests/test_r1_flow.py``.
"""
from __future__ import annotations

from pathlib import Path


def merged_model(base: str | Path, out: str | Path, seed: int, *, embed: float = 0.0, norm: float = 0.0,
                 lm_head: float = 0.0, rounded: bool = False) -> Path:
    """``base`` with a rank-2 change on every layer's ``q_proj`` and ``down_proj``; ``embed``/``lm_head``: the std of
    a change to those matrices trained whole (the study's CPT), ``norm``: a shift of the final norm; ``rounded``: the
    "-merged" push, the weights through bfloat16. Saved with the base's tokenizer to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.mlp.down_proj):
                out_f, in_f = lin.weight.shape
                lin.weight += 0.5 * torch.randn(out_f, 2) @ torch.randn(2, in_f) / in_f ** 0.5
        if embed:
            model.model.embed_tokens.weight += embed * torch.randn_like(model.model.embed_tokens.weight)
        if norm:
            model.model.norm.weight += norm
        if lm_head:
            model.lm_head.weight += lm_head * torch.randn_like(model.lm_head.weight)
        if rounded:
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return Path(out)
