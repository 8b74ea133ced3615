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
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_index_build_killed_then_resumed(tmp_path):
    import lancedb

    from medadapt.rag import IndexNotBuiltError, Retriever

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
    proc = spawn(["-m", "medadapt.rag", "--profile", str(profile), "build"], {}, log)
    wait_until(lambda: rows() >= 200, proc, 240, "the first chunks to be committed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = rows()
    assert 0 < partial < n, log.read_text()[-2000:]
    with pytest.raises(IndexNotBuiltError, match="did not finish"):
        Retriever.open(cfg)  # a half-built table is never served

    proc = spawn(["-m", "medadapt.rag", "--profile", str(profile), "build"], {}, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-2000:]
    assert f"{partial} of {n} snippets present" in log.read_text()
    tbl = lancedb.connect(str(tmp_path / "index")).open_table("faults")
    ids = tbl.to_arrow().column("id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n
    hits = Retriever.open(cfg).retrieve("enzyme 7 organ 7", k=3)
    assert len(hits) == 3
