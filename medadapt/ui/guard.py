"""An ASGI middleware in front of the Gradio app: refuses what a visitor never needs and rations generation.

- The app has no file input, yet Gradio serves ``POST /gradio_api/upload`` for any app: anyone could store files on
  the server and download them again. Such requests get 403 before Gradio reads the body.
- In public mode each client (by address) may start at most ``GENERATIONS_PER_WINDOW`` generation events per
  ``WINDOW_S`` seconds (``/gradio_api/queue/join`` for the Compare handlers, or ``/gradio_api/call/compare``); more
  get 429 with ``Retry-After`` and a message saying when to retry, so one client cannot fill the shared queue.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

BLOCKED_POSTS = ("/gradio_api/upload",)
GENERATIONS_PER_WINDOW = 6
WINDOW_S = 60.0


class RateLimiter:
    """At most ``limit`` events per ``window_s`` per client (a sliding window of event times)."""

    def __init__(self, limit: int | None = None, window_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit or GENERATIONS_PER_WINDOW
        self.window_s = window_s or WINDOW_S
        self.clock = clock
        self._events: dict[str, deque] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when the client may go now (and the event is counted), else the seconds until it may."""
        now = self.clock()
        with self._lock:
            times = self._events.setdefault(client, deque())
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if len(times) >= self.limit:
                return self.window_s - (now - times[0])
            times.append(now)
            if len(self._events) > 10_000:  # forget idle clients
                for key in [k for k, t in self._events.items() if not t or now - t[-1] >= self.window_s]:
                    del self._events[key]
            return 0.0


async def _respond(send: Any, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Wraps an ASGI app. ``generation_fns``: the fn indexes of the generation events (rationed when ``limiter``)."""

    def __init__(self, app: Any, generation_fns: frozenset[int] = frozenset(), limiter: RateLimiter | None = None,
                 api_names: tuple[str, ...] = ("compare",)) -> None:
        self.app, self.generation_fns, self.limiter, self.api_names = app, generation_fns, limiter, api_names

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "").rstrip("/")
        if path.endswith(BLOCKED_POSTS):
            await _respond(send, 403, "This app takes no file uploads.")
            return
        if self.limiter is None or not (path.endswith("/queue/join") or "/gradio_api/call/" in path):
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        while True:  # read the (small) JSON body to see which event it starts, then replay it to the app
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self._is_generation(path, body):
            client = (scope.get("client") or ("?",))[0]
            wait = self.limiter.take(str(client))
            if wait > 0:
                await _respond(send, 429, f"Too many questions from your address: at most {self.limiter.limit} per "
                               f"{self.limiter.window_s:.0f} s. Retry in {wait:.0f} s.",
                               [(b"retry-after", str(int(wait) + 1).encode())])
                return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    def _is_generation(self, path: str, body: bytes) -> bool:
        if "/gradio_api/call/" in path:
            return path.rsplit("/", 1)[-1] in self.api_names
        try:
            return json.loads(body or b"{}").get("fn_index") in self.generation_fns
        except (ValueError, AttributeError):
            return False
