"""Token buckets of server time: each client may spend ``capacity_s`` seconds at once and ``rate`` seconds per second
after that (a client that spends less than its rate saves up to ``capacity_s``). Pure, thread-safe, no I/O."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBuckets:
    """One bucket per key (an address, a session); :meth:`take` spends a request's cost or says how long to wait."""

    def __init__(self, capacity_s: float, rate: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 20_000) -> None:
        self.capacity_s, self.rate, self.clock, self.max_keys = capacity_s, rate, clock, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.capacity_s, now))
        return min(self.capacity_s, tokens + (now - at) * self.rate)

    def take(self, key: str, cost_s: float) -> float:
        """0 when ``key`` can pay ``cost_s`` now (it is spent), else the seconds until it can (nothing spent).

        A cost above the capacity is paid once the bucket is full (it goes into debt), so no request is refused
        forever."""
        now = self.clock()
        with self._lock:
            level = self._level(key, now)
            need = min(cost_s, self.capacity_s)
            if level < need:
                return (need - level) / self.rate
            self._buckets[key] = (level - cost_s, now)
            if len(self._buckets) > self.max_keys:
                self._forget(now)
            return 0.0

    def charge(self, key: str, cost_s: float) -> None:
        """Spend ``cost_s`` whatever the level (a cost learnt after the request was let in)."""
        now = self.clock()
        with self._lock:
            self._buckets[key] = (self._level(key, now) - cost_s, now)

    def level(self, key: str) -> float:
        with self._lock:
            return self._level(key, self.clock())

    def _forget(self, now: float) -> None:
        """Drop the buckets that have refilled: they hold nothing a new bucket would not."""
        for key in [k for k in self._buckets if self._level(k, now) >= self.capacity_s]:
            del self._buckets[key]
