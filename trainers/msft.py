"""MSFT: continual pretraining on the corpus, then SFT on top of the CPT-adapted model, as one job.

Run: ``python -m trainers.msft --config configs/offline/msft.yaml [--output_dir D] [--resume] [key=value ...]``.
The YAML's top-level keys configure the SFT stage; its ``cpt:`` mapping configures the CPT stage (on top of the
TrainConfig defaults; ``profile``, ``base_model``, ``seed``, ``load_in_4bit``, ``use_unsloth``, ``precision``,
``report_to`` and ``logging_steps`` are inherited). The SFT stage continues training the CPT adapter, so the
published MSFT adapter is one PEFT adapter on the unchanged base model (the engine can serve it next to the SFT
adapter); its LoRA shape is therefore the CPT stage's. The intermediate adapter is published to
``<run>/cpt_adapter/``; ``--resume`` skips a finished CPT stage. Set ``cpt_adapter: <folder>`` to skip CPT and start
from an existing CPT adapter.

``msft_stage2: merge`` (the seed's recipe, ``configs/study/msft.yaml``): the CPT adapter is merged into the base
(``<run>/cpt_merged/``), a fresh LoRA of the SFT config's shape is trained on that model, merged in turn
(``<run>/merged/``, the full MSFT model as the seed published it), and the job's ``adapter/`` is that model's
low-rank delta against the base (rank = CPT rank + SFT rank, so exact up to rounding), served like any adapter.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
from pathlib import Path
from typing import Any

from medadapt.config import TrainConfig, from_dict, to_dict
from trainers import dist
from trainers.job import Context, Outcome, entry_points

log = logging.getLogger(__name__)
DESCRIPTION = __doc__.split("\n")[0]
INHERITED = ("profile", "base_model", "seed", "load_in_4bit", "use_unsloth", "precision", "report_to",
             "logging_steps")


def cpt_stage_config(tcfg: TrainConfig) -> TrainConfig:
    """The CPT stage's config: TrainConfig defaults, the inherited keys, then the ``cpt:`` mapping."""
    base = {k: getattr(tcfg, k) for k in INHERITED}
    return from_dict(TrainConfig, {**base, **dict(tcfg.cpt), "job": "cpt"}, "msft.cpt")


def train_msft(ctx: Context) -> Outcome:
    from medadapt.adapters import is_adapter_dir
    from medadapt.models import load_tokenizer
    from trainers.common import adapter_lora, planned_steps
    from trainers.cpt import train_cpt
    from trainers.job import base_model_id
    from medadapt.jobs.rundir import read_json
    from trainers.publish import publish_adapter
    from trainers.sft import build_sft_data, train_sft

    tcfg = ctx.tcfg
    ccfg = cpt_stage_config(tcfg)
    cpt_dir = ctx.run.path / "cpt_adapter"
    sft_data = build_sft_data(tcfg, ctx.app, load_tokenizer(ctx.model_path))
    sft_steps = planned_steps(tcfg, len(sft_data[0]))
    cpt_adapter = Path(tcfg.cpt_adapter).expanduser() if tcfg.cpt_adapter else None
    if cpt_adapter is None and is_adapter_dir(cpt_dir):
        cpt_adapter = cpt_dir  # resumed after a finished CPT stage
    cpt_info: dict[str, Any]
    if cpt_adapter is None:
        t0 = time.time()
        out = train_cpt(dataclasses.replace(ctx, tcfg=ccfg), stage="cpt", ckpt_stage="cpt", extra_total=sft_steps)
        if out.stopped:
            return out
        cpt_info = {"job": "cpt", "base_model": ctx.model_path, "base_model_id": base_model_id(ctx.tcfg, ctx.app),
                    "lineage": out.lineage, "steps": out.steps,
                    "final_loss": out.final_loss, "final_eval_loss": out.final_eval_loss, "data": out.data,
                    "wall_s": round(time.time() - t0, 1), "config": to_dict(ccfg), **ctx.rt.record()}
        cpt_adapter = publish_adapter(out.model, out.tokenizer, cpt_dir, cpt_info, out.state_dict)
        del out
        gc.collect()
    elif not is_adapter_dir(cpt_adapter):
        raise FileNotFoundError(f"cpt_adapter {cpt_adapter} is not a PEFT adapter folder")
    cpt_info = read_json(cpt_adapter / "medadapt.json")
    cpt_steps = int(cpt_info.get("steps") or 0)
    if tcfg.msft_stage2 == "merge":
        return _merged_stage2(ctx, cpt_adapter, cpt_info, sft_data)
    if tcfg.msft_stage2 != "continue":
        from medadapt.config import ConfigError

        raise ConfigError(f"msft_stage2 must be continue or merge, not {tcfg.msft_stage2!r}")
    tcfg.cpt_adapter = str(cpt_adapter)
    tcfg.lora = adapter_lora(cpt_adapter, tcfg.lora)
    if dist.is_main():
        ctx.run.write_config(to_dict(tcfg))
    log.info("SFT stage on top of %s (LoRA shape from the CPT adapter; lora.* of the SFT config is not used)",
             cpt_adapter)
    out = train_sft(ctx, adapter=str(cpt_adapter), stage="sft", ckpt_stage="sft", step_offset=cpt_steps,
                    data=sft_data)
    sft_info = out.data
    out.data = {"sources": list(cpt_info.get("data", {}).get("sources", [])) + list(sft_info.get("sources", [])),
                "train_examples": f"cpt {cpt_info.get('data', {}).get('train_examples')} blocks + "
                                  f"sft {sft_info.get('train_examples')} rows",
                "eval_examples": sft_info.get("eval_examples"), "cpt": cpt_info.get("data", {}), "sft": sft_info}
    out.lineage = [f"base: {ctx.model_path}",
                   f"cpt: {cpt_adapter} ({cpt_steps} steps on {', '.join(cpt_info.get('data', {}).get('sources', []))},"
                   f" final loss {cpt_info.get('final_loss')})",
                   f"sft: {out.steps} steps on {', '.join(sft_info.get('sources', []))}, continuing the CPT adapter"]
    out.steps += cpt_steps
    return out


def _merged_stage2(ctx: Context, cpt_adapter: Path, cpt_info: dict[str, Any], sft_data: tuple) -> Outcome:
    """The seed's stage 2: merge CPT into the base, train a fresh SFT LoRA on it, publish the merged model's delta."""
    from medadapt.delta import extract_delta
    from trainers.merge import FolderModel, merge_adapter
    from trainers.publish import publish_adapter
    from trainers.sft import train_sft

    tcfg, run = ctx.tcfg, ctx.run.path
    tcfg.cpt_adapter = str(cpt_adapter)
    ctx.run.write_config(to_dict(tcfg))
    cpt_steps = int(cpt_info.get("steps") or 0)
    merged_cpt = merge_adapter(ctx.model_path, cpt_adapter, run / "cpt_merged")
    log.info("SFT stage: a fresh r=%d LoRA on the merged CPT model %s", tcfg.lora.r, merged_cpt)
    out = train_sft(dataclasses.replace(ctx, model_path=str(merged_cpt)), stage="sft", ckpt_stage="sft",
                    step_offset=cpt_steps, data=sft_data)
    if out.stopped:
        return out
    sft_adapter = publish_adapter(out.model, out.tokenizer, run / "sft_adapter",
                                  {"job": "sft", "base_model": str(merged_cpt), "steps": out.steps,
                                   "config": to_dict(tcfg), "data": out.data})
    out.model = None
    gc.collect()
    merged = merge_adapter(merged_cpt, sft_adapter, run / "merged")
    rank = int(cpt_info.get("config", {}).get("lora", {}).get("r") or 0) + tcfg.lora.r
    delta = run / "delta"
    report = extract_delta(ctx.model_path, merged, delta, rank, dtype="float32", source=str(merged), kind="msft")
    sft_info = out.data
    out.model = FolderModel(delta)
    out.data = {"sources": list(cpt_info.get("data", {}).get("sources", [])) + list(sft_info.get("sources", [])),
                "train_examples": f"cpt {cpt_info.get('data', {}).get('train_examples')} examples + "
                                  f"sft {sft_info.get('train_examples')} rows",
                "eval_examples": sft_info.get("eval_examples"), "cpt": cpt_info.get("data", {}), "sft": sft_info,
                "delta": {k: v for k, v in report["delta"].items() if k != "energy_kept"}}
    out.lineage = [f"base: {ctx.model_path}",
                   f"cpt: {cpt_adapter} ({cpt_steps} steps), merged into {merged_cpt}",
                   f"sft: a fresh r={tcfg.lora.r} LoRA, {out.steps} steps on {', '.join(sft_info.get('sources', []))},"
                   f" merged into {merged}",
                   f"adapter: the rank-{rank} delta of {merged} against the base"]
    out.steps += cpt_steps
    return out


run, main = entry_points("msft", DESCRIPTION, train_msft)


if __name__ == "__main__":
    sys.exit(main())
