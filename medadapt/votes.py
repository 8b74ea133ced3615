"""Arena-style votes: "which answer is best?" appended to a JSONL file, and their tally."""
from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from medadapt.config import VARIANTS, AppConfig

CHOICES = (*VARIANTS, "all_bad")
_lock = threading.Lock()


class VoteError(ValueError):
    """A vote that cannot be recorded (nothing answered yet, or an unknown choice)."""


def votes_path(cfg: AppConfig) -> Path:
    return cfg.paths.resolve("runs_dir") / "votes.jsonl"


def record_vote(cfg: AppConfig, choice: str, result: dict[str, Any] | None) -> dict[str, Any]:
    """Append one vote with the question, each variant's adapter and status, and the settings; returns the record."""
    if choice not in CHOICES:
        raise VoteError(f"Unknown choice {choice!r}; pick one of {', '.join(CHOICES)}.")
    if not result or not result.get("done"):
        raise VoteError("Ask a question and wait for the answers before voting.")
    answers = result["answers"]
    if choice in VARIANTS and answers[choice]["status"] != "done":
        raise VoteError(f"{choice} did not answer this question; vote for a variant that did, or 'all bad'.")
    record = {
        "time": time.time(), "choice": choice, "question": result["question"], "settings": result["settings"],
        "variants": {v: {"status": a["status"], "adapter": a["adapter"], "answer": a["answer"]} for v, a in answers.items()},
    }
    path = votes_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return record


def read_votes(cfg: AppConfig) -> list[dict[str, Any]]:
    """All recorded votes; a torn or malformed line (e.g. after a crash) is skipped, not fatal."""
    path = votes_path(cfg)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("choice") in CHOICES:
            out.append(rec)
    return out


def tally(votes: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(v["choice"] for v in votes)
    return {c: counts.get(c, 0) for c in CHOICES}
