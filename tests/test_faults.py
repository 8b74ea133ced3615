"""Faults: an index build and a training job SIGKILLed mid-way, then rerun. They resume, nothing is duplicated or
lost, and no half-written artifact is ever shown (the retriever refuses a partial table; no partial adapter)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medadapt.config import REPO_ROOT, load_config

pytestmark = pytest.mark.slow


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env={**os.environ, **env},
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(pred, proc: subprocess.Popen, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_index_build_killed_then_resumed(tmp_path):
    import lancedb

    from medadapt.retrieval.rag import IndexNotBuiltError, Retriever

    n = 800
    book = tmp_path / "data" / "medrag_textbooks" / "Synthetic_Book.jsonl"
    book.parent.mkdir(parents=True)
    with book.open("w") as f:
        for i in range(n):
            text = f"Snippet {i} about organ {i % 37} and enzyme {i % 53}: " + "clinical detail " * (5 + i % 20)
            f.write(json.dumps({"id": f"Synthetic_Book_{i}", "title": "Synthetic", "content": text}) + "\n")
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({
        "rag": {"corpus": ["local:medrag_textbooks"], "table": "faults", "embed_chunk_rows": 100},
        "paths": {"data_dir": str(tmp_path / "data"), "index_dir": str(tmp_path / "index")},
    }))
    cfg = load_config(str(profile))

    def rows() -> int:
        try:
            return lancedb.connect(str(tmp_path / "index")).open_table("faults").count_rows()
        except Exception:  # table not created yet
            return 0

    log = tmp_path / "build.log"
    proc = spawn(["-m", "medadapt.retrieval", "--profile", str(profile), "build"], {}, log)
    wait_until(lambda: rows() >= 200, proc, 240, "the first chunks to be committed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = rows()
    assert 0 < partial < n, log.read_text()[-2000:]
    with pytest.raises(IndexNotBuiltError, match="did not finish"):
        Retriever.open(cfg)  # a half-built table is never served

    proc = spawn(["-m", "medadapt.retrieval", "--profile", str(profile), "build"], {}, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-2000:]
    assert f"{partial} of {n} snippets present" in log.read_text()
    tbl = lancedb.connect(str(tmp_path / "index")).open_table("faults")
    ids = tbl.to_arrow().column("id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n
    hits = Retriever.open(cfg).retrieve("enzyme 7 organ 7", k=3)
    assert len(hits) == 3


def test_training_killed_with_sigkill_then_resumed(cfg, tmp_path):
    from medadapt.jobs.runner import JobManager

    run_dir = tmp_path / "cpt-sigkill"
    env = {"MEDADAPT_DATA_DIR": cfg.paths.data_dir, "MEDADAPT_RUNS_DIR": str(tmp_path / "runs")}
    args = ["-m", "trainers.cpt", "--config", "configs/offline/cpt.yaml", "--output_dir", str(run_dir),
            f"base_model={cfg.model.name_or_path}", "max_steps=12", "max_length=64", "max_samples=200", "save_steps=4",
            "eval_fraction=0", "report_to=none", "per_device_batch_size=2", "gradient_accumulation_steps=1",
            "lora.r=4"]
    log = tmp_path / "train.log"
    proc = spawn(args, env, log)

    def logged_steps() -> list[int]:
        path = run_dir / "log.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(x)["step"] for x in lines if x.strip().endswith("}") and '"loss"' in x]

    ckpts = run_dir / "checkpoints"

    def past_checkpoint() -> bool:  # a checkpoint exists and a later step was logged: the kill loses that step
        done = [int(p.parent.name.split("-")[1]) for p in ckpts.glob("checkpoint-*/trainer_state.json")]
        return bool(done) and max(logged_steps(), default=0) > max(done)

    wait_until(past_checkpoint, proc, 300, "a checkpoint and a step past it")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = logged_steps()
    assert before and before[-1] < 12
    assert not (run_dir / "adapter").exists() and not list(run_dir.glob("adapter.tmp-*"))  # nothing half-published
    snap = JobManager(cfg).poll(run_dir)
    assert snap.status == "failed"  # a dead process with status "running" is reported, never a silent stall

    proc = spawn([*args, "--resume"], env, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished" and status["steps"] == 12
    assert logged_steps() == list(range(1, 13))  # steps replayed after the checkpoint not logged twice, none lost
    assert (run_dir / "adapter" / "adapter_config.json").exists() and (run_dir / "adapter" / "README.md").exists()
