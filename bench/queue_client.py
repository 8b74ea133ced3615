"""A minimal Gradio queue client over plain HTTP, from a chosen loopback source address (benches and tests).

``gradio_client`` cannot bind its sockets, and the request guard keys clients on their address, so the abuse bench
and ``tests/test_abuse.py`` speak the queue protocol themselves: ``POST /gradio_api/queue/join``, then read the
session's ``GET /gradio_api/queue/data`` event stream until the event's ``process_completed`` message.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Reply:
    status: int  # of the join: 200 accepted, 429/503/413/403 refused
    error: str = ""  # the refusal message, or the event's error
    retry_after: float | None = None
    output: list[Any] | None = None  # the event's final output data (None when refused or failed)
    seconds: float = 0.0  # join to completion


def fn_index(demo: Any, api_name: str) -> int:
    return next(i for i, f in demo.fns.items() if getattr(f, "api_name", None) == api_name)


class QueueClient:
    """One browser-like session from ``address`` (any 127.0.0.x works on Linux loopback)."""

    def __init__(self, url: str, address: str = "127.0.0.1", session: str | None = None, timeout: float = 120):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = session or uuid.uuid4().hex[:12]
        self.http = httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def join(self, fn: int, data: list[Any], session: str | None = None) -> tuple[Reply, str | None]:
        """Start an event; the reply (status, refusal) and its event id when accepted."""
        body = {"data": data, "fn_index": fn, "session_hash": session or self.session, "trigger_id": None,
                "event_data": None}
        r = self.http.post(f"{self.url}/gradio_api/queue/join", json=body)
        if r.status_code != 200:
            try:
                message = r.json().get("error") or r.json().get("detail") or r.text
            except ValueError:
                message = r.text
            retry = r.headers.get("retry-after")
            return Reply(r.status_code, str(message), float(retry) if retry else None), None
        return Reply(200), r.json()["event_id"]

    def wait(self, event_id: str, session: str | None = None) -> Reply:
        """Read the session's event stream until ``event_id`` completes."""
        params = {"session_hash": session or self.session}
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data", params=params) as r:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event_id):
                    continue
                if msg.get("msg") == "process_completed":
                    out = msg.get("output") or {}
                    if msg.get("success"):
                        return Reply(200, output=out.get("data"))
                    return Reply(200, error=str(out.get("error") or out))
                if msg.get("msg") in ("unexpected_error", "close_stream"):
                    return Reply(200, error=str(msg.get("message") or msg.get("msg")))
        return Reply(200, error="the event stream ended early")

    def call(self, fn: int, data: list[Any]) -> Reply:
        """Join and wait: the whole round trip a page makes for one event."""
        t0 = time.perf_counter()
        reply, event_id = self.join(fn, data)
        if event_id is not None:
            reply = self.wait(event_id)
        reply.seconds = time.perf_counter() - t0
        return reply
