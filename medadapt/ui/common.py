"""Shared UI pieces: theme, CSS, the profile banner and user-facing message helpers."""
from __future__ import annotations

import hmac
import html
import logging
import os
import threading
import time
from typing import Any

import gradio as gr

from medadapt.config import AppConfig
from medadapt.env import env_flag
from medadapt.pipeline import DISCLAIMER
from medadapt.ui.redact import path_redactor

log = logging.getLogger(__name__)

CSS = """
.gradio-container { max-width: 100% !important; }
#ma-columns { flex-wrap: nowrap !important; gap: 10px; }
#ma-columns > .column { min-width: 0 !important; flex: 1 1 0 !important; }
.ma-col { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 8px 10px; background: var(--background-fill-secondary); }
.ma-col-title h3 { margin: 0 !important; }
.ma-col-sub p { margin: 0 !important; font-size: 0.85em; opacity: 0.75; }
.ma-stats p { font-size: 0.82em; opacity: 0.85; margin: 0 !important; }
.ma-disclaimer { font-size: 0.75em; opacity: 0.7; font-style: italic; }
.ma-banner { padding: 6px 12px; border-radius: 8px; background: var(--color-accent-soft); }
.ma-snippets { font-size: 0.85em; margin-top: 6px; }
.ma-snippets-head { font-weight: 600; margin-bottom: 4px; }
.ma-snippet { border-left: 3px solid var(--border-color-primary); padding: 2px 6px; margin: 3px 0; }
.ma-snippet.is-cited { border-left-color: var(--color-accent); }
.ma-src { opacity: 0.7; font-size: 0.9em; }
.ma-cited { background: var(--color-accent); color: white; border-radius: 4px; padding: 0 4px; font-size: 0.8em; }
.ma-snippet-text { white-space: pre-wrap; max-height: 220px; overflow-y: auto; }
.ma-empty { opacity: 0.75; font-style: italic; }
"""

THEME = gr.themes.Soft(primary_hue="teal", secondary_hue="slate")


def is_public(cfg: Any) -> bool:
    return bool(getattr(cfg, "public", False)) or env_flag("MEDADAPT_PUBLIC")


class SecretThrottle:
    """Wrong admin secrets per client: after the n-th wrong one in a row the client's attempts are refused for
    ``base * 2**(n-1)`` seconds (at most ``cap``), so guessing slows down exponentially; a right one clears it."""

    def __init__(self, base: float = 1.0, cap: float = 300.0, clock: Any = time.monotonic) -> None:
        self.base, self.cap, self.clock = base, cap, clock
        self._state: dict[str, tuple[int, float]] = {}  # client -> (wrong attempts in a row, refused until)
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds this client must still wait before its next attempt counts (0: it may try now)."""
        with self._lock:
            return max(0.0, self._state.get(client, (0, 0.0))[1] - self.clock())

    def failed(self, client: str) -> float:
        with self._lock:
            n = self._state.get(client, (0, 0.0))[0] + 1
            delay = min(self.cap, self.base * 2 ** (n - 1))
            self._state[client] = (n, self.clock() + delay)
            return delay

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._state.pop(client, None)


ADMIN_THROTTLE = SecretThrottle()


def client_id(request: Any) -> str:
    """The client's address as Gradio saw it ('?' without a request)."""
    host = getattr(getattr(request, "client", None), "host", None)
    return str(host or "?")


def unlocked(cfg: Any, secret: str | None, request: Any = None) -> bool:
    """Launching jobs is allowed: not public, or ``secret`` equals ``MEDADAPT_ADMIN_PASSWORD`` (no password: locked).

    In public mode wrong secrets are throttled per client (:class:`SecretThrottle`) and logged; while a client
    waits, even the right secret is refused.
    """
    if not is_public(cfg):
        return True
    password = os.environ.get("MEDADAPT_ADMIN_PASSWORD", "")
    if not password or not secret:
        return False
    client = client_id(request)
    wait = ADMIN_THROTTLE.wait_s(client)
    if wait > 0:
        log.warning("admin secret attempt from %s refused: throttled for %.0f more s", client, wait)
        return False
    if hmac.compare_digest(secret.encode(), password.encode()):
        ADMIN_THROTTLE.succeeded(client)
        return True
    delay = ADMIN_THROTTLE.failed(client)
    log.warning("wrong admin secret from %s; its next attempt waits %.0f s", client, delay)
    return False


def launch_options(cfg: AppConfig, demo: Any = None) -> dict:
    """Keyword arguments for ``demo.launch`` shared by the app, the tests and the benches (``demo``'s queue is calmed:
    :func:`calm_queue`).

    The request guard refuses uploads (the app has no file input) and, in public mode with ``demo`` given, lets through
    only the routes the page uses and rations each client's requests, events and Compare generations in ``demo``'s
    queue (:mod:`medadapt.ui.guard`). The server believes forwarded client addresses only from the configured proxies
    (:func:`medadapt.ui.proxies.use_trusted_proxies`).
    """
    from starlette.middleware import Middleware

    from medadapt.ui.event_cost import EventCosts
    from medadapt.ui.guard import RequestGuard
    from medadapt.ui.inflight import GENERATE, InFlight
    from medadapt.ui.proxies import use_trusted_proxies

    use_trusted_proxies()
    public = is_public(cfg) and demo is not None
    inflight = InFlight(demo, costs=EventCosts(demo, skip={GENERATE})) if public else None
    guard = Middleware(RequestGuard, inflight=inflight)
    if demo is not None:
        calm_queue(demo)
    return {"theme": THEME, "css": CSS, "ssr_mode": False, "show_error": True,
            "max_file_size": "5mb" if cfg.public else "200mb", "app_kwargs": {"middleware": [guard]}}


QUEUE_IDLE_POLL_S = 0.01


def calm_queue(demo: Any, poll_s: float = QUEUE_IDLE_POLL_S) -> None:
    """Make ``demo``'s event queue look for work every ``poll_s`` seconds when it has none, not gradio's 1 ms on
    Linux: that loop alone kept ~8% of a core busy in an idle app, taken from the first-run setup's training on a
    2-core machine (docs/PERFORMANCE.md). An event then waits at most ``poll_s`` before it starts. Call after
    ``demo.queue()`` (which makes a new queue); gradio has no public setting for this.
    """
    queue = getattr(demo, "_queue", None)
    if queue is not None and getattr(queue, "sleep_when_free", poll_s) < poll_s:
        queue.sleep_when_free = poll_s


NO_STORAGE = ("No persistent storage: runs, the index, votes and results are lost when this Space restarts "
              "(add persistent storage in the Space's settings to keep them in /data).")


def banner(cfg: AppConfig) -> str:
    """The profile line (which model and data, and why), public mode, and on a Space its hardware and storage."""
    mode = " · <b>public mode</b> (training and evaluation launches are locked)" if cfg.public else ""
    space = ""
    if cfg.hardware:
        kept = f"runs, index, votes and results kept in {cfg.storage}" if cfg.storage else NO_STORAGE
        space = f"<br><small id='ma-space'>Space hardware: {html.escape(cfg.hardware)} · {html.escape(kept)}</small>"
    described = path_redactor(cfg)(cfg.describe())  # the data dir as its setting's name, not the server's path
    return (f"<div class='ma-banner' id='ma-banner'><b>MedAdapt</b> — {html.escape(described)}{mode}{space}"
            f"<br><small>{DISCLAIMER}</small></div>")


def warn(message: str) -> None:
    """Show a user-facing warning toast (never raises)."""
    gr.Warning(message)
