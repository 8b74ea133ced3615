"""Read a run directory (docs/ARCHITECTURE.md, "Run directory contract"): ``status.json``, ``log.jsonl``,
``stdout.log``; summarize them into a :class:`RunSnapshot`. No processes here (see :mod:`medadapt.jobs`).
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

FINAL = ("finished", "failed", "stopped")
ACTIVE = ("starting", "running", "stopping")


@dataclass
class RunSnapshot:
    """What the UI shows about one run: status, progress, losses, error."""

    run_dir: Path
    job: str
    status: str  # starting | running | stopping | finished | failed | stopped | unknown
    config: str = ""
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    stage: str = ""
    elapsed_s: float | None = None
    eta_s: float | None = None
    tokens_per_s: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    wall_s: float | None = None
    error: str = ""
    adapter: str = ""
    started: float | None = None
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; a half-written last line or a corrupt line is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return parse_jsonl(text)


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # being written
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Rewrite a JSON file atomically (a tmp file in the same dir, then rename): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (None values dropped): how jobs write ``log.jsonl``."""
    line = json.dumps({k: v for k, v in record.items() if v is not None}, default=float)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def read_status(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / "status.json")


def write_status(run_dir: Path, data: dict[str, Any]) -> None:
    """Rewrite ``status.json`` atomically."""
    write_json_atomic(run_dir / "status.json", data)


def tail(path: Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a text file ('' if missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def file_sig(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of a file, or None if missing: a cheap "has it changed" key (a new inode means the
    file was replaced, e.g. a log rewritten on resume)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def pid_alive(pid: Any) -> bool:
    """True if process ``pid`` exists and is not a zombie."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def as_epoch(value: Any) -> float | None:
    """A timestamp written as epoch seconds or ISO 8601 → epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def latest(records: list[dict[str, Any]], key: str) -> Any:
    for rec in reversed(records):
        if rec.get(key) is not None:
            return rec[key]
    return None


def summarize(run_dir: Path, status: dict[str, Any], records: list[dict[str, Any]], state: str,
              error: str = "", config: str = "") -> RunSnapshot:
    """Build a :class:`RunSnapshot` from the parsed files of a run (no I/O)."""
    job = status.get("job") or run_dir.name.split("-")[0]
    stage = latest(records, "stage") or ""
    staged = [r for r in records if (r.get("stage") or "") == stage] if stage else records
    steps = [int(r["step"]) for r in staged if isinstance(r.get("step"), (int, float))]
    started = as_epoch(status.get("started"))
    elapsed = latest(records, "elapsed_s")
    if state in ACTIVE and started:
        elapsed = max(float(elapsed or 0.0), time.time() - started)
    final_loss, final_eval = status.get("final_loss"), status.get("final_eval_loss")
    return RunSnapshot(
        run_dir=run_dir, job=job, status=state, config=config,
        step=int(status["steps"]) if state == "finished" and status.get("steps") else max(steps, default=0),
        total_steps=latest(staged, "total_steps"), epoch=latest(records, "epoch"), stage=stage,
        elapsed_s=elapsed, eta_s=0.0 if state == "finished" else latest(staged, "eta_s"),
        tokens_per_s=latest(records, "tokens_per_s"),
        loss=final_loss if final_loss is not None else latest(records, "loss"),
        eval_loss=final_eval if final_eval is not None else latest(records, "eval_loss"),
        wall_s=status.get("wall_s"), error=error, adapter=status.get("adapter") or "", started=started,
        records=records,
    )
