"""Public mode's allow-list: every route and method the page (or ``gradio_client``) uses, what one request costs the
server, and how large a body it may carry; every other route of the Gradio app is refused on purpose, with a reason.

Routes are Gradio's own path templates (Gradio 6.31's router), so ``tests/test_public_routes.py`` can list the running
app's routes and fail on any that is in neither table: a Gradio upgrade cannot open a route silently.

Costs are seconds of server CPU per request, measured with ``python bench/abuse.py --costs`` on the offline app
(2-core AMD EPYC, docs/PERFORMANCE.md) and rounded; a queue join also costs its handler's measured CPU time
(:mod:`medadapt.ui.event_cost`). A page load is ``/`` plus ~30 assets and fonts: about 0.3-0.5 s in all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.routing import compile_path

KB, MB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Route:
    """One allowed route: its methods, Gradio's path template, what it is and what one request may cost."""

    methods: frozenset[str]
    template: str
    kind: str  # page | asset | api_info | stream | join | call | control
    cost_s: float  # server CPU one request costs (a join: plus its event's run time)
    body_bytes: int = 0  # the largest body it may carry (0: none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", compile_path(self.template)[0])

    def matches(self, method: str, path: str) -> re.Match | None:
        return self._regex.match(path) if method in self.methods else None


GET, POST = frozenset({"GET", "HEAD"}), frozenset({"POST"})
JOIN_BYTES = 2 * MB  # one question (cut at 4,000 characters anyway) and a few settings
CONTROL_BYTES = 1 * KB  # /cancel and /reset: three short ids

ALLOWED = (
    Route(GET, "/", "page", 0.050),  # rendered; from the page cache: guard.CACHED_COST_S
    Route(GET, "/config", "api_info", 0.025),  # gradio_client reads the config (the page has it inline)
    Route(GET, "/config/", "api_info", 0.025),
    Route(GET, "/gradio_api/info", "api_info", 0.015),  # gradio_client: the API's endpoints
    Route(GET, "/gradio_api/info/", "api_info", 0.015),
    Route(GET, "/assets/{path:path}", "asset", 0.008),
    Route(GET, "/static/{path:path}", "asset", 0.003),
    Route(GET, "/theme.css", "asset", 0.002),
    Route(GET, "/favicon.ico", "asset", 0.002),
    Route(GET, "/robots.txt", "asset", 0.002),
    Route(GET, "/gradio_api/startup-events", "asset", 0.002),  # Gradio's launch calls it; it acts only once
    Route(GET, "/gradio_api/heartbeat/{session_hash}", "stream", 0.003),  # held open while the page is
    Route(GET, "/gradio_api/queue/data", "stream", 0.003),  # the session's event stream
    Route(POST, "/gradio_api/queue/join", "join", 0.010, JOIN_BYTES),
    Route(POST, "/gradio_api/call/{api_name}", "call", 0.010, JOIN_BYTES),  # the app's own public API names only
    Route(POST, "/gradio_api/call/{api_name}/", "call", 0.010, JOIN_BYTES),
    Route(GET, "/gradio_api/call/{api_name}/{event_id}", "stream", 0.003),
    Route(POST, "/gradio_api/cancel", "control", 0.002, CONTROL_BYTES),  # the Stop button
    Route(POST, "/gradio_api/reset", "control", 0.002, CONTROL_BYTES),
    Route(POST, "/gradio_api/reset/", "control", 0.002, CONTROL_BYTES),
)

NO_FILES = "This app takes no file uploads: it has no file input."
NOT_HERE = "Not served by this app."
DIRECT = "This app answers through its queue only: POST /gradio_api/queue/join (or /gradio_api/call/<api_name>)."
NO_AUTH = "This app has no login."
# Every other route of Gradio 6.31's app, refused on purpose: (methods, template) -> why (shown to the client)
REFUSED = {
    **{(m, t): NO_AUTH for m, t in (("POST", "/login"), ("POST", "/login/"), ("GET", "/logout"),
                                    ("GET", "/gradio_api/user"), ("GET", "/gradio_api/user/"),
                                    ("GET", "/gradio_api/login_check"), ("GET", "/gradio_api/login_check/"),
                                    ("GET", "/gradio_api/token"), ("GET", "/gradio_api/token/"))},
    **{("POST", t): NO_FILES for t in ("/gradio_api/upload", "/gradio_api/process_recording")},  # disk, ffmpeg
    **{("GET", t): NO_FILES for t in ("/gradio_api/upload_progress", "/gradio_api/file={path_or_url:path}",
                                      "/gradio_api/file/{path:path}", "/gradio_api/proxy={url_path:path}")},
    **{("HEAD", t): NO_FILES for t in ("/gradio_api/file={path_or_url:path}", "/gradio_api/proxy={url_path:path}")},
    **{("POST", t): DIRECT for t in ("/gradio_api/run/{api_name}", "/gradio_api/run/{api_name}/",
                                     "/gradio_api/api/{api_name}", "/gradio_api/api/{api_name}/",
                                     "/gradio_api/call/v2/{api_name}", "/gradio_api/call/v2/{api_name}/")},
    ("GET", "/gradio_api/call/v2/{api_name}/{event_id}"): DIRECT,
    **{("POST", t): "This app has no component server functions." for t in ("/gradio_api/component_server",
                                                                            "/gradio_api/component_server/")},
    **{(m, t): NOT_HERE for m, t in (
        ("GET", "/svelte/{path:path}"), ("GET", "/gradio_api/deep_link"), ("GET", "/gradio_api/app_id"),
        ("GET", "/gradio_api/app_id/"), ("GET", "/gradio_api/dev/reload"), ("GET", "/gradio_api/runs"),
        ("GET", "/gradio_api/runs/"), ("POST", "/gradio_api/run-history/connect"),
        ("GET", "/gradio_api/run-history/buckets"), ("GET", "/gradio_api/run-history/records"),
        ("GET", "/gradio_api/run-history/records/{endpoint}/{record_id}/assets/{asset_id}"),
        ("GET", "/gradio_api/openapi.json"), ("GET", "/openapi.json"), ("HEAD", "/openapi.json"),
        ("GET", "/gradio_api/custom_component/{id}/{environment}/{type}/{file_name}"),
        ("POST", "/gradio_api/stream/{event_id}"), ("POST", "/gradio_api/stream/{event_id}/close"),
        ("GET", "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist.m3u8"),
        ("GET", "/gradio_api/stream/{session_hash}/{run}/{component_id}/{segment_id}.{ext}"),
        ("GET", "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist-file"),
        ("GET", "/gradio_api/queue/status"), ("GET", "/gradio_api/theme.css"),
        ("GET", "/pwa_icon"), ("GET", "/pwa_icon/{size}"), ("GET", "/manifest.json"), ("GET", "/monitoring"),
        ("GET", "/monitoring/summary"), ("GET", "/monitoring/{key}"), ("GET", "/gradio_api/profiling/traces"),
        ("GET", "/gradio_api/profiling/summary"), ("POST", "/gradio_api/profiling/clear"),
        ("POST", "/gradio_api/vibe-edit"), ("POST", "/gradio_api/vibe-edit/"), ("POST", "/gradio_api/undo-vibe-edit"),
        ("POST", "/gradio_api/undo-vibe-edit/"), ("GET", "/gradio_api/vibe-code"), ("GET", "/gradio_api/vibe-code/"),
        ("POST", "/gradio_api/vibe-code"), ("POST", "/gradio_api/vibe-code/"), ("POST", "/gradio_api/vibe-starter-queries"),
        ("POST", "/gradio_api/vibe-starter-queries/"), ("GET", "/{page}"), ("GET", "/{page}/"))},
}
_REFUSED = [(m, compile_path(t)[0], why) for (m, t), why in REFUSED.items()]


def allowed(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The allowed route a request takes and its path parameters, or None."""
    for route in ALLOWED:
        if (m := route.matches(method, path)) is not None:
            return route, m.groupdict()
    return None


def refusal_reason(method: str, path: str) -> tuple[int, str]:
    """(status, why) for a request no allowed route takes: 403 for a route Gradio has and this app refuses, else
    404 (405 for another method of an allowed route)."""
    for m, regex, why in _REFUSED:
        if m == method and regex.match(path) and not why == NOT_HERE:
            return 403, why
    if any(r._regex.match(path) for r in ALLOWED):
        return 405, f"{method} is not allowed here."
    return 404, NOT_HERE
