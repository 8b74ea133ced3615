"""Each client's queued and running Gradio events, read from Gradio's own queue, and when a slot frees up.

Gradio keeps a waiting event in its concurrency line (``Queue.event_queue_per_concurrency_id[...].queue``) and a
running one in ``Queue.active_jobs`` until, right after its ``process_completed`` message, it frees the worker; each
event keeps its session hash and its HTTP request (the client's address). Counting there, rather than in our own
ledger, releases a slot exactly when Gradio lets go of the event (finished, failed, cancelled or client gone), and a
client that has just read its answer may ask again at once. Joins between our check and Gradio's push are held in
``pending`` so a burst of parallel joins cannot slip past the count. Generations (the Compare questions) and heavy
events (any other whose run time, as Gradio measured it, is over ``HEAVY_S``: a results file parsed, a figure drawn)
have their own, lower limits (an event's cost is its handler's CPU time, :class:`medadapt.ui.event_cost.EventCosts`;
Gradio's wall time where that is not measured). Written for Gradio 6.31 (``tests/test_abuse.py`` drives the real queue).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

GENERATE = "generate"  # the concurrency id of the Compare handlers (medadapt/ui/compare.py)
DEFAULT_RUN_S = 10.0  # an event's run time before Gradio has measured any
HEAVY_S = 0.1  # an event whose handler has used more CPU than this on average is heavy
MAX_RETRY_S = 600.0


@dataclass(frozen=True)
class Limits:
    """In-flight (queued + running) events one client may hold: any events, and generations among them."""

    per_session: int = 6  # a page's load events and timer ticks stay well below this
    per_address: int = 12
    generations_per_session: int = 1
    generations_per_address: int = 1  # one question in line per address: the next joins behind everyone waiting
    heavy_per_session: int = 1
    heavy_per_address: int = 1  # one heavy event at a time per address: it cannot stack them up before they are costed


class InFlight:
    """Counts one client's in-flight events in ``blocks``' queue and estimates when the next one ends."""

    def __init__(self, blocks: Any, limits: Limits | None = None, costs: Any = None) -> None:
        self.blocks, self.limits, self.costs = blocks, limits or Limits(), costs
        self.pending: Counter = Counter()  # (kind, key) -> joins admitted but not yet answered by Gradio

    @property
    def queue(self) -> Any:
        return self.blocks._queue

    def events(self) -> list[Any]:
        """Every event waiting in a line or running now."""
        q = self.queue
        waiting = [e for line in q.event_queue_per_concurrency_id.values() for e in line.queue]
        return waiting + [e for job in q.active_jobs if job for e in job]

    @staticmethod
    def address_of(event: Any) -> str:
        client = getattr(getattr(event, "request", None), "client", None)
        return str(getattr(client, "host", None) or "?")

    def cost_s(self, fn: Any) -> float | None:
        """What one call of ``fn`` costs the server: its handler's median CPU seconds (None until a call after the
        first, whose one-off work and wall time say nothing of the next ones); Gradio's mean wall time where the
        handler is not metered; None before it has run."""
        if self.costs is not None and self.costs.meters(fn):
            return self.costs.cpu_s(fn)
        times = self.queue.process_time_per_fn
        return times[fn].avg_time if fn in times and times[fn].count else None

    def heavy(self, fn: Any) -> bool:
        """Whether ``fn`` (not a generation) has cost more than ``HEAVY_S`` on average."""
        cost = self.cost_s(fn) if getattr(fn, "concurrency_id", None) != GENERATE else None
        return cost is not None and cost > HEAVY_S

    def keys(self, address: str, session: str | None, generation: bool,
             heavy: bool = False) -> list[tuple[str, str, int]]:
        """(kind, key, limit) of every count this join adds to."""
        lim = self.limits
        keys = [("address", address, lim.per_address)]
        if session:
            keys.append(("session", session, lim.per_session))
        for flag, prefix, per_address, per_session in (
                (generation, "gen", lim.generations_per_address, lim.generations_per_session),
                (heavy, "heavy", lim.heavy_per_address, lim.heavy_per_session)):
            if flag:
                keys.append((f"{prefix}-address", address, per_address))
                if session:
                    keys.append((f"{prefix}-session", session, per_session))
        return keys

    def counts(self) -> Counter:
        """In-flight events per (kind, key), Gradio's and the pending joins."""
        counts = Counter(self.pending)
        for event in self.events():
            address = self.address_of(event)
            counts["address", address] += 1
            counts["session", event.session_hash] += 1
            for flag, prefix in ((event.concurrency_id == GENERATE, "gen"), (self.heavy(event.fn), "heavy")):
                if flag:
                    counts[f"{prefix}-address", address] += 1
                    counts[f"{prefix}-session", event.session_hash] += 1
        return counts

    def over(self, address: str, session: str | None, generation: bool,
             heavy: bool = False) -> tuple[str, int] | None:
        """The first limit this join would exceed, as (kind, limit); None when it may go."""
        counts = self.counts()
        for kind, key, limit in self.keys(address, session, generation, heavy):
            if counts[kind, key] >= limit:
                return kind, limit
        return None

    def admit(self, address: str, session: str | None, generation: bool,
              heavy: bool = False) -> list[tuple[str, str]]:
        """Hold a pending slot for a join (give it back with :meth:`release` once Gradio answered it)."""
        held = [(kind, key) for kind, key, _ in self.keys(address, session, generation, heavy)]
        self.pending.update(held)
        return held

    def release(self, held: list[tuple[str, str]]) -> None:
        self.pending.subtract(held)
        for k in held:
            if self.pending[k] <= 0:
                del self.pending[k]

    def run_s(self, fn: Any) -> float:
        """Gradio's average run time of ``fn`` so far (``DEFAULT_RUN_S`` before the first run)."""
        times = self.queue.process_time_per_fn
        return times[fn].avg_time if fn in times and times[fn].count else DEFAULT_RUN_S

    def _line(self, concurrency_id: str) -> tuple[list[Any], int]:
        q = self.queue.event_queue_per_concurrency_id.get(concurrency_id)
        return (q.queue, max(1, q.concurrency_limit or 1)) if q is not None else ([], 1)

    def eta_s(self, event: Any) -> float:
        """Seconds until ``event`` has likely finished: a full run when running, plus the runs ahead when queued."""
        line, slots = self._line(event.concurrency_id)
        ahead = line.index(event) + 1 if event in line else 0
        return self.run_s(event.fn) * (1 + ahead / slots)

    def client_retry_s(self, address: str, session: str | None, kind: str) -> float:
        """When one of this client's events that count against ``kind`` has likely finished."""
        mine = [e for e in self.events()
                if (self.address_of(e) == address if kind.endswith("address") else e.session_hash == session)
                and (not kind.startswith("gen") or e.concurrency_id == GENERATE)
                and (not kind.startswith("heavy") or self.heavy(e.fn))]
        return _bounded(min((self.eta_s(e) for e in mine), default=1.0))

    def queue_full(self) -> bool:
        q = self.queue
        return q.max_size is not None and len(q) >= q.max_size

    def full_retry_s(self, fn: Any) -> float:
        """How long a new event of ``fn`` would wait in line now: when retrying it is likely to find room."""
        if fn is None:
            return _bounded(min((self.eta_s(e) for e in self.events()), default=1.0))
        line, slots = self._line(fn.concurrency_id)
        return _bounded(self.run_s(fn) * (1 + len(line) / slots))


def _bounded(seconds: float) -> float:
    return min(MAX_RETRY_S, max(1.0, seconds))
