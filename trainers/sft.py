"""Supervised fine-tuning on Question → CoT → Answer rows (LoRA; QLoRA/Unsloth on CUDA).

Run: ``python -m trainers.sft --config configs/offline/sft.yaml [--output_dir D] [--resume] [--max_steps N]
[key=value ...]``. Rows come from :mod:`medadapt.data.sft` (disjoint from the evaluated benchmark samples), are
formatted with the model's own chat template, reasoning in ``<think>`` before the answer, loss on the answer only.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

from medadapt.config import AppConfig, ConfigError, TrainConfig
from trainers.job import Context, Outcome, entry_points

log = logging.getLogger(__name__)
DESCRIPTION = __doc__.split("\n")[0]


def build_sft_data(tcfg: TrainConfig, app: AppConfig, tok: Any) -> tuple[list, list, dict[str, Any]]:
    """(train examples, eval examples, data info): tokenized rows with assistant-only labels, over-long rows dropped."""
    from collections import Counter

    from medadapt.data.sft import load_sft_rows, source_id
    from trainers.common import split_rows
    from trainers.formatting import PROMPTS, end_of_turn, seed_example, sft_example

    if tcfg.packing:
        raise ConfigError("packing is only supported for continual pretraining (cpt); set packing: false for SFT")
    if tcfg.prompt not in PROMPTS:
        raise ConfigError(f"prompt must be one of {', '.join(PROMPTS)}, not {tcfg.prompt!r}")
    rows = load_sft_rows(app, tcfg.dataset)
    positions = [int(source_id(r.id)) if source_id(r.id).isdigit() else i for i, r in enumerate(rows)]
    train_rows, eval_rows = split_rows(rows, tcfg, positions)
    eot = end_of_turn(tok) if tcfg.prompt != "seed" else ""

    def encode(rs: list) -> tuple[list, int]:
        """(row, example) pairs of ``rs`` that fit ``max_length``, and how many did not."""
        if tcfg.prompt == "seed":  # cut at max_length as the seed's trainer did, none dropped
            return [(r, seed_example(tok, r.question, r.cot, r.answer, tcfg.max_length)) for r in rs], 0
        out = [(r, sft_example(tok, r.question, r.cot, r.answer, tcfg.system_prompt or None, eot, tcfg.prompt,
                               app.model.system_prompt, r.posed)) for r in rs]
        kept = [(r, e) for r, e in out if len(e["input_ids"]) <= tcfg.max_length]
        return kept, len(out) - len(kept)

    train, dropped_train = encode(train_rows)
    evals, dropped_eval = encode(eval_rows)
    if not train:
        raise ConfigError(f"no SFT example fits max_length={tcfg.max_length}")
    info = {"sources": sorted({r.source for r in rows}), "rows_by_source": dict(Counter(r.source for r in train_rows)),
            "train_examples": len(train), "eval_examples": len(evals),
            "dropped_too_long": dropped_train + dropped_eval,
            "prompt": tcfg.prompt, "split": tcfg.split,
            "excluded_eval_items": {"benchmarks": list(app.eval.benchmarks), "n": app.eval.n, "seed": app.eval.seed}}
    log.info("SFT data: %s", info)
    return [e for _, e in train], [e for _, e in evals], info


def train_sft(ctx: Context, *, adapter: str | None = None, stage: str = "", ckpt_stage: str = "",
              step_offset: int = 0, data: tuple | None = None) -> Outcome:
    """Load the model (optionally continuing ``adapter``), build the data and train; the caller publishes."""
    from trainers.job import train_adapter

    return train_adapter(ctx, "sft", build_sft_data, adapter=adapter, data=data, ckpt_stage=ckpt_stage, stage=stage,
                         step_offset=step_offset)


run, main = entry_points("sft", DESCRIPTION, train_sft)


if __name__ == "__main__":
    sys.exit(main())
