"""The run directory contract (docs/ARCHITECTURE.md): config.yaml, log.jsonl, status.json, checkpoints/, adapter/.

status.json is rewritten atomically (tmp + rename); the adapter is published atomically (``adapter.tmp-*`` + rename)
with a README.md model card and ``medadapt.json``, so an ``adapter/`` folder is always complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from medadapt.config import AppConfig, TrainConfig, to_dict
from medadapt.runlog import append_jsonl, read_json, write_json_atomic  # noqa: F401  (re-exported)


def new_run_dir(app: AppConfig, tcfg: TrainConfig) -> Path:
    """``tcfg.output_dir`` or ``<runs_dir>/<profile>/<job>-<YYYYmmdd-HHMMSS>`` (suffixed if taken)."""
    if tcfg.output_dir:
        return Path(tcfg.output_dir).expanduser().resolve()
    root = app.paths.resolve("runs_dir") / app.profile
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / f"{tcfg.job}-{stamp}", 1
    while path.exists():
        n += 1
        path = root / f"{tcfg.job}-{stamp}-{n}"
    return path


def latest_unfinished(app: AppConfig, job: str) -> Path | None:
    """The newest run of ``job`` in the active profile whose status is not ``finished`` (for ``--resume``)."""
    root = app.paths.resolve("runs_dir") / app.profile
    for run in sorted(root.glob(f"{job}-*"), key=lambda p: p.name, reverse=True):
        status = read_json(run / "status.json")
        if status.get("status") != "finished":
            return run
    return None




class RunDir:
    """One run's folder: status, log and config writers plus the adapter publisher."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.status_file = self.path / "status.json"
        self.log_file = self.path / "log.jsonl"
        self.stop_file = self.path / "STOP"
        self.adapter = self.path / "adapter"

    def checkpoints(self, stage: str = "") -> Path:
        return self.path / "checkpoints" / stage if stage else self.path / "checkpoints"

    def write_config(self, tcfg: TrainConfig) -> None:
        text = yaml.safe_dump(to_dict(tcfg), sort_keys=False)
        (self.path / "config.yaml").write_text(text, encoding="utf-8")

    def status(self) -> dict[str, Any]:
        return read_json(self.status_file)

    def update_status(self, **fields: Any) -> dict[str, Any]:
        data = {**self.status(), **fields}
        write_json_atomic(self.status_file, data)
        return data

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.log_file, record)

    def truncate_log(self, last_step: int) -> int:
        """Drop log lines past ``last_step`` (steps a killed run logged after its last checkpoint, which a resumed
        run logs again), rewriting the file atomically; returns how many lines were dropped."""
        if not self.log_file.exists():
            return 0
        lines = self.log_file.read_text(encoding="utf-8").splitlines()
        keep = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from the kill
            if int(rec.get("step", 0)) <= last_step:
                keep.append(line)
        tmp = self.log_file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        os.replace(tmp, self.log_file)
        return len(lines) - len(keep)

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def publish_adapter(model: Any, tokenizer: Any, dest: Path, meta: dict[str, Any]) -> Path:
    """Save a PEFT model's adapter + tokenizer + card + medadapt.json to ``dest`` atomically (tmp dir, rename)."""
    dest = Path(dest)
    for stale in dest.parent.glob(dest.name + ".tmp-*"):  # left by a publish that was killed (one job per run dir)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    os.chmod(tmp, 0o755)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    (tmp / "medadapt.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    (tmp / "README.md").write_text(model_card(meta), encoding="utf-8")
    if dest.exists():  # re-publishing (e.g. a resumed run): move the old one aside first
        old = dest.with_name(dest.name + f".old-{int(time.time())}")
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


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
