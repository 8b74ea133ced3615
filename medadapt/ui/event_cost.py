"""What each event handler costs the server: its CPU time, measured in the thread that runs it.

Gradio measures an event's wall time, which on a loaded machine is mostly waiting (for a core, for the GIL): a cheap
poll looks expensive and rationing it would refuse honest pages. :class:`EventCosts` wraps each handler of a Blocks
(not the Compare generations, which have their own limits, nor generators or coroutines) so that every call records
``time.thread_time()`` spent in it. A handler's cost is the median of its last ``WINDOW`` calls, its first call left
out (a first call pays one-off work: the index check opens the index, ~2.5 s once, ~1 ms after).
"""
from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import deque
from typing import Any

WINDOW = 9


class EventCosts:
    def __init__(self, blocks: Any, skip: set[str] | None = None) -> None:
        """Meter every plain handler of ``blocks`` (``skip``: concurrency ids left alone, e.g. the generations)."""
        self._calls: dict[int, deque] = {}  # id(BlockFunction) -> CPU seconds of its recent calls (None: the first)
        self._lock = threading.Lock()
        self._keys: set[int] = set()  # id(BlockFunction) of every handler metered here
        for block_fn in blocks.fns.values():
            fn = block_fn.fn
            if (fn is None or block_fn.concurrency_id in (skip or set()) or inspect.isgeneratorfunction(fn)
                    or inspect.isasyncgenfunction(fn) or inspect.iscoroutinefunction(fn)
                    or getattr(fn, "_metered", False)):
                continue
            block_fn.fn = self._metered(fn, id(block_fn))
            self._keys.add(id(block_fn))

    def _metered(self, fn: Any, key: int) -> Any:
        @functools.wraps(fn)  # Gradio reads the handler's signature and type hints through __wrapped__
        def metered(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.record(key, time.thread_time() - start)
        metered._metered = True
        return metered

    def record(self, key: int, cpu_s: float) -> None:
        with self._lock:
            if key not in self._calls:
                self._calls[key] = deque(maxlen=WINDOW)  # the first call: warm-up, not counted
            else:
                self._calls[key].append(cpu_s)

    def meters(self, block_fn: Any) -> bool:
        """Whether ``block_fn``'s handler is metered here (a plain function, not a generation)."""
        return id(block_fn) in self._keys

    def cpu_s(self, block_fn: Any) -> float | None:
        """The median CPU seconds of ``block_fn``'s recent calls (a Gradio BlockFunction; the lower middle of an
        even count); None before its second call."""
        with self._lock:
            calls = sorted(self._calls.get(id(block_fn)) or ())
        return calls[(len(calls) - 1) // 2] if calls else None
