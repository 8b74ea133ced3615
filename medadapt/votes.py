"""Arena-style votes: "which answer is best?" appended to a JSONL file, and their tally.

One vote per set of answers: the caller names the answers it votes on (``key``, e.g. the session and a digest of
the answers) and :func:`record_vote` checks and records that key under one lock, so parallel votes on the same
answers record exactly one."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from medadapt.config import AppConfig
from medadapt.variants import VARIANTS

CHOICES = (*VARIANTS, "all_bad")
QUESTION_CHARS = 500  # a vote keeps this much of the question (plus a hash of all of it)
ANSWER_CHARS = 2000  # and this much of each answer
VOTED_KEYS = 100_000  # answers remembered as voted on (the oldest forgotten first)
_lock = threading.Lock()
_tallies: dict[Path, tuple[int, Counter]] = {}  # votes file -> (bytes counted, counts): the tally grows by appends
_voted: OrderedDict[tuple[Path, str], None] = OrderedDict()  # (votes file, answers key) already voted on


ALREADY_VOTED = "You already voted on these answers; ask another question to vote again."


class VoteError(ValueError):
    """A vote that cannot be recorded (nothing answered yet, or an unknown choice)."""


def votes_path(cfg: AppConfig) -> Path:
    return cfg.paths.resolve("runs_dir") / "votes.jsonl"


def answers_key(session: str, result: dict[str, Any]) -> str:
    """A key naming one session's set of answers: the session and a digest of the question and every answer."""
    answers = {v: [a.get("status"), a.get("raw") or a.get("answer")] for v, a in (result.get("answers") or {}).items()}
    digest = hashlib.sha256(json.dumps([result.get("question"), answers], sort_keys=True, default=str).encode())
    return f"{session}:{digest.hexdigest()}"


def record_vote(cfg: AppConfig, choice: str, result: dict[str, Any] | None, key: str | None = None,
                adapter_names: dict[str, str] | None = None) -> dict[str, Any]:
    """Append one vote with the question, each variant's adapter (``adapter_names``: how to name each variant's
    adapter, default its folder) and status, and the settings; returns the record. With ``key``, a second vote on the
    same key is refused, checked and recorded atomically."""
    if choice not in CHOICES:
        raise VoteError(f"Unknown choice {choice!r}; pick one of {', '.join(CHOICES)}.")
    if not result or not result.get("done"):
        raise VoteError("Ask a question and wait for the answers before voting.")
    if result.get("voted"):
        raise VoteError(ALREADY_VOTED)
    answers = result["answers"]
    if choice in VARIANTS and answers[choice]["status"] != "done":
        raise VoteError(f"{choice} did not answer this question; vote for a variant that did, or 'all bad'.")
    question = str(result["question"])
    record = {
        "time": time.time(), "choice": choice, "question": question[:QUESTION_CHARS],
        "question_sha256": hashlib.sha256(question.encode("utf-8", "replace")).hexdigest(),
        "question_chars": len(question), "settings": result["settings"],
        "variants": {v: {"status": a["status"], "adapter": (adapter_names or {}).get(v, a["adapter"]),
                         "answer": str(a["answer"])[:ANSWER_CHARS]} for v, a in answers.items()},
    }
    path = votes_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with _lock:
        if key is not None and (path, key) in _voted:
            raise VoteError(ALREADY_VOTED)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if key is not None:
            _voted[path, key] = None
            while len(_voted) > VOTED_KEYS:
                _voted.popitem(last=False)
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
