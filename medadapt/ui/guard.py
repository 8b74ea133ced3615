"""An ASGI middleware in front of the Gradio app: refuses what a visitor never needs and rations what costs.

- The app has no file input, yet Gradio serves ``POST /gradio_api/upload`` for any app: anyone could store files on
  the server and download them again. Such requests get 403 before Gradio reads the body, and so do those to
  ``/gradio_api/component_server`` (no component here has server functions).
- In public mode (``inflight`` given), every event must come through Gradio's queue (``/gradio_api/queue/join`` or
  ``/gradio_api/call/<api>``): the direct routes that skip it (``/run/``, ``/api/``) get 403. A join is refused
  before it reaches the queue when the client already holds its share of queued and running events, per session and
  per address (:class:`medadapt.ui.inflight.Limits`; 429); when its body is over ``MAX_BODY_BYTES`` (413); when the
  queue is full (503); when it opens a new session past ``SESSIONS_PER_WINDOW`` per ``WINDOW_S`` seconds per address
  (429: Gradio builds a copy of the whole UI config for every new session id, on its event loop, so fresh session
  ids are the cheapest way to stall everyone); and, for the Compare generations, past ``GENERATIONS_PER_WINDOW`` per
  ``WINDOW_S`` seconds per address (429). An address refused ``REFUSALS_PER_WINDOW`` times within
  ``REFUSAL_WINDOW_S`` seconds is then refused before its body is even read, each answer held back up to
  ``TARPIT_S`` seconds (a sleeping request costs nothing; a client that ignores Retry-After slows itself). Every refusal carries ``Retry-After`` and
  a message saying when to retry, so one client cannot fill the shared queue and the others keep being answered.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from medadapt.ui.inflight import GENERATE, InFlight

BLOCKED_POSTS = {  # routes the app never needs: refused in any mode
    "/gradio_api/upload": "This app takes no file uploads.",
    "/gradio_api/component_server": "This app has no component server functions.",  # each new session costs
}
DIRECT_RUNS = ("/gradio_api/run/", "/gradio_api/api/")  # Gradio's queue-skipping routes (open unless on a Space)
GENERATIONS_PER_WINDOW = 6
SESSIONS_PER_WINDOW = 10  # new sessions (page loads) per address; Gradio copies the whole UI config for each one
WINDOW_S = 60.0
REFUSALS_PER_WINDOW, REFUSAL_WINDOW_S = 30, 10.0  # a flood past this is refused without reading (or parsing) bodies
TARPIT_S = 5.0  # ... and each such refusal is answered this late (at most), so a flood slows itself down
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

    def wait_s(self, client: str) -> float:
        """Seconds until the client may go (0: now), without counting an event."""
        return self._take(client, count=False)

    def take(self, client: str) -> float:
        """0 when the client may go now (and the event is counted), else the seconds until it may."""
        return self._take(client, count=True)

    def _take(self, client: str, count: bool) -> float:
        now = self.clock()
        with self._lock:
            times = self._events.setdefault(client, deque())
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if len(times) >= self.limit:
                return self.window_s - (now - times[0])
            if count:
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
    """Wraps an ASGI app; with ``inflight`` (public mode: it counts clients' events in the Gradio queue it was built
    on) every join is checked against the limits in the module docstring."""

    def __init__(self, app: Any, inflight: InFlight | None = None) -> None:
        self.app, self.inflight = app, inflight
        self.limiter = RateLimiter(GENERATIONS_PER_WINDOW, WINDOW_S)  # Compare generations per address
        self.sessions = RateLimiter(SESSIONS_PER_WINDOW, WINDOW_S)  # new sessions per address
        self.refused = RateLimiter(REFUSALS_PER_WINDOW, REFUSAL_WINDOW_S)  # past this, refused before the body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "").rstrip("/")
        blocked = next((m for route, m in BLOCKED_POSTS.items() if path.endswith(route)), None)
        if blocked is not None:
            await _respond(send, 403, blocked)
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
        address, messages = _client(scope), []
        if (wait := self.refused.wait_s(address)) > 0:  # it ignores Retry-After: its next tries wait here, unread
            await asyncio.sleep(min(wait, TARPIT_S))
            await _respond(send, 429, f"Too many refused requests from your address: at most {self.refused.limit} per "
                           f"{self.refused.window_s:.0f} s. Retry in {self.refused.wait_s(address):.0f} s.",
                           self.refused.wait_s(address))
            return
        refusal = self._before_body(address)
        if refusal is None:
            body, refusal = await self._read_body(receive, messages)
        if refusal is None:
            fn, session = self._event(path, body)
            generation = getattr(fn, "concurrency_id", None) == GENERATE
            refusal = self._refusal(address, fn, session, generation)
        if refusal is not None:
            self.refused.take(address)  # a client refused again and again is next refused before its body is read
            await _respond(send, *refusal)
            return
        held = self.inflight.admit(address, session, generation)

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        try:
            await self.app(scope, replay, self._queue_full_says_when(send, fn))
        finally:
            self.inflight.release(held)

    def _before_body(self, address: str) -> tuple[int, str, float] | None:
        """A refusal that needs no body: the client is already at its address limit."""
        if (over := self.inflight.over(address, None, False)) is not None:
            return self._too_many(address, None, *over)
        return None

    @staticmethod
    async def _read_body(receive: Any, messages: list[dict]) -> tuple[bytes, tuple[int, str, float] | None]:
        """The JSON body (its messages kept to replay to the app), or a refusal once it is over the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                return b"", (413, f"Request too large: at most {MAX_BODY_BYTES // 1024 ** 2} MB (questions are cut "
                             "at 4,000 characters anyway).", None)
            if not message.get("more_body"):
                return b"".join(chunks), None

    def _refusal(self, address: str, fn: Any, session: str | None, generation: bool) -> tuple[int, str, float] | None:
        inflight = self.inflight
        if (over := inflight.over(address, session, generation)) is not None:
            return self._too_many(address, session, *over)
        if inflight.queue_full():
            wait = inflight.full_retry_s(fn)
            return 503, f"The queue is full ({inflight.queue.max_size} requests waiting). Retry in {wait:.0f} s.", wait
        new_session = session is None or session not in inflight.blocks.state_holder  # /call/ without one: new
        if new_session and (wait := self.sessions.take(address)) > 0:
            return 429, (f"Too many new sessions from your address: at most {self.sessions.limit} per "
                         f"{self.sessions.window_s:.0f} s (each page load is one). Retry in {wait:.0f} s."), wait
        if generation and (wait := self.limiter.take(address)) > 0:
            return 429, (f"Too many questions from your address: at most {self.limiter.limit} per "
                         f"{self.limiter.window_s:.0f} s. Retry in {wait:.0f} s."), wait
        return None

    def _too_many(self, address: str, session: str | None, kind: str, limit: int) -> tuple[int, str, float]:
        wait = self.inflight.client_retry_s(address, session, kind)
        return 429, (f"Too many {WHAT[kind]}: at most {limit} at a time. One of them should be done in about "
                     f"{wait:.0f} s; retry then."), wait

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
