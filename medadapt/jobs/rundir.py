"""The run directory contract (docs/ARCHITECTURE.md): its file names, writer, reader and atomic JSON, in one place.

Trainers, eval runs, index builds, the first-run setup, :mod:`medadapt.jobs.runner` and the tests' fake trainer all write
and read run dirs through this module. Stdlib + PyYAML only (no torch): the web server reads runs with it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

TRAIN_JOBS = ("sft", "cpt", "msft")  # run dirs are <job>-<time>; these jobs publish an adapter
INDEX_JOB = "index"  # the RAG index build (python -m medadapt.retrieval build --output_dir RUN), see medadapt.retrieval.index_job
DELTA_JOB = "delta"  # a published full model's delta published as an adapter (medadapt.delta_job)
FINAL = ("finished", "failed", "stopped")
ACTIVE = ("starting", "running", "stopping")


# ---------------------------------------------------------------- JSON files

def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Rewrite a JSON file atomically (a hidden tmp file in the same dir, then rename): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=1, default=str, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def write_dir_atomic(out: Path) -> Iterator[Path]:
    """Fill a hidden temporary folder next to ``out`` (yielded), then put it in place of ``out`` in one rename: a
    reader never sees half a folder; an error removes the temporary folder and leaves ``out`` as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (None values dropped): how jobs write ``log.jsonl``."""
    line = json.dumps({k: v for k, v in record.items() if v is not None}, default=float)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """The complete JSON-object lines of ``text``; a half-written last line or a corrupt line is skipped."""
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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return parse_jsonl(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


def publish_dir(dest: Path, fill: Callable[[Path], None]) -> Path:
    """Publish a folder atomically: ``fill`` writes into ``<dest>.tmp-*``, which then replaces ``dest``."""
    dest = Path(dest)
    for stale in dest.parent.glob(dest.name + ".tmp-*"):  # left by a publish that was killed (one job per run dir)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    os.chmod(tmp, 0o755)
    fill(tmp)
    if dest.exists():  # re-publishing (e.g. a resumed run): move the old one aside first
        old = dest.with_name(dest.name + f".old-{int(time.time())}")
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------- where runs live

def runs_root(cfg: Any) -> Path:
    """``<runs_dir>/<profile>``: the runs of the active profile."""
    return cfg.paths.resolve("runs_dir") / cfg.profile


def new_run_dir(root: Path, job: str) -> Path:
    """``<root>/<job>-<YYYYmmdd-HHMMSS>`` (suffixed ``-2``, ``-3`` … if taken); not created."""
    base = Path(root) / f"{job}-{datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def latest_unfinished(root: Path, job: str) -> Path | None:
    """The newest run of ``job`` under ``root`` whose status is not ``finished`` (for ``--resume``)."""
    for run in sorted(Path(root).glob(f"{job}-*"), key=lambda p: p.name, reverse=True):
        if RunDir(run).status().get("status") != "finished":
            return run
    return None


# ---------------------------------------------------------------- one run

class RunDir:
    """One run's folder: the contract's file names, the status/log/config writers and readers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.status_file = self.path / "status.json"
        self.log_file = self.path / "log.jsonl"
        self.stop_file = self.path / "STOP"
        self.stdout_file = self.path / "stdout.log"
        self.config_file = self.path / "config.yaml"
        self.launch_yaml = self.path / "launch.yaml"
        self.launch_json = self.path / "launch.json"
        self.adapter = self.path / "adapter"

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def checkpoints(self, stage: str = "") -> Path:
        return self.path / "checkpoints" / stage if stage else self.path / "checkpoints"

    def has_checkpoint(self) -> bool:
        return any(self.checkpoints().rglob("checkpoint-*"))  # MSFT: checkpoints/<stage>/checkpoint-N

    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    def write_config(self, data: dict[str, Any]) -> None:
        self.config_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    def status(self) -> dict[str, Any]:
        return read_json(self.status_file)

    def write_status(self, data: dict[str, Any]) -> dict[str, Any]:
        """Replace ``status.json`` (atomically)."""
        write_json_atomic(self.status_file, data)
        return data

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``status.json`` (atomically); returns the new status."""
        return self.write_status({**self.status(), **fields})

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.log_file, record)

    def read_log(self) -> list[dict[str, Any]]:
        return read_jsonl(self.log_file)

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

    def launch_source(self) -> str:
        """What the run was launched from (``launch.json``'s config label; ``(command line)`` for a shell run)."""
        launch = read_json(self.launch_json)
        if launch:
            return str(launch.get("config", ""))
        return "(command line)" if self.config_file.exists() else ""


class LogReader:
    """Parsed ``log.jsonl`` of many runs; each call reads only the bytes appended since the last one."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, tuple | None, list[dict[str, Any]]]] = {}

    def records(self, run_dir: Path) -> list[dict[str, Any]]:
        path = RunDir(run_dir).log_file
        sig = file_sig(path)
        if sig is None:
            return []
        offset, old_sig, records = self._seen.get(run_dir, (0, None, []))
        if sig == old_sig:
            return records
        if sig[0] < offset or (old_sig is not None and sig[2] != old_sig[2]):  # rewritten or truncated: start over
            offset, records = 0, []
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            return records
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a half-written last line waits for the next call
        records = records + parse_jsonl(complete.decode("utf-8", errors="replace"))
        self._seen[run_dir] = (offset + len(complete), sig, records)
        return records


# ---------------------------------------------------------------- reading a run

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


def running_pids(runs_dir: Path) -> list[int]:
    """PIDs of the jobs whose ``status.json`` under ``<runs_dir>/<profile>/<run>/`` says running."""
    status = (read_json(p) for p in Path(runs_dir).glob("*/*/status.json"))
    return [int(s["pid"]) for s in status if s.get("status") == "running" and s.get("pid")]


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
