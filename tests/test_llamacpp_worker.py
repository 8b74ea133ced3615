"""llama.cpp as ``bench/cpu_engine.py`` measures it: ``bench/llamacpp_worker.py`` in its venv on a tiny Qwen2.

The venv is a bench candidate, not part of the app, so nothing here installs it: the tests skip, saying how to set it
up (``bash scripts/cpu_candidates.sh llamacpp``), when it is missing. The tiny model is converted to an f32 GGUF by
the wheel's converter and the adapters to f32 GGUF LoRAs by the worker, so llama.cpp must give transformers + PEFT's
greedy tokens and next-token distributions (its KV cache is f16: KL within 1e-4), with every row of a mixed load (one
batch per adapter each step) as its adapter alone.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medadapt.config import REPO_ROOT
from tests.test_engine import make_adapter

sys.path.insert(0, str(REPO_ROOT / "bench"))
import cpu_engine  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
PROMPT = [151646, 3838, 374, 279, 5244, 315, 65760, 30]
CONT = [576, 5244, 374, 220, 16, 13]


@pytest.fixture(scope="module")
def noisy_r1(tmp_path_factory, tiny_r1_model_dir) -> Path:
    """The tiny R1-tokenizer Qwen2 with larger random weights, so greedy tokens vary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_r1_model_dir)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("llamacpp-model") / "model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_r1_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, noisy_r1) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llamacpp-adapters")
    return {"r8": Path(make_adapter(str(noisy_r1), root / "r8", 8, 1)),
            "r16": Path(make_adapter(str(noisy_r1), root / "r16", 16, 2))}


@pytest.fixture(scope="module")
def llama(noisy_r1, adapters, tmp_path_factory):
    python = cpu_engine.CANDIDATES / "llamacpp" / "venv" / "bin" / "python"
    if not python.exists():
        pytest.skip(f"the llama.cpp bench candidate is not set up ({python.parent.parent}): run "
                    "`bash scripts/cpu_candidates.sh llamacpp`")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_WAIT_POLICY", "PASSIVE")  # a shared test box: no spinning threads
        eng = cpu_engine.LlamaCppEngine(noisy_r1, "f32", 2)
        eng.out = tmp_path_factory.mktemp("llamacpp-gguf")
        eng.prepare(adapters)
        eng.start(adapters, ctx=256)
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def reference(noisy_r1, adapters) -> dict[str, tuple[list[int], np.ndarray]]:
    """transformers (+ PEFT) fp32 per adapter: 6 greedy tokens after PROMPT, and log-probs of CONT after PROMPT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = {}
    for name in ["base", *adapters]:
        model = AutoModelForCausalLM.from_pretrained(noisy_r1)
        if name != "base":
            model = PeftModel.from_pretrained(model, adapters[name])
        with torch.no_grad():
            ids = list(PROMPT)
            for _ in range(6):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            logits = model(torch.tensor([PROMPT + CONT[:-1]])).logits[0, len(PROMPT) - 1:]
        out[name] = ids[len(PROMPT):], torch.log_softmax(logits.float(), -1).numpy()
    return out


def test_the_wheel_converts_the_model_and_the_worker_its_adapters(llama, adapters):
    assert llama.ready["ready"] and llama.ready["n_vocab"] == 151936
    assert llama.ready["step_bytes"] > 151936 * 64 * 4, "the untied head is read every step"
    assert all(llama.lora(name).stat().st_size > 0 for name in adapters)


def test_rows_batched_per_adapter_give_each_adapter_its_transformers_tokens(llama, reference):
    names = ["base", "r8", "r16", "r8"]
    mixed = llama.ask({"job": "columns", "prompt": PROMPT, "names": names, "tokens": 6})
    assert mixed["decodes_per_step"] == 3, "one decode per distinct adapter each step"
    assert mixed["tokens"] == [6] * 4 and mixed["ttft_s"] > 0 and len(mixed["tok_s"]) == 4
    for row, name in enumerate(names):
        alone = llama.ask({"job": "columns", "prompt": PROMPT, "names": [name], "tokens": 6})
        assert mixed["ids"][row] == alone["ids"][0] == reference[name][0], name
    assert len({tuple(reference[n][0]) for n in ("base", "r8", "r16")}) == 3, "the adapters change the answer"


@pytest.mark.parametrize("name", ["base", "r8", "r16"])
def test_teacher_forced_distributions_match_transformers(llama, reference, name):
    got = llama.score(PROMPT, CONT, name)
    ref = reference[name][1]
    assert got.shape == ref.shape == (len(CONT), 151936)
    kl = (np.exp(ref) * (ref - got)).sum(-1)
    assert kl.max() < 1e-4, kl
    assert (got.argmax(-1) == ref.argmax(-1)).all()
