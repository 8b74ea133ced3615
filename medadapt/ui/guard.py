"""An ASGI middleware in front of the Gradio app: refuses what a visitor never needs and rations what costs.

- The app has no file input, yet Gradio serves ``POST /gradio_api/upload`` for any app: anyone could store files on
  the server and download them again. Such requests get 403 before Gradio reads the body.
- In public mode (``inflight`` given), every event must come through Gradio's queue (``/gradio_api/queue/join`` or
  ``/gradio_api/call/<api>``): the direct routes that skip it (``/run/``, ``/api/``) get 403. Each join is refused
  before it reaches the queue when its body is over ``MAX_BODY_BYTES`` (413); when the client already holds its share
  of queued and running events, per session and per address (:class:`medadapt.ui.inflight.Limits`; 429); when the
  queue is full (503); and, for the Compare generations, past ``GENERATIONS_PER_WINDOW`` per ``WINDOW_S`` seconds per
  address (429). Every refusal carries ``Retry-After`` and a message saying when to retry, so one client cannot fill
  the shared queue and the others keep being answered.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from medadapt.ui.inflight import GENERATE, InFlight

BLOCKED_POSTS = ("/gradio_api/upload",)
DIRECT_RUNS = ("/gradio_api/run/", "/gradio_api/api/")  # Gradio's queue-skipping routes (open unless on a Space)
GENERATIONS_PER_WINDOW = 6
WINDOW_S = 60.0
MAX_BODY_BYTES = 2 * 1024 * 1024  # a join carries one question (cut at 4,000 characters anyway) and a few settings
WHAT = {"address": "requests in progress from your address", "session": "requests in progress in this page",
        "gen-address": "questions in progress from your address", "gen-session": "questions in progress in this page"}


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


def _refusal(status: int, message: str, retry_s: float | None = None) -> tuple[int, list, bytes]:
    body = json.dumps({"error": message, "detail": message}).encode()  # the web client shows detail, else error
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_s is not None:
        headers.append((b"retry-after", str(int(retry_s) + 1).encode()))
    return status, headers, body


async def _respond(send: Any, status: int, message: str, retry_s: float | None = None) -> None:
    status, headers, body = _refusal(status, message, retry_s)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _client(scope: dict) -> str:
    return str((scope.get("client") or ("?",))[0])


class RequestGuard:
    """Wraps an ASGI app; ``inflight`` (public mode) counts clients' events in the Gradio queue it was built on."""

    def __init__(self, app: Any, inflight: InFlight | None = None, limiter: RateLimiter | None = None) -> None:
        self.app, self.inflight, self.limiter = app, inflight, limiter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "").rstrip("/")
        if path.endswith(BLOCKED_POSTS):
            await _respond(send, 403, "This app takes no file uploads.")
            return
        if self.inflight is None:
            await self.app(scope, receive, send)
            return
        if path.startswith(DIRECT_RUNS):
            await _respond(send, 403, "This app answers through its queue only: POST /gradio_api/queue/join "
                           "(or /gradio_api/call/<api_name>).")
            return
        if not (path.endswith("/queue/join") or "/gradio_api/call/" in path):
            await self.app(scope, receive, send)
            return
        await self._join(scope, receive, send, path)

    async def _join(self, scope: dict, receive: Any, send: Any, path: str) -> None:
        inflight, address = self.inflight, _client(scope)
        if (over := inflight.over(address, None, False)) is not None:  # before reading a possibly large body
            await self._too_many(send, address, None, *over)
            return
        messages, chunks, size = [], [], 0
        while True:  # read the JSON body to see which event it starts, then replay it to the app
            message = await receive()
            messages.append(message)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                await _respond(send, 413, f"Request too large: at most {MAX_BODY_BYTES // 1024 ** 2} MB (questions "
                               "are cut at 4,000 characters anyway).")
                return
            if not message.get("more_body"):
                break
        fn, session = self._event(path, b"".join(chunks))
        generation = getattr(fn, "concurrency_id", None) == GENERATE
        if (over := inflight.over(address, session, generation)) is not None:
            await self._too_many(send, address, session, *over)
            return
        if inflight.queue_full():
            wait = inflight.full_retry_s(fn)
            await _respond(send, 503, f"The queue is full ({inflight.queue.max_size} requests waiting). "
                           f"Retry in {wait:.0f} s.", wait)
            return
        if generation and self.limiter is not None and (wait := self.limiter.take(address)) > 0:
            await _respond(send, 429, f"Too many questions from your address: at most {self.limiter.limit} per "
                           f"{self.limiter.window_s:.0f} s. Retry in {wait:.0f} s.", wait)
            return
        held = inflight.admit(address, session, generation)

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        try:
            await self.app(scope, replay, self._queue_full_says_when(send, fn))
        finally:
            inflight.release(held)

    async def _too_many(self, send: Any, address: str, session: str | None, kind: str, limit: int) -> None:
        wait = self.inflight.client_retry_s(address, session, kind)
        await _respond(send, 429, f"Too many {WHAT[kind]}: at most {limit} at a time. One of them should be done in "
                       f"about {wait:.0f} s; retry then.", wait)

    def _queue_full_says_when(self, send: Any, fn: Any) -> Callable:
        """``send`` that turns Gradio's own 'Queue is full' 503 (a join that raced past our check) into ours."""
        state: dict[str, Any] = {"start": None, "replaced": False}  # a 503 start is kept until its body says what

        async def wrapped(message: dict) -> None:
            if state["replaced"]:
                return
            if message["type"] == "http.response.start" and message.get("status") == 503:
                state["start"] = message
                return
            if state["start"] is not None and message["type"] == "http.response.body":
                start, state["start"] = state["start"], None
                if b"Queue is full" in message.get("body", b""):
                    state["replaced"] = True
                    wait = self.inflight.full_retry_s(fn)
                    await _respond(send, 503, f"The queue is full. Retry in {wait:.0f} s.", wait)
                    return
                await send(start)
            await send(message)
        return wrapped

    def _event(self, path: str, body: bytes) -> tuple[Any, str | None]:
        """The Gradio function a join starts (None if unknown) and its session hash."""
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        session = data.get("session_hash") if isinstance(data.get("session_hash"), str) else None
        fns = self.inflight.blocks.fns
        if "/gradio_api/call/" in path:
            name = path.rsplit("/", 1)[-1]
            return next((f for f in fns.values() if getattr(f, "api_name", None) == name), None), session
        index = data.get("fn_index")
        return (fns.get(index) if isinstance(index, int) else None), session
