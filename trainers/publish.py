"""Publish a trained adapter into its run dir: PEFT weights, tokenizer, ``medadapt.json`` and a README.md model card,
written to ``adapter.tmp-*`` and renamed (:func:`medadapt.jobs.rundir.publish_dir`), so an ``adapter/`` folder is always
complete. Under several ranks rank 0 writes it and the others wait until it is there.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from medadapt.jobs.rundir import publish_dir
from trainers import dist


def publish_adapter(model: Any, tokenizer: Any, dest: Path, meta: dict[str, Any],
                    state_dict: dict | None = None) -> Path:
    """Save a PEFT model's adapter + tokenizer + card + medadapt.json to ``dest`` atomically (tmp dir, rename).

    ``state_dict``: the full weights gathered from a sharded model (DeepSpeed ZeRO-3, FSDP); PEFT keeps the adapter's.
    """
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "medadapt.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(meta), encoding="utf-8")

    if dist.is_main():
        publish_dir(dest, fill)
    dist.barrier()
    return Path(dest)


def model_card(meta: dict[str, Any]) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) from the adapter's ``medadapt.json``."""
    cfg = meta.get("config", {})
    lora = cfg.get("lora", {})
    data = meta.get("data", {})
    base = meta.get("base_model_id") or meta.get("base_model")
    front = {"base_model": base, "library_name": "peft",
             "tags": ["medadapt", meta.get("job"), "lora", "medical"], "pipeline_tag": "text-generation"}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# MedAdapt {str(meta.get('job', '')).upper()} adapter", "",
             f"LoRA adapter for `{base}` trained by `python -m trainers.{meta.get('job')}` "
             f"(profile `{cfg.get('profile')}`).", "", "## Training", "",
             "| | |", "| --- | --- |"]
    rows = {
        "data": ", ".join(data.get("sources", [])) or "-",
        "train / eval examples": f"{data.get('train_examples', '-')} / {data.get('eval_examples', '-')}",
        "steps": meta.get("steps"),
        "final train loss": _fmt(meta.get("final_loss")),
        "final eval loss": _fmt(meta.get("final_eval_loss")),
        "wall time": f"{meta.get('wall_s', 0):.0f} s",
        "LoRA": f"r={lora.get('r')} alpha={lora.get('alpha')} dropout={lora.get('dropout')} rsLoRA={lora.get('use_rslora')}"
                f" targets={','.join(lora.get('target_modules', []))} modules_to_save={lora.get('modules_to_save')}",
        "sequence length / packing": f"{cfg.get('max_length')} / {cfg.get('packing')}",
        "batch x accumulation": f"{cfg.get('per_device_batch_size')} x {cfg.get('gradient_accumulation_steps')}",
        "learning rate / schedule": f"{cfg.get('learning_rate')} / {cfg.get('lr_scheduler')}",
        "4-bit / Unsloth / device": f"{meta.get('quantized')} / {meta.get('unsloth')} / {meta.get('device')}",
    }
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    if meta.get("lineage"):
        lines += ["", "## Lineage", ""] + [f"{i + 1}. {step}" for i, step in enumerate(meta["lineage"])]
    lines += ["", "## Full config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "-"
