"""The page, its config and the API info, kept for a while: Gradio renders each of them anew for every request (the
whole UI config, the Benchmarks tab's figures included: 0.1-0.5 MB of JSON and 10-35 ms of CPU), yet they are the
same for every visitor who reaches the app under the same address. A flood of page loads then costs the server a
dictionary lookup each, not a render (:mod:`medadapt.ui.guard` still rations them).

An answer is kept ``TTL_S`` seconds under its path, query and the headers Gradio builds the page's root URL from
(``Host``, ``X-Forwarded-Host``, ``X-Forwarded-Proto``, ``X-Gradio-Server``), only when it is a complete 200 without
cookies; at most ``ENTRIES`` answers (the oldest dropped).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

CACHED = ("/", "/config", "/config/", "/gradio_api/info", "/gradio_api/info/")
TTL_S = 30.0
ENTRIES = 16
MAX_BYTES = 8 * 1024 * 1024
VARY = (b"host", b"x-forwarded-host", b"x-forwarded-proto", b"x-gradio-server")


class PageCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._answers: OrderedDict[tuple, tuple[float, dict, bytes]] = OrderedDict()

    @staticmethod
    def key(scope: dict, path: str) -> tuple | None:
        """What an answer depends on, or None for a request not cached."""
        if scope.get("method") != "GET" or path not in CACHED:
            return None
        headers = {k: v for k, v in scope.get("headers") or [] if k in VARY}
        return (path, scope.get("query_string", b""), scope.get("scheme"), scope.get("root_path", ""),
                *(headers.get(h) for h in VARY))

    def get(self, key: tuple) -> tuple[dict, bytes] | None:
        hit = self._answers.get(key)
        if hit is None or hit[0] < self.clock():
            self._answers.pop(key, None)
            return None
        return hit[1], hit[2]

    async def send_cached(self, send: Any, key: tuple) -> bool:
        """Answer from the cache; False when it holds nothing for ``key``."""
        hit = self.get(key)
        if hit is None:
            return False
        await send(hit[0])
        await send({"type": "http.response.body", "body": hit[1]})
        return True

    def recording(self, send: Any, key: tuple) -> Callable:
        """``send`` that also keeps a complete 200 answer without cookies under ``key``."""
        parts: dict[str, Any] = {"start": None, "body": [], "size": 0}

        async def wrapped(message: dict) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                ok = message.get("status") == 200 and not any(k == b"set-cookie" for k, _ in message.get("headers", []))
                parts["start"] = message if ok else None
            elif message["type"] == "http.response.body" and parts["start"] is not None:
                parts["body"].append(message.get("body", b""))
                parts["size"] += len(parts["body"][-1])
                if parts["size"] > MAX_BYTES:
                    parts["start"] = None
                elif not message.get("more_body"):
                    self._answers[key] = (self.clock() + TTL_S, parts["start"], b"".join(parts["body"]))
                    while len(self._answers) > ENTRIES:
                        self._answers.popitem(last=False)
        return wrapped
