"""Merging LoRA adapters into full models, for the seed's MSFT (``msft_stage2: merge``).

The seed merged its CPT adapter into the base (``merge_and_unload``, saved as float32) and trained a fresh r16 SFT
LoRA on that merged model; its published MSFT model is that SFT LoRA merged in turn. :func:`merge_adapter` does each
merge (float32, on the GPU when there is one), written atomically. The app serves one base model with adapters, so
the MSFT job then publishes the merged model's low-rank delta against the original base
(:func:`medadapt.delta.extract_delta`) as its ``adapter/`` (exact up to rounding: the delta's rank is at most the two
LoRA ranks together); :class:`FolderModel` lets the job's usual publish step copy that folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from medadapt.jobs.rundir import write_dir_atomic

DONE = ".merged"  # marker written last: a folder without it was cut short


def is_merged(folder: Path) -> bool:
    return (folder / DONE).exists()


def merge_adapter(base: str | Path, adapter: str | Path, out: Path, dtype: str = "float32") -> Path:
    """``base`` + LoRA ``adapter`` merged into full weights in ``out`` (model + tokenizer); reused when complete."""
    if is_merged(out):
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medadapt.models import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=getattr(torch, dtype)).to(device)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with write_dir_atomic(out) as tmp:
        merged.to("cpu").save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(str(base)).save_pretrained(tmp)
        (tmp / DONE).write_text(f"base: {base}\nadapter: {adapter}\n", encoding="utf-8")
    return out


class FolderModel:
    """A finished adapter folder standing in for a PEFT model at publish time (``save_pretrained`` copies it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def save_pretrained(self, dest: str | Path, **_: Any) -> None:
        for f in self.folder.iterdir():
            if f.is_file() and f.name not in ("medadapt.json", "README.md"):
                shutil.copy2(f, Path(dest) / f.name)
