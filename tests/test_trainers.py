"""Trainers on the tiny random model: formatting/packing units, each job end to end, loss goes down, stop + resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medadapt.adapters import list_adapters
from medadapt.config import REPO_ROOT, ConfigError, load_train_config
from medadapt.data.sft import SftRow
from trainers.cli import parse_overrides
from trainers.formatting import IGNORE, PadCollator, completion_text, cpt_examples, end_of_turn, pack_blocks, sft_example

ROWS = [SftRow(f"medical_o1:{i}", "medical_o1", q, c, a) for i, (q, c, a) in enumerate([
    ("What is the first-line drug for anaphylaxis?", "Anaphylaxis needs rapid alpha and beta agonism.",
     "Intramuscular epinephrine."),
    ("Which vitamin deficiency causes scurvy?", "Collagen synthesis needs hydroxylation, which needs vitamin C.",
     "Vitamin C."),
    ("Which electrolyte change peaks the T waves?", "Peaked T waves are an early ECG sign of hyperkalemia.",
     "Hyperkalemia."),
    ("What causes most community-acquired pneumonia?", "The commonest bacterial cause is pneumococcus.",
     "Streptococcus pneumoniae."),
] * 3)]


@pytest.fixture
def fixed_rows(monkeypatch):
    """SFT rows are a fixed tiny set (the real loader is covered in test_data_sft / test_disjoint)."""
    import medadapt.data.sft as sft_data

    monkeypatch.setattr(sft_data, "load_sft_rows", lambda cfg, datasets=(): list(ROWS))


def tcfg(job: str, out: Path, **over):
    base = {"max_length": 128, "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 4,
            "eval_fraction": 0.2, "max_eval_samples": 2, "eval_steps": 100, "save_steps": 2, "report_to": "none",
            "output_dir": str(out), "warmup_ratio": 0.0, "lora": {"r": 4, "alpha": 8}}
    return load_train_config(REPO_ROOT / "configs" / "offline" / f"{job}.yaml", {**base, **over})


def losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- units

def test_assistant_only_labels_mask_the_prompt(tok):
    ex = sft_example(tok, "Which vitamin prevents scurvy?", "Think about collagen.", "Vitamin C.")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Which vitamin prevents scurvy?"}],
                                     tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    target = tok.decode(ex["input_ids"][n_prompt:])
    assert target.startswith("<think>\nThink about collagen.\n</think>") and "Vitamin C." in target
    assert target.endswith(end_of_turn(tok)) and end_of_turn(tok).startswith("<|im_end|>")
    assert "Which vitamin" in tok.decode(ex["input_ids"][:n_prompt])


def test_app_shaped_example_is_trained_on_the_prompt_the_eval_renders(tok):
    """``prompt: app`` with a row's ``posed`` arguments: the masked prompt is, token for token, what the evaluation
    (and Compare) render for the same MedMCQA item; only the completion carries labels."""
    from eval.prompting import item_messages
    from medadapt.data.benchmarks import BenchItem
    from medadapt.data.sft import medmcqa_row
    from medadapt.prompts import render_chat

    rec = {"id": "m1", "question": "Drug of choice for anaphylaxis?", "opa": "Epinephrine", "opb": "Atropine",
           "opc": "Insulin", "opd": "Heparin", "cop": 1, "exp": "Ans. is 'a' i.e., Epinephrine. It reverses shock."}
    row = medmcqa_row(rec)
    ex = sft_example(tok, row.question, row.cot, row.answer, None, None, "app", True, row.posed)
    item = BenchItem("medmcqa", "m1", rec["question"], {"A": "Epinephrine", "B": "Atropine", "C": "Insulin",
                                                          "D": "Heparin"}, "A")
    served = tok(render_chat(tok, item_messages(item)), add_special_tokens=False)["input_ids"]
    assert ex["input_ids"][:len(served)] == served
    assert ex["labels"][:len(served)] == [IGNORE] * len(served) and ex["labels"][len(served)] != IGNORE
    completion = tok.decode(ex["input_ids"][len(served):])
    assert completion.startswith("<think>\nIt reverses shock.\n</think>\n\nThe answer is A.")


def test_completion_skips_think_tag_the_template_opened():
    assert completion_text("cot", "ans", "<|Assistant|><think>\n").startswith("cot\n</think>")
    assert completion_text("cot", "ans", "<|im_start|>assistant\n").startswith("<think>\ncot")


def test_packing_fills_blocks_with_eos_between_documents():
    blocks = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], eos_id=0, block=4)
    assert blocks == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]


def test_packed_batches_contain_no_padding(tok):
    texts = [f"Snippet {i}. " + "The liver makes bile and albumin. " * (i % 5 + 1) for i in range(40)]
    packed = cpt_examples(tok, texts, 32, packing=True)
    batch = PadCollator(tok.pad_token_id)(packed[:4])
    assert batch["input_ids"].shape == (4, 32)
    assert batch["attention_mask"].all() and (batch["labels"] != IGNORE).all()
    unpacked = PadCollator(tok.pad_token_id)(cpt_examples(tok, texts[:4], 512, packing=False))
    assert not unpacked["attention_mask"].all()  # the seed's unpacked batches waste tokens on padding


def test_head_on_targets_only_gives_the_same_loss_and_gradients(tok, tiny_model_dir):
    """The collator's ``targets_only`` batch runs the LM head on the answer tokens only: same loss, same gradients,
    fewer logits; the Trainer's token count (``shift_labels``) is the number of trained tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = [sft_example(tok, r.question, r.cot, r.answer, None, end_of_turn(tok)) for r in ROWS[:3]]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    results = []
    for targets_only in (False, True):
        batch = PadCollator(tok.pad_token_id, targets_only)(rows)
        trained = int((batch["labels"][:, 1:] != IGNORE).sum())
        model.zero_grad()
        out = model(**batch, num_items_in_batch=torch.tensor(trained))
        out.loss.backward()
        results.append((out.loss.detach(), out.logits.shape, [p.grad.clone() for p in model.parameters()], batch))
    (full_loss, full_shape, full_grads, _), (loss, shape, grads, batch) = results
    assert shape[0] == len(batch["shift_labels"]) == int(batch["logits_to_keep"].sum()) < full_shape[0] * full_shape[1]
    assert batch["logits_to_keep"].shape == batch["input_ids"].shape and (batch["shift_labels"] != IGNORE).all()
    assert torch.allclose(loss, full_loss, atol=1e-6)
    assert all(torch.allclose(g, f, atol=1e-6) for g, f in zip(grads, full_grads))


def test_overrides_parse_dotted_yaml_values():
    assert parse_overrides(["lora.r=8", "packing=true", "learning_rate=3e-4", "dataset=[a, b]"]) == {
        "lora": {"r": 8}, "packing": True, "learning_rate": 3e-4, "dataset": ["a", "b"]}
    with pytest.raises(ConfigError):
        parse_overrides(["no_equals_sign"])


def test_yaml_number_strings_become_numbers_and_steps_are_planned(tmp_path):
    from trainers.common import planned_steps

    t = load_train_config(REPO_ROOT / "configs" / "offline" / "sft.yaml",
                          {"learning_rate": "2e-4", "lora": {"dropout": "1e-1"}, "max_steps": -1})
    assert t.learning_rate == 2e-4 and t.lora.dropout == 0.1  # the config tree coerces YAML 1.1's number strings
    with pytest.raises(ConfigError, match=r"Learning rate: must be between 1e-07 and 0.1 \(got 5\)"):
        load_train_config(REPO_ROOT / "configs" / "offline" / "sft.yaml", {"learning_rate": 5})
    t.per_device_batch_size, t.gradient_accumulation_steps, t.num_epochs = 2, 4, 1
    assert planned_steps(t, 17) == 3  # 9 batches -> 3 optimizer steps
    t.max_steps = 5
    assert planned_steps(t, 17) == 5


def test_cli_help_is_fast_and_imports_no_torch():
    code = "import sys, trainers.sft, trainers.cpt, trainers.msft; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
    out = subprocess.run([sys.executable, "-m", "trainers.msft", "--help"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "--resume" in out and "--config" in out


# ---------------------------------------------------------------- jobs

def test_sft_job_writes_adapter_log_card_and_status(cfg, fixed_rows, tmp_path):
    from trainers import sft

    run_dir = Path(cfg.paths.runs_dir) / cfg.profile / "sft-test"
    status = sft.run(tcfg("sft", run_dir), cfg)
    assert status["status"] == "finished" and status["steps"] == 4
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    meta = json.loads((adapter / "medadapt.json").read_text())
    assert meta["job"] == "sft" and meta["steps"] == 4 and meta["final_loss"] is not None
    card = (adapter / "README.md").read_text()
    assert "base_model:" in card and "MedAdapt SFT adapter" in card and "medical_o1" in card
    lines = losses(run_dir)
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4]
    assert {"total_steps", "lr", "tokens_per_s", "elapsed_s", "eta_s"} <= set(train_lines[-1])
    assert any("eval_loss" in x for x in lines)
    assert json.loads((run_dir / "status.json").read_text())["adapter"] == str(adapter)
    assert not list(run_dir.glob("adapter.tmp-*"))
    assert [a.path for a in list_adapters(cfg, "sft")] == [adapter]


def test_sft_loss_goes_down_when_overfitting_a_tiny_set(cfg, fixed_rows, tmp_path):
    from trainers import sft

    t = tcfg("sft", tmp_path / "overfit", max_steps=10, learning_rate=2e-2, eval_fraction=0.0, save_steps=100,
             per_device_batch_size=4, lora={"r": 8, "alpha": 16})
    sft.run(t, cfg)
    loss = [x["loss"] for x in losses(tmp_path / "overfit") if "loss" in x]
    assert len(loss) == 10
    assert sum(loss[-3:]) / 3 < loss[0] - 0.3, loss  # a random 10.8-nat start; overfitting drops it clearly


def test_cpu_bf16_mixed_precision_trains_fp32_lora_on_a_bf16_base(cfg, fixed_rows, tmp_path):
    import torch
    from safetensors.torch import load_file

    from trainers import sft
    from trainers.common import Runtime, load_trainable, training_args

    t = tcfg("sft", tmp_path / "bf16", precision="bf16", lora={"r": 4, "alpha": 8, "modules_to_save": ["lm_head"]})
    rt = Runtime(cuda=False, quantized=False, unsloth=False, precision="bf16")
    model, _ = load_trainable(t, cfg.model.name_or_path, rt)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}  # modules_to_save too, not only LoRA
    args = training_args(t, tmp_path / "ckpt", rt, False, "none", "t")
    assert args.bf16 and not args.fp16 and args.use_cpu
    status = sft.run(tcfg("sft", tmp_path / "run", precision="bf16"), cfg)
    meta = json.loads((tmp_path / "run" / "adapter" / "medadapt.json").read_text())
    assert status["status"] == "finished" and meta["precision"] == "bf16"
    weights = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    assert all(x["loss"] == x["loss"] for x in losses(tmp_path / "run") if "loss" in x)  # finite, no NaN


@pytest.mark.parametrize("job", ["sft", "cpt"])
def test_a_new_lora_starts_from_the_seed_whatever_ran_before(cfg, tmp_path, job):
    """The LoRA init (and a CPT run's modules_to_save copies) comes from ``seed``, not from the global RNG's state."""
    import torch

    from trainers.common import Runtime, load_trainable

    rt = Runtime(cuda=False, quantized=False, unsloth=False)

    def init(seed: int, noise: int) -> dict:
        torch.manual_seed(noise)  # whatever the process drew before
        torch.rand(noise)
        t = tcfg(job, tmp_path / job, seed=seed, lora={"r": 4, "alpha": 8, "modules_to_save": ["lm_head"]})
        model, _ = load_trainable(t, cfg.model.name_or_path, rt)
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    a, b, c = init(7, 1), init(7, 99), init(8, 1)
    assert a.keys() == b.keys() and any("lora_A" in k for k in a) and any("modules_to_save" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if "lora_A" in k)


def test_two_sft_runs_with_one_seed_train_the_same_adapter(cfg, fixed_rows, tmp_path):
    """End to end: the same seed twice in one process (the RNG moved on between them) gives the same adapter."""
    from safetensors.torch import load_file

    from trainers import sft

    weights = []
    for name in ("one", "two"):
        assert sft.run(tcfg("sft", tmp_path / name, max_steps=1, seed=11), cfg)["status"] == "finished"
        weights.append(load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_precision_setting_is_checked(monkeypatch):
    import medadapt.precision as precision
    from medadapt.precision import train_precision

    assert train_precision("fp32", cuda=False) == "fp32"
    for native in (True, False):  # auto on the CPU is fp32 whatever it supports; bf16 is there when asked for
        monkeypatch.setattr(precision, "cpu_bf16", lambda native=native: native)
        assert train_precision("auto", cuda=False) == "fp32" and train_precision("bf16", cuda=False) == "bf16"
    with pytest.raises(ConfigError, match="needs CUDA"):
        train_precision("fp16", cuda=False)
    with pytest.raises(ConfigError, match="auto, bf16, fp16, fp32"):
        train_precision("fp8", cuda=False)


def test_stop_file_then_resume_continues_from_checkpoint(cfg, fixed_rows, tmp_path):
    from trainers import sft

    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    (run_dir / "STOP").touch()  # the UI's stop button, pressed before the first step ends
    status = sft.run(tcfg("sft", run_dir, max_steps=4), cfg)
    assert status["status"] == "stopped" and status["steps"] == 1
    assert (run_dir / "checkpoints" / "checkpoint-1").is_dir() and not (run_dir / "adapter").exists()
    status = sft.run(tcfg("sft", run_dir, max_steps=4), cfg, resume=True)
    assert status["status"] == "finished" and status["steps"] == 4
    steps = [x["step"] for x in losses(run_dir) if "loss" in x]
    assert steps == [1, 2, 3, 4]  # the resumed session starts at step 2, not 1


def test_msft_runs_cpt_then_sft_and_records_lineage(cfg, fixed_rows, tmp_path):
    from trainers import msft

    run_dir = tmp_path / "msft"
    t = tcfg("msft", run_dir, max_steps=2, cpt={"max_steps": 2, "max_length": 64, "max_samples": 60,
                                                  "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
                                                  "eval_fraction": 0.1, "max_eval_samples": 2, "save_steps": 50,
                                                  "lora": {"r": 4, "alpha": 8}})
    status = msft.run(t, cfg)
    assert status["status"] == "finished" and status["steps"] == 4
    assert (run_dir / "cpt_adapter" / "adapter_config.json").exists()
    meta = json.loads((run_dir / "adapter" / "medadapt.json").read_text())
    assert meta["job"] == "msft" and len(meta["lineage"]) == 3 and "cpt_adapter" in meta["lineage"][1]
    assert meta["config"]["lora"]["r"] == 4  # the SFT stage continued the CPT adapter
    lines = [x for x in losses(run_dir) if "loss" in x]
    assert [(x["stage"], x["step"]) for x in lines] == [("cpt", 1), ("cpt", 2), ("sft", 3), ("sft", 4)]
    assert all(x["total_steps"] == 4 for x in lines)
    held = json.loads((run_dir / "cpt_adapter" / "medadapt.json").read_text())["data"]["heldout"]
    assert meta["data"]["cpt"]["heldout"] == held  # the MSFT adapter carries its CPT stage's held-out passages
    assert len(held["split"]) == 2 and held["unsampled"] and not set(held["split"]) & set(held["unsampled"])


def test_cpt_records_the_passages_it_never_trained_on(cfg):
    """The held-out split and the unsampled snippets are disjoint from the training snippets, and reproducible."""
    from medadapt.data.corpus import CorpusDoc
    from trainers.cpt import UNSAMPLED_RECORDED, heldout_record, split_docs

    docs = [CorpusDoc(f"Book_{i}", "t", f"text {i}", "Book") for i in range(1000)]
    t = tcfg("cpt", Path("/tmp/unused"), max_samples=300, eval_fraction=0.1, max_eval_samples=8)
    train, held = split_docs(t, docs)
    rec = heldout_record(t, cfg, docs, train, held)
    trained = {d.id for d in train}
    assert len(rec["split"]) == 8 and len(train) == 292 and rec["unsampled_of"] == 700
    assert len(rec["unsampled"]) == UNSAMPLED_RECORDED
    assert not trained & set(rec["split"]) and not trained & set(rec["unsampled"])
    assert rec == heldout_record(t, cfg, docs, *split_docs(t, docs))  # seeded: the same record again
    whole = tcfg("cpt", Path("/tmp/unused"), max_samples=0, eval_fraction=0.1, max_eval_samples=0)
    assert heldout_record(whole, cfg, docs, *split_docs(whole, docs))["unsampled"] == []


def test_cpt_cli_killed_with_sigterm_then_resumed(cfg, tmp_path):
    run_dir = tmp_path / "cpt-kill"
    env = {**os.environ, "MEDADAPT_DATA_DIR": cfg.paths.data_dir, "MEDADAPT_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "trainers.cpt", "--config", "configs/offline/cpt.yaml", "--output_dir", str(run_dir),
           f"base_model={cfg.model.name_or_path}", "max_steps=12", "max_length=64", "max_samples=200",
           "save_steps=2", "eval_fraction=0", "report_to=none", "per_device_batch_size=2",
           "gradient_accumulation_steps=1", "lora.r=4"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not list(ckpts.glob("checkpoint-*/trainer_state.json")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "stopped", status
    stopped_at = status["steps"]
    assert 2 <= stopped_at < 12 and (ckpts / f"checkpoint-{stopped_at}").is_dir()
    done = subprocess.run(cmd + ["--resume"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished" and status["steps"] == 12
    steps = [x["step"] for x in losses(run_dir) if "loss" in x]
    assert steps == list(range(1, 13))  # 1..k before the kill, k+1..12 after the resume
    assert (run_dir / "adapter" / "README.md").exists()


def test_truncate_log_drops_lines_past_the_checkpoint(tmp_path):
    from medadapt.jobs.rundir import RunDir

    run = RunDir(tmp_path / "r").create()
    for step in (1, 2, 3, 4):
        run.log({"step": step, "loss": 1.0})
    with run.log_file.open("a") as f:
        f.write('{"step": 5, "lo')  # torn by a kill
    assert run.truncate_log(2) == 3
    assert [r["step"] for r in run.read_log()] == [1, 2]


def test_resume_skips_a_checkpoint_cut_short(tmp_path):
    """A kill while checkpoint-6 was being written: resume uses checkpoint-4 and removes the half-written one."""
    from trainers.common import last_complete_checkpoint

    for n, complete in ((2, True), (4, True), (6, False), (10, False)):
        d = tmp_path / f"checkpoint-{n}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_complete_checkpoint(tmp_path / "none") is None
