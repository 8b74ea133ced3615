"""Continuous batching: one decode loop over the rows of every running request; requests join and leave between steps.

A :class:`Job` is one caller's rows (e.g. a user's four Compare variants) with its own decoding settings (``GenSettings``) and seed.
The :class:`Batcher`'s thread loops: admit waiting jobs (prefill their prompts into the shared
:class:`~medadapt.serve.decoding.RowCache`, grouped by prompt length), run one decode step for every live row (each row
with its own adapter, routed per forward), hand each job its tokens, and drop the rows that finished or whose job was
cancelled. N users thus share one batch instead of queueing N runs, and under greedy decoding a row's tokens are the
ones it gets alone (the rows of a batch do not interact; padding is masked).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from medadapt.config import GenSettings
from medadapt.serve.decoding import RowCache, decode_step, pick_tokens, prefill
from medadapt.serve.think_budget import BudgetRows

log = logging.getLogger(__name__)

Event = list[tuple[int, int, "str | None"]]  # (row of the job, token, finish reason or None)


@dataclass(eq=False)
class Job:
    """One request's rows; the batcher puts an :data:`Event` (or the exception that broke a step) on ``events``."""

    prompts: list[list[int]]
    max_new: list[int]
    adapters: list[str]
    settings: GenSettings  # passed whole to the decoder (pick_tokens)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # [rows, V]: tokens each row generated (repetition penalty)
    budget: BudgetRows | None = None  # thinking budget: may replace a picked token by a forced one


@dataclass(eq=False)
class _Row:
    job: Job
    index: int  # row of its job
    pos: int = 0  # next cache slot (= tokens in the cache)
    last: int = 0  # token to feed next
    count: int = 0  # tokens generated
    done: bool = False


class Batcher:
    """Owns the decode loop over ``model``; ``lock`` is held during each step (adapter changes wait for it)."""

    def __init__(self, model, eos_ids: Callable[[], set[int]], route: Callable[[list[str]], dict],
                 lock: threading.Lock, max_rows: int = 64) -> None:
        self.model, self.eos_ids, self.route, self.lock, self.max_rows = model, eos_ids, route, lock, max_rows
        self.cache = RowCache()
        self.live: list[_Row] = []
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (tests and benches read it)

    def submit(self, job: Job) -> None:
        if job.settings.temperature > 0:
            device = next(self.model.parameters()).device
            job.generator = torch.Generator(device=device).manual_seed(job.settings.seed)
        with self.cond:
            self.waiting.append(job)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="medadapt-batcher", daemon=True)
                self.thread.start()
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop ``job``'s rows at the next step; other jobs go on."""
        job.cancelled = True
        with self.cond:
            self.cond.notify()

    def busy(self) -> bool:
        return bool(self.live or self.waiting)

    # ------------------------------------------------------------------ the loop

    def _admit(self) -> list[Job]:
        with self.cond:
            while not self.waiting and not self.live:
                self.cond.wait()
            admitted, room = [], self.max_rows - len(self.live)
            while self.waiting and (len(self.waiting[0].prompts) <= room or not (self.live or admitted)):
                job = self.waiting.popleft()
                if not job.cancelled:
                    admitted.append(job)
                    room -= len(job.prompts)
            return admitted

    def _loop(self) -> None:
        while True:
            admitted = self._admit()
            out: dict[Job, Event] = {}
            try:
                with self.lock, torch.inference_mode():
                    self._drop()
                    for job in admitted:
                        self._prefill(job, out)
                    self._drop()
                    if self.live:
                        self._step(out)
                        self._drop()
            except Exception as e:  # a broken step fails the jobs in it, never the loop
                log.exception("decode step failed")
                for job in {r.job for r in self.live} | set(admitted) | set(out):  # out: rows that ended in it
                    job.events.put(e)
                self.live = []
                self.cache.clear()
                continue
            for job, events in out.items():
                if events:
                    job.events.put(events)

    def _emit(self, row: _Row, token: int, out: dict[Job, Event]) -> None:
        job = row.job
        if job.budget is not None:
            token = job.budget.token(row.index, token)
        row.last, row.count = token, row.count + 1
        if job.seen is not None and token < job.seen.shape[1]:
            job.seen[row.index, token] = True
        reason = "eos" if token in self.eos_ids() else "length" if row.count >= job.max_new[row.index] else None
        row.done = reason is not None
        out.setdefault(job, []).append((row.index, token, reason))

    def _pick(self, job: Job, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        if job.settings.repetition_penalty != 1.0 and job.seen is None:
            job.seen = torch.zeros(len(job.prompts), logits.shape[-1], dtype=torch.bool,
                                   device=logits.device)
        seen = None if job.seen is None else job.seen[[r.index for r in rows]]
        return pick_tokens(logits, job.settings, job.generator, seen).tolist()

    def _prefill(self, job: Job, out: dict[Job, Event]) -> None:
        rows = [_Row(job, i, pos=len(p)) for i, p in enumerate(job.prompts)]
        need = max(len(p) + m for p, m in zip(job.prompts, job.max_new))
        first = len(self.live)
        self.cache.reserve(first + len(rows), need)
        self.live.extend(rows)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(job.prompts):
            groups.setdefault(len(p), []).append(i)
        for _, members in sorted(groups.items()):
            names = [job.adapters[i] for i in members]
            logits = prefill(self.model, self.cache, [first + i for i in members],
                             [job.prompts[i] for i in members], self.route(names))
            group = [rows[i] for i in members]
            for row, tok in zip(group, self._pick(job, logits, group)):
                self._emit(row, tok, out)

    def _step(self, out: dict[Job, Event]) -> None:
        live = self.live
        logits = decode_step(self.model, self.cache, [r.last for r in live], [r.pos for r in live],
                             self.route([r.job.adapters[r.index] for r in live]))
        self.steps += 1
        by_job: dict[Job, list[int]] = {}
        for i, r in enumerate(live):
            r.pos += 1
            by_job.setdefault(r.job, []).append(i)
        for job, idx in by_job.items():
            rows = [live[i] for i in idx]
            for row, tok in zip(rows, self._pick(job, logits[idx], rows)):
                self._emit(row, tok, out)

    def _drop(self) -> None:
        """Remove finished rows and rows of cancelled jobs; rows from the end of the batch take their places."""
        gone = {i for i, r in enumerate(self.live) if r.done or r.job.cancelled}
        if not gone:
            return
        k = len(self.live) - len(gone)
        if k == 0:
            self.live = []
            self.cache.clear()
            return
        holes = sorted(i for i in gone if i < k)
        movers = [i for i in range(k, len(self.live)) if i not in gone]
        self.cache.move(movers, holes, max(self.live[i].pos for i in movers) if movers else 0)
        for h, m in zip(holes, movers):
            self.live[h] = self.live[m]
        self.live = self.live[:k]
