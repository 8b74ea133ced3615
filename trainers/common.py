"""Model, quantization and LoRA setup from a :class:`TrainConfig`, plus the HF Trainer loop every job shares.

CUDA: 4-bit QLoRA through bitsandbytes when ``load_in_4bit``, Unsloth when ``use_unsloth`` is ``auto``/``true`` and
importable (imported lazily, before transformers' trainer). CPU: no quantization, no gradient checkpointing,
``use_cpu``, fp32 (``precision: bf16`` opts into bf16 mixed precision).
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medadapt.config import AppConfig, ConfigError, LoraConfig, TrainConfig, load_config
from trainers import dist

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where and how a job trains."""

    cuda: bool
    quantized: bool
    unsloth: bool
    precision: str = "fp32"  # bf16 | fp16 | fp32 (medadapt.precision.train_precision)

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def record(self) -> dict[str, Any]:
        """What an adapter's ``medadapt.json`` says about how it was trained."""
        return {"device": self.device, "quantized": self.quantized, "unsloth": self.unsloth,
                "precision": self.precision}


@dataclass
class StageResult:
    stopped: bool
    steps: int
    final_loss: float | None
    final_eval_loss: float | None
    state_dict: dict | None = None  # DeepSpeed / FSDP: the gathered weights, to publish from rank 0


def app_config(tcfg: TrainConfig) -> AppConfig:
    return load_config(tcfg.profile)


def base_model(tcfg: TrainConfig, app: AppConfig) -> str:
    """``tcfg.base_model`` or the profile's model (the offline SmolLM2 is converted to a HF folder once)."""
    from medadapt.models import base_model_path, resolve_model_path

    if tcfg.base_model:
        return resolve_model_path(tcfg.base_model, app.paths.resolve("cache_dir"), app.model.dtype)
    return base_model_path(app)


def runtime(tcfg: TrainConfig) -> Runtime:
    """Decide CUDA / 4-bit / Unsloth; imports Unsloth first (it must patch transformers before use)."""
    import torch

    cuda = torch.cuda.is_available()
    if tcfg.use_unsloth not in ("auto", "true", "false", True, False):
        raise ConfigError(f"use_unsloth must be auto, true or false, not {tcfg.use_unsloth!r}")
    want = str(tcfg.use_unsloth).lower()
    has = cuda and importlib.util.find_spec("unsloth") is not None
    if want == "true" and not has:
        raise ConfigError("use_unsloth=true needs CUDA and the unsloth package (pip install -r requirements-gpu.txt)")
    unsloth = has and want in ("auto", "true")
    if unsloth:
        import unsloth  # noqa: F401  (patches transformers/peft/trl)
    from medadapt.precision import train_precision

    return Runtime(cuda=cuda, quantized=cuda and bool(tcfg.load_in_4bit), unsloth=unsloth,
                   precision=train_precision(tcfg.precision, cuda))


def lora_kwargs(tcfg: TrainConfig) -> dict[str, Any]:
    lc = tcfg.lora
    return {"r": lc.r, "lora_alpha": lc.alpha, "lora_dropout": lc.dropout, "target_modules": list(lc.target_modules),
            "use_rslora": lc.use_rslora, "modules_to_save": list(lc.modules_to_save) or None}


def load_trainable(tcfg: TrainConfig, model_path: str, rt: Runtime, adapter: str | None = None) -> tuple[Any, Any]:
    """(PEFT model ready to train, tokenizer). ``adapter``: continue training that LoRA adapter instead of a new one;
    a new one is initialised from ``tcfg.seed``, so two runs with one seed start from the same weights."""
    from medadapt.models import load_tokenizer

    if rt.unsloth:
        return _load_unsloth(tcfg, model_path, adapter)
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from medadapt.precision import TORCH_DTYPE

    kwargs: dict[str, Any] = {"dtype": getattr(torch, TORCH_DTYPE[rt.precision])}
    if rt.quantized:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
        kwargs["device_map"] = {"": dist.local_rank()}  # each rank on its own GPU
    tok = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if rt.quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    else:  # the LoRA init draws from the global RNG before the Trainer seeds it: seed it here (Unsloth: random_state)
        from transformers import set_seed

        set_seed(tcfg.seed)
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(tcfg)))
    if not rt.quantized:  # mixed precision: what trains keeps fp32 weights (PEFT does so for LoRA, not modules_to_save)
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    return model, tok


def _load_unsloth(tcfg: TrainConfig, model_path: str, adapter: str | None) -> tuple[Any, Any]:
    from unsloth import FastLanguageModel

    model, tok = FastLanguageModel.from_pretrained(
        model_name=model_path, max_seq_length=tcfg.max_length, load_in_4bit=bool(tcfg.load_in_4bit), dtype=None)
    # A continued adapter (MSFT stage 2 on the CPT adapter) gets a LoRA of its shape through get_peft_model, so it
    # trains with Unsloth's gradient checkpointing like a fresh one, then its weights are loaded into it.
    kw = lora_kwargs(adapter_lora_config(adapter, tcfg) if adapter else tcfg)
    model = FastLanguageModel.get_peft_model(
        model, r=kw["r"], lora_alpha=kw["lora_alpha"], lora_dropout=kw["lora_dropout"],
        target_modules=kw["target_modules"], use_rslora=kw["use_rslora"], modules_to_save=kw["modules_to_save"],
        use_gradient_checkpointing="unsloth", random_state=tcfg.seed)
    if adapter:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        result = set_peft_model_state_dict(model, load_peft_weights(adapter, device="cpu"))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise ValueError(f"adapter {adapter}: {len(missing)} LoRA weights not loaded, e.g. {missing[0]}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def adapter_lora(adapter: Path, fallback: LoraConfig) -> LoraConfig:
    """The LoRA shape of a saved PEFT adapter (what the SFT stage really trains), for the config and model card."""
    from medadapt.jobs.rundir import read_json

    ac = read_json(adapter / "adapter_config.json")
    if not ac:
        return fallback
    targets = ac.get("target_modules") or fallback.target_modules
    return LoraConfig(r=ac.get("r", fallback.r), alpha=ac.get("lora_alpha", fallback.alpha),
                      dropout=ac.get("lora_dropout", fallback.dropout),
                      target_modules=sorted(targets) if isinstance(targets, (list, set)) else [targets],
                      use_rslora=ac.get("use_rslora", fallback.use_rslora),
                      modules_to_save=list(ac.get("modules_to_save") or []))


def adapter_lora_config(adapter: str, tcfg: TrainConfig) -> TrainConfig:
    """``tcfg`` with the LoRA shape of a saved adapter (what continuing it trains)."""
    import dataclasses

    return dataclasses.replace(tcfg, lora=adapter_lora(Path(adapter), tcfg.lora))


def report_to(tcfg: TrainConfig, run_dir: Path) -> str:
    """``auto``: wandb (offline unless ``WANDB_API_KEY``) when installed, else none."""
    choice = tcfg.report_to
    if choice == "auto":
        choice = "wandb" if importlib.util.find_spec("wandb") is not None else "none"
    if choice == "wandb":
        os.environ.setdefault("WANDB_MODE", "online" if os.environ.get("WANDB_API_KEY") else "offline")
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_PROJECT", "medadapt")
    return choice


def planned_steps(tcfg: TrainConfig, n_train: int, world: int | None = None) -> int:
    """Optimizer steps the Trainer will run: ``max_steps``, else epochs x ceil(batches / accumulation); each of the
    ``world`` ranks (default: this launch's) sees ``ceil(n_train / world)`` examples."""
    if tcfg.max_steps and tcfg.max_steps > 0:
        return tcfg.max_steps
    per_rank = math.ceil(n_train / max(1, world or dist.world_size()))
    batches = math.ceil(per_rank / max(1, tcfg.per_device_batch_size))
    return max(1, math.ceil(math.ceil(batches / max(1, tcfg.gradient_accumulation_steps)) * tcfg.num_epochs))


def split_rows(rows: list, tcfg: TrainConfig, positions: list[int] | None = None,
               preshuffle: bool = False) -> tuple[list, list]:
    """(train, held out) as ``tcfg.split`` says: :func:`split_eval` (``shuffle``) or :func:`seed_split` (``seed``)."""
    if tcfg.split == "seed":
        return seed_split(rows, tcfg, positions, preshuffle)
    if tcfg.split != "shuffle":
        raise ConfigError(f"split must be shuffle or seed, not {tcfg.split!r}")
    return split_eval(rows, tcfg)


def seed_split(rows: list, tcfg: TrainConfig, positions: list[int] | None = None,
               preshuffle: bool = False) -> tuple[list, list]:
    """The seed notebooks' split, index for index: the dataset's first ``max_samples`` rows (all when 0), optionally
    ``Dataset.shuffle(seed)`` (CPT), then ``Dataset.train_test_split(test_size=eval_fraction, seed)``.

    ``positions``: each row's index in the source dataset (rows removed upstream, e.g. for overlapping an evaluated
    item, leave their index out, so every other row lands where the notebook put it).
    """
    from datasets import Dataset

    positions = list(range(len(rows))) if positions is None else positions
    n = tcfg.max_samples if tcfg.max_samples and tcfg.max_samples > 0 else (max(positions) + 1 if positions else 0)
    ds = Dataset.from_dict({"i": list(range(n))})
    if preshuffle:
        ds = ds.shuffle(seed=tcfg.seed)
    parts = ds.train_test_split(test_size=tcfg.eval_fraction, seed=tcfg.seed)
    by_pos = {p: r for p, r in zip(positions, rows) if p < n}
    train = [by_pos[i] for i in parts["train"]["i"] if i in by_pos]
    test = [by_pos[i] for i in parts["test"]["i"] if i in by_pos]
    if tcfg.max_eval_samples > 0:
        test = test[: tcfg.max_eval_samples]
    return train, test


def split_eval(rows: list, tcfg: TrainConfig) -> tuple[list, list]:
    """Seeded shuffle, ``max_samples`` cap, then ``eval_fraction`` (at most ``max_eval_samples``) held out."""
    rows = list(rows)
    random.Random(tcfg.seed).shuffle(rows)
    if tcfg.max_samples and tcfg.max_samples > 0:
        rows = rows[: tcfg.max_samples]
    n_eval = int(len(rows) * tcfg.eval_fraction) if tcfg.eval_fraction > 0 else 0
    if tcfg.eval_fraction > 0 and len(rows) > 1:
        n_eval = max(1, n_eval)
    n_eval = min(n_eval, tcfg.max_eval_samples) if tcfg.max_eval_samples > 0 else n_eval
    return rows[n_eval:], rows[:n_eval]


def optimizer_name(tcfg: TrainConfig, rt: Runtime) -> str:
    """``optim``: ``auto`` is paged 8-bit AdamW for 4-bit training, else AdamW; 8-bit optimizers need CUDA
    (bitsandbytes), so on CPU they fall back to AdamW."""
    if tcfg.optim == "auto":
        return "paged_adamw_8bit" if rt.quantized else "adamw_torch"
    if "8bit" in tcfg.optim and not rt.cuda:
        log.warning("optim %s needs CUDA; using adamw_torch on the CPU", tcfg.optim)
        return "adamw_torch"
    return tcfg.optim


def training_args(tcfg: TrainConfig, ckpt_dir: Path, rt: Runtime, has_eval: bool, report: str, run_name: str):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir), run_name=run_name, seed=tcfg.seed, data_seed=tcfg.seed,
        per_device_train_batch_size=tcfg.per_device_batch_size, per_device_eval_batch_size=tcfg.per_device_batch_size,
        gradient_accumulation_steps=tcfg.gradient_accumulation_steps, learning_rate=tcfg.learning_rate,
        lr_scheduler_type=tcfg.lr_scheduler, warmup_steps=tcfg.warmup_steps or tcfg.warmup_ratio,
        weight_decay=tcfg.weight_decay, num_train_epochs=tcfg.num_epochs,
        max_steps=tcfg.max_steps if tcfg.max_steps and tcfg.max_steps > 0 else -1,
        logging_steps=tcfg.logging_steps, save_strategy="steps", save_steps=tcfg.save_steps,
        save_total_limit=tcfg.save_total_limit, eval_strategy="steps" if has_eval else "no",
        eval_steps=tcfg.eval_steps if has_eval else None, report_to=report, use_cpu=not rt.cuda,
        bf16=rt.precision == "bf16", fp16=rt.precision == "fp16", gradient_checkpointing=rt.cuda and not rt.unsloth,
        gradient_checkpointing_kwargs={"use_reentrant": False} if rt.cuda and not rt.unsloth else None,
        optim=optimizer_name(tcfg, rt), remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, disable_tqdm=True,
        save_only_model=False, **dist.trainer_kwargs(tcfg, rt.cuda),
    )


def embedding_lr_trainer(base: type, lr: float) -> type:
    """A Trainer whose optimizer gives ``modules_to_save`` weights (the CPT's ``embed_tokens``/``lm_head``) their own
    learning rate ``lr``, as Unsloth's ``embedding_learning_rate`` (weight decay groups kept)."""

    class EmbeddingLrTrainer(base):
        def create_optimizer(self, model=None):
            opt = super().create_optimizer(model)
            model = model if model is not None else self.model
            embedding = {id(p) for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n}
            for group in list(opt.param_groups):
                moved = [p for p in group["params"] if id(p) in embedding]
                if moved:
                    group["params"] = [p for p in group["params"] if id(p) not in embedding]
                    opt.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": moved,
                                         "lr": lr})
            opt.param_groups[:] = [g for g in opt.param_groups if g["params"]]
            return opt

    return EmbeddingLrTrainer


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` the Trainer finished writing (it writes ``trainer_state.json`` last); newer ones
    that a kill cut short are removed, so a resumed run never loads half a checkpoint."""
    import shutil

    found = sorted((p for p in Path(ckpt_dir).glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit()),
                   key=lambda p: int(p.name.rsplit("-", 1)[-1]), reverse=True)
    for path in found:
        if (path / "trainer_state.json").exists():
            return str(path)
        log.warning("removing %s: a checkpoint cut short (no trainer_state.json)", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def train_stage(tcfg: TrainConfig, model: Any, tok: Any, train: list, evals: list, ckpt_dir: Path, rt: Runtime,
                run: Any, stop: Any, *, stage: str = "", step_offset: int = 0, extra_total: int = 0,
                resume: bool = False, run_name: str = "") -> StageResult:
    """Train ``model`` on token examples, logging to ``run`` and checkpointing to ``ckpt_dir``."""
    from transformers import Trainer

    from trainers.callbacks import JsonlLogCallback, StopCallback
    from trainers.formatting import PadCollator

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = last_complete_checkpoint(ckpt_dir) if resume else None
    logcb, stopcb = JsonlLogCallback(run, stage, step_offset, extra_total), StopCallback(stop)
    args = training_args(tcfg, ckpt_dir, rt, bool(evals), report_to(tcfg, run.path), run_name or run.path.name)
    trainer_cls = embedding_lr_trainer(Trainer, tcfg.embedding_learning_rate) if tcfg.embedding_learning_rate else Trainer
    trainer = trainer_cls(model=model, args=args, train_dataset=train, eval_dataset=evals or None,
                      data_collator=PadCollator(tok.pad_token_id, targets_only=not rt.unsloth),
                      processing_class=tok,
                      callbacks=[logcb, stopcb])
    if resume:  # steps logged after the last checkpoint are trained (and logged) again: drop the old lines
        done = int(Path(last).name.rsplit("-", 1)[1]) if last else 0
        dropped = run.truncate_log(step_offset + done) if dist.is_main() else 0
        log.info("resuming from %s (%d log lines past it dropped)", last or "the start of this stage", dropped)
    trainer.train(resume_from_checkpoint=last)
    stopped = stopcb.stopped_at is not None
    step = trainer.state.global_step
    if evals and not stopped and not any(h.get("step") == step and "eval_loss" in h for h in trainer.state.log_history):
        trainer.evaluate()
    state_dict = None
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:  # sharded weights: gathered (every rank takes part)
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    return StageResult(stopped, trainer.state.global_step, logcb.last.get("loss"), logcb.last.get("eval_loss"),
                       state_dict)
