"""Arena-style votes: "which answer is best?" appended to a JSONL file, and their tally."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from medadapt.config import AppConfig
from medadapt.variants import VARIANTS

CHOICES = (*VARIANTS, "all_bad")
QUESTION_CHARS = 500  # a vote keeps this much of the question (plus a hash of all of it)
ANSWER_CHARS = 2000  # and this much of each answer
_lock = threading.Lock()
_tallies: dict[Path, tuple[int, Counter]] = {}  # votes file -> (bytes counted, counts): the tally grows by appends


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
    if result.get("voted"):
        raise VoteError("You already voted on these answers; ask another question to vote again.")
    answers = result["answers"]
    if choice in VARIANTS and answers[choice]["status"] != "done":
        raise VoteError(f"{choice} did not answer this question; vote for a variant that did, or 'all bad'.")
    question = str(result["question"])
    record = {
        "time": time.time(), "choice": choice, "question": question[:QUESTION_CHARS],
        "question_sha256": hashlib.sha256(question.encode("utf-8", "replace")).hexdigest(),
        "question_chars": len(question), "settings": result["settings"],
        "variants": {v: {"status": a["status"], "adapter": a["adapter"], "answer": str(a["answer"])[:ANSWER_CHARS]}
                     for v, a in answers.items()},
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


def _choices(text: str) -> Counter:
    counts: Counter = Counter()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("choice") in CHOICES:
            counts[rec["choice"]] += 1
    return counts


def tally(votes: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(v["choice"] for v in votes)
    return {c: counts.get(c, 0) for c in CHOICES}


def tally_votes(cfg: AppConfig) -> dict[str, int]:
    """Votes per choice, kept incrementally: only the lines appended since the last call are read."""
    path = votes_path(cfg)
    with _lock:
        offset, counts = _tallies.get(path, (0, Counter()))
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if size < offset:  # the file was replaced or truncated: count again
            offset, counts = 0, Counter()
        if size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read(size - offset)
            complete = chunk[:chunk.rfind(b"\n") + 1]  # a half-written last line waits for the next call
            counts = counts + _choices(complete.decode("utf-8", errors="replace"))
            offset += len(complete)
        _tallies[path] = (offset, counts)
    return {c: counts.get(c, 0) for c in CHOICES}
