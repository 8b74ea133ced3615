"""An ASGI middleware in front of the Gradio app: refuses what the app never needs from a visitor.

The app has no file input, yet Gradio serves ``POST /gradio_api/upload`` for any app: anyone could store files on
the server and download them again. The guard answers such requests with 403 before Gradio reads the body.
"""
from __future__ import annotations

import json
from typing import Any

BLOCKED_POSTS = ("/gradio_api/upload",)


class RequestGuard:
    """Wraps an ASGI app; POSTs to ``BLOCKED_POSTS`` get ``403`` with a JSON message, everything else passes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST" and \
                scope.get("path", "").rstrip("/").endswith(BLOCKED_POSTS):
            body = json.dumps({"error": "This app takes no file uploads."}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
