"""An ASGI middleware in front of the Gradio app: refuses what a visitor never needs and rations what costs.

In any mode, the routes that would store a visitor's files or run server functions the app has none of
(``/gradio_api/upload``, ``/gradio_api/process_recording``, ``/gradio_api/component_server``) get 403 before Gradio
reads a byte of the body.

In public mode (``inflight`` given) it is an allow-list (:mod:`medadapt.ui.routes`): a request whose route and method
the page (or ``gradio_client``) does not use is refused before its body is read (403 for a Gradio route refused on
purpose, 404/405 otherwise). An allowed request then passes, in this order:

1. **open requests per address**: at most ``OPEN_PER_ADDRESS`` at once (held streams included: heartbeats, event
   streams), else 429 (held back ``TARPIT_S`` for up to ``OPEN_PER_ADDRESS`` more, at once past that);
2. **tarpit**: an address refused ``REFUSALS_PER_WINDOW`` times within ``REFUSAL_WINDOW_S`` seconds is refused
   before anything else, each answer held back up to ``TARPIT_S`` seconds (a client that ignores Retry-After slows
   itself down);
3. **body limit** per route, from ``Content-Length`` and again while the body streams in (413 as soon as it is over);
4. **server time**, GET included: a token bucket per address and per session (:class:`~medadapt.ui.ration.TokenBuckets`,
   ``ADDRESS_BUDGET``/``SESSION_BUDGET``) pays each request's measured cost (the route's; a queue join also its
   handler's measured CPU time, :mod:`medadapt.ui.event_cost`, so a results-file parse is not a cheap event); an
   empty bucket is 429.
   The page, its config and the API info are served from :class:`~medadapt.ui.page_cache.PageCache` when it holds
   them (``CACHED_COST_S``);
5. for queue joins and the app's own ``/call/<api_name>`` (its public API names only): a well-formed body (400
   otherwise: malformed or too deeply nested JSON, a file payload, which the app never takes and Gradio would fetch
   from a URL), then the issue-17 limits: queued and running events per session and per address
   (:class:`medadapt.ui.inflight.Limits`; one generation and one heavy event per address), a full queue (503), ``SESSIONS_PER_WINDOW`` new sessions and
   ``GENERATIONS_PER_WINDOW`` Compare questions per ``WINDOW_S`` per address, and the per-address rations of
   ``EVENT_RATIONS`` (exports);
6. ``/cancel`` and ``/reset`` carry a small JSON of ids, checked (400 otherwise).

Every refusal is JSON with a message, ``Retry-After`` where waiting helps, and counts towards the tarpit. The guard
never raises: whatever a request holds, its own checks end in an answer (a malformed body is a counted 400), never
a 500. The client address is the one uvicorn gives, which trusts forwarded headers only from the configured proxies
(:mod:`medadapt.ui.proxies`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from medadapt.ui import routes
from medadapt.ui.inflight import GENERATE, InFlight
from medadapt.ui.page_cache import PageCache
from medadapt.ui.ration import TokenBuckets

log = logging.getLogger(__name__)

BLOCKED_POSTS = {  # routes the app never needs: refused in any mode, before the body is read
    "/gradio_api/upload": routes.NO_FILES,
    "/gradio_api/process_recording": routes.NO_FILES,  # writes every upload to the temp dir, runs ffmpeg on it
    "/gradio_api/component_server": "This app has no component server functions.",  # each new session costs
}
GENERATIONS_PER_WINDOW = 6
SESSIONS_PER_WINDOW = 10  # new sessions (page loads) per address; Gradio copies the whole UI config for each one
WINDOW_S = 60.0
EVENT_RATIONS = {"export": 6}  # api name -> events per WINDOW_S per address (each export renders the whole result)
REFUSALS_PER_WINDOW, REFUSAL_WINDOW_S = 30, 10.0  # a flood past this is refused without reading (or parsing) bodies
TARPIT_S = 5.0  # ... and each such refusal is answered this late (at most), so a flood slows itself down
OPEN_PER_ADDRESS = 24  # requests in progress per address, streams included (a page holds 2 streams + 6 fetches)
ADDRESS_BUDGET = (2.0, 0.05)  # seconds of server CPU an address may spend at once, and per second after that
SESSION_BUDGET = (1.5, 0.05)  # the same per page session (a page's timers spend ~0.02 s per second)
EVENT_COST_S = 0.05  # an event's run time before Gradio has measured it
CACHED_COST_S = 0.005  # the page, config or API info served from the page cache (1-1.5 ms of CPU, and the
# GIL taken from the generation thread for each of them: a flood of them slowed honest answers 1.25-1.51x at 2 ms)
BODY_COST_S_PER_MB = 0.02  # reading and parsing a join's body (twice: here and in Gradio)
MAX_BODY_BYTES = routes.JOIN_BYTES
MAX_DEPTH, MAX_ITEMS = 16, 10_000  # a join's data: the page's deepest value is a table (3 levels)
SESSION_CHARS = 128
WHAT = {"address": "requests in progress from your address", "session": "requests in progress in this page",
        "gen-address": "questions in progress from your address", "gen-session": "questions in progress in this page",
        "heavy-address": "slow requests in progress from your address",
        "heavy-session": "slow requests in progress in this page"}


class Refusal(Exception):
    """A request the guard answers itself: HTTP status, message, and when to retry (None: do not)."""

    def __init__(self, status: int, message: str, retry_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_s = status, message, retry_s


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
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-medadapt-guard", b"refused")]
    if retry_s is not None:
        headers.append((b"retry-after", str(int(retry_s) + 1).encode()))
    return status, headers, body


async def _respond(send: Any, status: int, message: str, retry_s: float | None = None) -> None:
    status, headers, body = _refusal(status, message, retry_s)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _client(scope: dict) -> str:
    return str((scope.get("client") or ("?",))[0])


def _path(scope: dict) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def _header(scope: dict, name: bytes) -> bytes | None:
    return next((v for k, v in scope.get("headers") or [] if k == name), None)


def _has_file(value: Any) -> bool:
    """Whether a join's data holds a file object (a dict naming a path or a URL); raises Refusal when it is nested
    deeper or holds more values than any of the page's inputs could."""
    stack, items = [(value, 0)], 0
    while stack:
        v, depth = stack.pop()
        items += 1
        if depth > MAX_DEPTH or items > MAX_ITEMS:
            raise Refusal(400, "Malformed request: its data is nested too deeply or holds too many values.")
        if isinstance(v, dict):
            if {"path", "url"} & v.keys() or (isinstance(v.get("meta"), dict) and "_type" in v["meta"]):
                return True
            stack += [(x, depth + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, depth + 1) for x in v]
    return False


def _json_body(body: bytes) -> dict:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError) as e:  # RecursionError: a body of 50,000 '['
        raise Refusal(400, f"Malformed request: the body is not valid JSON ({type(e).__name__}).") from None
    if not isinstance(data, dict):
        raise Refusal(400, "Malformed request: the body must be a JSON object.")
    return data


def _short_str(data: dict, key: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= SESSION_CHARS:
        raise Refusal(400, f"Malformed request: '{key}' must be a short string.")
    return value


class RequestGuard:
    """Wraps an ASGI app; with ``inflight`` (public mode: it counts clients' events in the Gradio queue it was built
    on) every request is checked as the module docstring says."""

    def __init__(self, app: Any, inflight: InFlight | None = None) -> None:
        self.app, self.inflight = app, inflight
        self.limiter = RateLimiter(GENERATIONS_PER_WINDOW, WINDOW_S)  # Compare generations per address
        self.sessions = RateLimiter(SESSIONS_PER_WINDOW, WINDOW_S)  # new sessions per address
        self.refused = RateLimiter(REFUSALS_PER_WINDOW, REFUSAL_WINDOW_S)  # past this, refused before the body
        self.rations = {name: RateLimiter(n, WINDOW_S) for name, n in EVENT_RATIONS.items()}
        self.address_budget = TokenBuckets(*ADDRESS_BUDGET)
        self.session_budget = TokenBuckets(*SESSION_BUDGET)
        self.pages = PageCache()  # the page, config and API info: the same for everyone, rendered once a while
        self.open: Counter = Counter()  # address -> requests in progress
        self.waiting: Counter = Counter()  # address -> requests over that limit, held before their refusal
        self.refusals: Counter = Counter()  # status -> refusals answered (bench/abuse.py reads it)

    # ------------------------------------------------------------------ entry

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope.get("type")
        if kind == "websocket" and self.inflight is not None:  # the page uses none
            await send({"type": "websocket.close", "code": 1008})
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        if self.inflight is None:
            path = _path(scope).rstrip("/")
            if scope.get("method") == "POST" and path in BLOCKED_POSTS:
                await self._refuse(send, _client(scope), Refusal(403, BLOCKED_POSTS[path]))
                return
            await self.app(scope, receive, send)
            return
        address = _client(scope)
        if self.open[address] >= OPEN_PER_ADDRESS:
            if self.waiting[address] < OPEN_PER_ADDRESS:  # answered late (a bounded number at once): a client
                self.waiting[address] += 1  # opening connection after connection slows itself down
                try:
                    await asyncio.sleep(TARPIT_S)
                finally:
                    self.waiting[address] -= 1
                    if self.waiting[address] <= 0:
                        del self.waiting[address]
            await self._refuse(send, address, Refusal(
                429, f"Too many open requests from your address: at most {OPEN_PER_ADDRESS} at a time.", 1.0))
            return
        self.open[address] += 1
        try:
            await self._public(scope, receive, send, address)
        finally:
            self.open[address] -= 1
            if self.open[address] <= 0:
                del self.open[address]

    async def _public(self, scope: dict, receive: Any, send: Any, address: str) -> None:
        try:
            if (wait := self.refused.wait_s(address)) > 0:  # it ignores Retry-After: its next tries wait here, unread
                await asyncio.sleep(min(wait, TARPIT_S))
                raise Refusal(429, f"Too many refused requests from your address: at most {self.refused.limit} per "
                              f"{self.refused.window_s:.0f} s. Retry in {self.refused.wait_s(address):.0f} s.",
                              self.refused.wait_s(address))
            admitted = await self._admit(scope, receive, address)
        except Refusal as r:
            await self._refuse(send, address, r)
            return
        except Exception as e:  # noqa: BLE001 — the guard's own checks never end in a 500
            log.warning("request guard: %s from %s refused on %s: %s", scope.get("path"), address, type(e).__name__, e)
            await self._refuse(send, address, Refusal(400, "Malformed request."))
            return
        messages, fn, held, cache_key = admitted
        if cache_key is not None and await self.pages.send_cached(send, cache_key):
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        if held is not None:
            send = self._queue_full_says_when(send, fn)
        elif cache_key is not None:
            send = self.pages.recording(send, cache_key)
        try:
            await self.app(scope, replay, send)
        finally:
            if held is not None:
                self.inflight.release(held)

    async def _refuse(self, send: Any, address: str, r: Refusal) -> None:
        self.refused.take(address)  # a client refused again and again is next refused before its body is read
        self.refusals[r.status] += 1
        await _respond(send, r.status, r.message, r.retry_s)

    # ------------------------------------------------------------------ the checks

    async def _admit(self, scope: dict, receive: Any, address: str) -> tuple[list[dict], Any, list | None, Any]:
        """The body's messages (to replay), the event's function and its held in-flight slots (joins), the page cache's
        key (the page, config and API info), or Refusal."""
        method, path = scope.get("method", ""), _path(scope)
        found = routes.allowed(method, path)
        if found is None:
            raise Refusal(*routes.refusal_reason(method, path))
        route, params = found
        if route.kind == "call" and params.get("api_name") not in self.public_api_names():
            raise Refusal(404, f"This app has no API named {params.get('api_name')!r}.")
        try:
            declared = int(_header(scope, b"content-length") or 0)
        except ValueError:
            raise Refusal(400, "Malformed request: bad Content-Length.") from None
        if declared > route.body_bytes:
            raise self._too_large(route)
        session = params.get("session_hash") or self._query_session(scope)
        if route.kind not in ("join", "call"):
            cache_key = self.pages.key(scope, path)
            cached = cache_key is not None and self.pages.get(cache_key) is not None
            self._pay(address, session, CACHED_COST_S if cached else route.cost_s)
            messages, body = await self._read_body(receive, route)
            if route.kind == "control":
                self._check_control(path, body)
            return messages, None, None, cache_key
        if (over := self.inflight.over(address, None, False)) is not None:  # needs no body
            raise self._too_many(address, None, *over)
        messages, body = await self._read_body(receive, route)
        data = _json_body(body)
        fn, session = self._event(route, params, data)
        generation = getattr(fn, "concurrency_id", None) == GENERATE
        heavy = self.inflight.heavy(fn)
        self._limits(address, fn, session, generation, heavy)
        cost = route.cost_s + len(body) / routes.MB * BODY_COST_S_PER_MB + (0.0 if generation else self._run_s(fn))
        self._pay(address, session, cost)
        for name, limiter in self.rations.items():
            if getattr(fn, "api_name", None) == name and (wait := limiter.take(address)) > 0:
                raise Refusal(429, f"Too many {name}s from your address: at most {limiter.limit} per "
                                   f"{limiter.window_s:.0f} s. Retry in {wait:.0f} s.", wait)
        return messages, fn, self.inflight.admit(address, session, generation, heavy), None

    def public_api_names(self) -> set[str]:
        return {f.api_name for f in self.inflight.blocks.fns.values()
                if f.api_name and getattr(f, "api_visibility", "public") == "public"}

    @staticmethod
    def _query_session(scope: dict) -> str | None:
        query = scope.get("query_string") or b""
        if b"session_hash" not in query:
            return None
        values = parse_qs(query.decode("latin-1")).get("session_hash") or [None]
        return values[0] if values[0] and len(values[0]) <= SESSION_CHARS else None

    def _pay(self, address: str, session: str | None, cost_s: float) -> None:
        """Spend ``cost_s`` of the address's (and session's) server time, or Refusal saying when there is enough."""
        wait = self.address_budget.take(address, cost_s)
        if wait == 0 and session and (wait := self.session_budget.take(session, cost_s)) > 0:
            self.address_budget.charge(address, -cost_s)  # refund: nothing was done
        if wait > 0:
            raise Refusal(429, f"Too many requests from your address: its share of the server's time is used up. "
                               f"Retry in {wait:.0f} s.", wait)

    @staticmethod
    def _too_large(route: routes.Route) -> Refusal:
        if route.body_bytes == 0:
            return Refusal(413, "This request takes no body.")
        return Refusal(413, f"Request too large: at most {route.body_bytes // 1024:,} KB"
                            + (" (questions are cut at 4,000 characters anyway)." if route.kind in ("join", "call")
                               else "."))

    async def _read_body(self, receive: Any, route: routes.Route) -> tuple[list[dict], bytes]:
        """The body (its messages kept to replay to the app); Refusal as soon as it is over the route's limit."""
        messages, chunks, size = [], [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":  # the client left
                return messages, b"".join(chunks)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > route.body_bytes:
                raise self._too_large(route)
            if not message.get("more_body"):
                return messages, b"".join(chunks)

    @staticmethod
    def _check_control(path: str, body: bytes) -> None:
        data = _json_body(body)
        _short_str(data, "event_id")
        if path.rstrip("/").endswith("/cancel"):
            _short_str(data, "session_hash")
            if not isinstance(data.get("fn_index"), int) or isinstance(data.get("fn_index"), bool):
                raise Refusal(400, "Malformed request: 'fn_index' must be an integer.")

    def _event(self, route: routes.Route, params: dict, data: dict) -> tuple[Any, str | None]:
        """The Gradio function a join starts and its session hash; Refusal for a body Gradio should never see."""
        if not isinstance(data.get("data"), list):
            raise Refusal(400, "Malformed request: 'data' must be a list.")
        if _has_file(data["data"]) or _has_file(data.get("event_data")):
            raise Refusal(400, routes.NO_FILES + " A request may not carry a file object (a path or a URL).")
        session = _short_str(data, "session_hash", required=route.kind == "join")
        fns = self.inflight.blocks.fns
        if route.kind == "call":
            name = params["api_name"]
            return next(f for f in fns.values() if f.api_name == name), session
        index = data.get("fn_index")
        if not isinstance(index, int) or isinstance(index, bool) or index not in fns or fns[index].fn is None:
            raise Refusal(400, "Malformed request: 'fn_index' names no event of this app.")
        trigger = data.get("trigger_id")
        if trigger is not None and (not isinstance(trigger, int) or isinstance(trigger, bool)):
            raise Refusal(400, "Malformed request: 'trigger_id' must be an integer or null.")
        return fns[index], session

    def _run_s(self, fn: Any) -> float:
        """What the event costs: its handler's mean CPU time so far (``EVENT_COST_S`` before the first call)."""
        cost = self.inflight.cost_s(fn)
        return EVENT_COST_S if cost is None else cost

    def _limits(self, address: str, fn: Any, session: str | None, generation: bool, heavy: bool) -> None:
        inflight = self.inflight
        if (over := inflight.over(address, session, generation, heavy)) is not None:
            raise self._too_many(address, session, *over)
        if inflight.queue_full():
            wait = inflight.full_retry_s(fn)
            raise Refusal(503, f"The queue is full ({inflight.queue.max_size} requests waiting). Retry in {wait:.0f} s.",
                          wait)
        new_session = session is None or session not in inflight.blocks.state_holder  # /call/ without one: new
        if new_session and (wait := self.sessions.take(address)) > 0:
            raise Refusal(429, f"Too many new sessions from your address: at most {self.sessions.limit} per "
                               f"{self.sessions.window_s:.0f} s (each page load is one). Retry in {wait:.0f} s.", wait)
        if generation and (wait := self.limiter.take(address)) > 0:
            raise Refusal(429, f"Too many questions from your address: at most {self.limiter.limit} per "
                               f"{self.limiter.window_s:.0f} s. Retry in {wait:.0f} s.", wait)

    def _too_many(self, address: str, session: str | None, kind: str, limit: int) -> Refusal:
        wait = self.inflight.client_retry_s(address, session, kind)
        return Refusal(429, f"Too many {WHAT[kind]}: at most {limit} at a time. One of them should be done in about "
                            f"{wait:.0f} s; retry then.", wait)

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
