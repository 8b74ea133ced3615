"""configs/study reproduce the seed's notebooks (MilyaushaShamsutdinova/MedAdapt-LLM): each setting reaches the
TrainingArguments and the LoraConfig the trainers build, field by field; the data split, the SFT text and the CPT
embedding learning rate are the notebooks'; transformers stays unimported until the trainer picks Unsloth or not."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medadapt.config import REPO_ROOT, load_train_config
from trainers.common import Runtime, lora_kwargs, optimizer_name, seed_split, training_args
from trainers.msft import cpt_stage_config

SEED = REPO_ROOT / "configs" / "study"
PROJ = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
CPU = Runtime(cuda=False, quantized=False, unsloth=False)
GPU_4BIT = Runtime(cuda=True, quantized=True, unsloth=True)

# the notebooks' UnslothTrainingArguments / get_peft_model values
SFT_ARGS = {"per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 4,
            "lr_scheduler_type": "cosine", "warmup_steps": 300, "learning_rate": 1e-4, "num_train_epochs": 1,
            "weight_decay": 0.01, "seed": 4242, "eval_steps": 100, "logging_steps": 100, "save_steps": 200,
            "save_total_limit": 5}
SFT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "use_rslora": True, "modules_to_save": None}
CPT_ARGS = {"per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 8,
            "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "learning_rate": 1e-5, "num_train_epochs": 1,
            "weight_decay": 0.01, "seed": 4242, "eval_steps": 1000, "logging_steps": 1000, "save_steps": 1000,
            "save_total_limit": 5}
CPT_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "use_rslora": True,
            "modules_to_save": ["embed_tokens", "lm_head"]}


def _args(tcfg, tmp_path):
    return training_args(tcfg, tmp_path, CPU, True, "none", "t")


def _check(tcfg, tmp_path, want_args, want_lora, optim):
    from peft import LoraConfig

    args = _args(tcfg, tmp_path)
    got = {k: getattr(args, k) for k in want_args}
    got["lr_scheduler_type"] = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    assert got == want_args
    assert optimizer_name(tcfg, GPU_4BIT) == optim
    lora = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(tcfg))
    assert {k: getattr(lora, k) for k in want_lora} == want_lora and set(lora.target_modules) == PROJ
    assert lora.bias == "none"


@pytest.mark.parametrize("name", ["sft", "msft"])
def test_seed_sft_settings_reach_the_trainer(name, tmp_path):
    tcfg = load_train_config(SEED / f"{name}.yaml")
    _check(tcfg, tmp_path, SFT_ARGS, SFT_LORA, "adamw_torch_fused")
    assert (tcfg.max_length, tcfg.packing, tcfg.prompt, tcfg.split) == (4096, False, "seed", "seed")
    assert (tcfg.max_samples, tcfg.eval_fraction, tcfg.max_eval_samples) == (20000, 0.05, 0)  # train[:20000], 5%
    assert tcfg.dataset == ["FreedomIntelligence/medical-o1-reasoning-SFT"] and tcfg.profile == "reference"


@pytest.mark.parametrize("name", ["cpt", "msft"])
def test_seed_cpt_settings_reach_the_trainer(name, tmp_path):
    tcfg = load_train_config(SEED / f"{name}.yaml")
    tcfg = cpt_stage_config(tcfg) if name == "msft" else tcfg
    _check(tcfg, tmp_path, CPT_ARGS, CPT_LORA, "adamw_8bit")
    assert _args(tcfg, tmp_path).get_warmup_steps(1000) == 50  # 5% warm-up
    assert tcfg.embedding_learning_rate == 5e-6 and (tcfg.max_length, tcfg.packing) == (4096, False)
    assert tcfg.dataset == ["MedRAG/textbooks", "MilyaShams/MedRAG_statpearls"] and tcfg.seed == 4242


def test_seed_msft_merges_cpt_then_trains_a_fresh_r16_lora():
    tcfg = load_train_config(SEED / "msft.yaml")
    assert tcfg.msft_stage2 == "merge" and tcfg.lora.r == 16 and cpt_stage_config(tcfg).lora.r == 8
    assert load_train_config(REPO_ROOT / "configs" / "reference" / "msft.yaml").msft_stage2 == "continue"


def _rows(n):
    return [f"row{i}" for i in range(n)]


def test_seed_split_is_the_notebooks_train_test_split():
    from datasets import Dataset

    tcfg = load_train_config(SEED / "sft.yaml", {"max_samples": 100})
    nb = Dataset.from_dict({"r": _rows(300)[:100]}).train_test_split(test_size=0.05, seed=4242)  # train[:100]
    train, test = seed_split(_rows(300), tcfg)
    assert (train, test) == (nb["train"]["r"], nb["test"]["r"])
    # a row removed upstream (it overlapped an evaluated item) leaves every other row where the notebook put it
    kept = [r for r in _rows(300) if r != nb["train"]["r"][3]]
    train2, test2 = seed_split(kept, tcfg, [int(r[3:]) for r in kept])
    assert train2 == nb["train"]["r"][:3] + nb["train"]["r"][4:] and test2 == test


def test_seed_cpt_split_shuffles_first_as_the_notebook():
    from datasets import Dataset

    tcfg = load_train_config(SEED / "cpt.yaml")
    nb = Dataset.from_dict({"r": _rows(80)}).shuffle(seed=4242).train_test_split(test_size=0.05, seed=4242)
    assert seed_split(_rows(80), tcfg, preshuffle=True) == (nb["train"]["r"], nb["test"]["r"])


def test_seed_sft_text_is_the_notebooks(r1_tokenizer_dir):
    """On the real R1 tokenizer (the seed's): BOS first (``add_bos_token``), the text, EOS as one token."""
    from transformers import AutoTokenizer

    from trainers.formatting import seed_example

    tok = AutoTokenizer.from_pretrained(r1_tokenizer_dir)
    ex = seed_example(tok, "Q?", "Because.", "A.", 4096)
    text = ("\n### Instruction:\nYou are a medical expert with advanced knowledge in clinical reasoning, diagnostics, "
            "and treatment planning. \nPlease answer the following medical question. \n\n### Question:\nQ?\n\n"
            "### Response:\n<think>\nBecause.\n</think>\nA.\n" + tok.eos_token)
    assert tok.decode(ex["input_ids"]) == tok.bos_token + text and ex["labels"] == ex["input_ids"]
    assert ex["input_ids"][0] == tok.bos_token_id and ex["input_ids"][-1] == tok.eos_token_id
    assert tok.convert_tokens_to_ids("<think>") in ex["input_ids"]  # the tag is one added token
    assert len(seed_example(tok, "Q? " * 300, "x", "y", 64)["input_ids"]) == 64  # cut, not dropped


def test_cpt_embedding_learning_rate_is_its_own_group(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer

    from trainers.common import embedding_lr_trainer

    tcfg = load_train_config(SEED / "cpt.yaml")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(task_type="CAUSAL_LM", **dict(lora_kwargs(tcfg), modules_to_save=["embed_tokens"])))
    args = training_args(tcfg, tmp_path, CPU, False, "none", "t")
    trainer = embedding_lr_trainer(Trainer, tcfg.embedding_learning_rate)(model=model, args=args)
    opt = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr: dict[float, set[str]] = {}
    for g in opt.param_groups:
        by_lr.setdefault(g["lr"], set()).update(names[id(p)] for p in g["params"])
    assert set(by_lr) == {1e-5, 5e-6}
    assert by_lr[5e-6] and all("modules_to_save" in n for n in by_lr[5e-6])
    assert all("lora_" in n for n in by_lr[1e-5])
    assert {g["weight_decay"] for g in opt.param_groups if g["lr"] == 5e-6} <= {0.01, 0.0}


def test_trainer_process_imports_transformers_only_after_the_unsloth_decision():
    code = ("import sys; import trainers.job, trainers.sft, trainers.cpt, trainers.msft; "
            "from trainers.callbacks import StopRequest; from trainers.common import app_config, base_model, runtime; "
            "print(sorted(m for m in ('transformers', 'peft', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reference_keeps_the_project_recipe():
    ref = load_train_config(REPO_ROOT / "configs" / "reference" / "sft.yaml")
    assert (ref.prompt, ref.split, ref.optim) == ("app", "shuffle", "auto")
    assert Path(SEED / "sft.yaml").read_text() != Path(REPO_ROOT / "configs" / "reference" / "sft.yaml").read_text()


def test_seed_msft_job_merges_cpt_trains_a_fresh_lora_and_publishes_the_delta(cfg, tmp_path, monkeypatch):
    """The seed's MSFT shape end to end on the tiny model: CPT adapter merged into the base, a fresh LoRA (of the SFT
    config's rank, not the CPT's) on the merged model, merged again, and adapter/ = its delta against the base."""
    import json

    import medadapt.data.sft as sft_data
    from medadapt.data.sft import SftRow
    from medadapt.delta import fidelity
    from medadapt.serve.multilora import read_adapter
    from trainers import msft

    rows = [SftRow(f"medical_o1:{i}", "medical_o1", f"Question {i} about anaphylaxis?", "Epinephrine first.",
                   "Intramuscular epinephrine.") for i in range(12)]
    monkeypatch.setattr(sft_data, "load_sft_rows", lambda cfg, datasets=(): list(rows))
    run_dir = tmp_path / "msft"
    small = {"max_length": 64, "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 2,
             "eval_fraction": 0.2, "max_eval_samples": 2, "eval_steps": 100, "save_steps": 50, "warmup_steps": 0,
             "logging_steps": 1}
    t = load_train_config(SEED / "msft.yaml", {
        **small, "profile": "offline", "max_samples": 0, "report_to": "none", "output_dir": str(run_dir),
        "lora": {"r": 4, "alpha": 8},
        "cpt": {**small, "dataset": ["local:medrag_textbooks"], "max_samples": 40, "optim": "adamw_torch",
                "lora": {"r": 2, "alpha": 4, "use_rslora": True, "modules_to_save": []}}})
    status = msft.run(t, cfg)
    assert status["status"] == "finished" and status["steps"] == 4
    assert (run_dir / "cpt_merged" / ".merged").exists() and (run_dir / "merged" / ".merged").exists()
    sft_cfg = json.loads((run_dir / "sft_adapter" / "adapter_config.json").read_text())
    assert sft_cfg["r"] == 4 and sft_cfg["use_rslora"] and sft_cfg["lora_dropout"] == 0.05  # fresh, seed-shaped
    meta = json.loads((run_dir / "adapter" / "medadapt.json").read_text())
    assert meta["job"] == "msft" and meta["data"]["delta"]["rank"] == 6 and len(meta["lineage"]) == 4
    assert read_adapter("msft", run_dir / "adapter").lora  # an adapter the engine serves on the unchanged base
    fid = fidelity(cfg.model.name_or_path, run_dir / "merged", run_dir / "adapter", ["Epinephrine treats"])
    assert fid["agree"] == 1.0 and fid["kl"] < 1e-5
