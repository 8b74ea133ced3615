"""medadapt.delta: a full fine-tuned model as a low-rank PEFT adapter on the base (exact at the delta's rank,
truncated below it, tied embeddings copied to lm_head, what cannot be carried reported)."""
from __future__ import annotations

import json

import pytest


def _tuned(base_dir, out, rank=3, embed=False, bias=False, seed=1, scale=0.3):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.mlp.up_proj.weight
            w += scale * torch.randn(w.shape[0], rank) @ torch.randn(rank, w.shape[1]) / w.shape[1] ** 0.5
        if embed:
            model.model.embed_tokens.weight += scale / 6 * torch.randn_like(model.model.embed_tokens.weight)
    model.save_pretrained(out)
    if bias:  # a tensor the base lacks (a bias added by a fine-tune): reported, never silently dropped
        from safetensors.torch import load_file, save_file

        state = load_file(str(out / "model.safetensors"))
        state["model.layers.0.mlp.up_proj.bias"] = torch.ones(state["model.layers.0.mlp.up_proj.weight"].shape[0])
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


PROMPTS = ["Aspirin irreversibly inhibits cyclooxygenase.", "A barking cough in a child suggests croup."]


def test_delta_at_the_fine_tunes_rank_is_exact_and_below_it_is_truncated(tiny_model_dir, tmp_path):
    from medadapt.delta import extract_delta, fidelity

    tuned = _tuned(tiny_model_dir, tmp_path / "tuned", rank=3, embed=True)
    report = extract_delta(tiny_model_dir, tuned, tmp_path / "r3", 3, dtype="float32")
    d = report["delta"]
    assert d["layers"] == 2 and d["energy_kept_min"] > 0.9999 and d["unrepresented"] == []
    assert d["full_copies"] == ["lm_head", "model.embed_tokens"]  # tied: the output layer gets the new embedding
    exact = fidelity(tiny_model_dir, tuned, tmp_path / "r3", PROMPTS)
    assert exact["agree"] == 1.0 and exact["kl"] < 1e-6 < exact["kl_base"]
    low = extract_delta(tiny_model_dir, tuned, tmp_path / "r1", 1, dtype="float32")["delta"]
    assert low["energy_kept_mean"] < 0.9
    assert fidelity(tiny_model_dir, tuned, tmp_path / "r1", PROMPTS)["kl"] > exact["kl"]


def test_what_a_lora_cannot_carry_is_reported(tiny_model_dir, tmp_path):
    from medadapt.delta import extract_delta

    tuned = _tuned(tiny_model_dir, tmp_path / "tuned", bias=True)
    report = extract_delta(tiny_model_dir, tuned, tmp_path / "d", 4, dtype="float32")
    assert report["delta"]["unrepresented"] == ["model.layers.0.mlp.up_proj.bias: not in the base model"]
    saved = json.loads((tmp_path / "d" / "medadapt.json").read_text())
    assert saved["delta"]["unrepresented"] == report["delta"]["unrepresented"]


def test_another_architecture_is_refused(tiny_model_dir, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from medadapt.delta import DeltaError, extract_delta

    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).to(torch.float32).save_pretrained(other)
    with pytest.raises(DeltaError, match="shape"):
        extract_delta(tiny_model_dir, other, tmp_path / "d", 4)
    assert not (tmp_path / "d").exists()

# The engine serving a delta in one batch with the base, decoding as the full model: tests/test_r1_flow.py.
