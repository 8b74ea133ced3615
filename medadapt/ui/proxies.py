"""Whose ``X-Forwarded-For`` the server believes: only proxies the operator names.

uvicorn (which Gradio runs) rewrites a request's client address from ``X-Forwarded-For`` when the connecting peer is
in ``FORWARDED_ALLOW_IPS``, and when that variable is unset it trusts ``127.0.0.1`` and ``::1``: any local client
could then claim any address and escape every per-address limit. :func:`use_trusted_proxies` (called by
:func:`medadapt.ui.common.launch_options`, before the server starts) sets the list uvicorn reads:

- ``MEDADAPT_TRUSTED_PROXIES`` (the project's setting: addresses or networks, comma-separated; empty = nobody), else
- ``FORWARDED_ALLOW_IPS`` as the operator set it (uvicorn's own variable), else
- on a Hugging Face Space (``SPACE_ID``): the private networks. A Space's container is reached only through the Hub's
  reverse proxy, which connects from an internal private address (10.x) and appends the visitor's address to
  ``X-Forwarded-For`` (it also sends ``X-Forwarded-Proto`` and, for ZeroGPU quotas, a signed ``X-IP-Token``);
- anywhere else: nobody (the peer's own address is the client).

uvicorn takes the right-most address of ``X-Forwarded-For`` that is not a trusted proxy, so a visitor's own
(spoofed) entries, which sit to the left of the one the proxy appended, are never used.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

SPACE_PROXIES = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
_ours: str | None = None  # the FORWARDED_ALLOW_IPS value this module set (not the operator's)


def trusted_proxies(environ: Mapping[str, str] | None = None) -> str:
    """The addresses and networks whose forwarded headers are believed, in ``FORWARDED_ALLOW_IPS`` syntax."""
    env = os.environ if environ is None else environ
    if "MEDADAPT_TRUSTED_PROXIES" in env:
        return env["MEDADAPT_TRUSTED_PROXIES"].strip()
    operator = env.get("FORWARDED_ALLOW_IPS")
    if operator is not None and operator != _ours:
        return operator.strip()
    return SPACE_PROXIES if env.get("SPACE_ID") else ""


def use_trusted_proxies() -> str:
    """Make the server Gradio starts next trust exactly :func:`trusted_proxies` (returned)."""
    global _ours
    _ours = os.environ["FORWARDED_ALLOW_IPS"] = trusted_proxies()
    return _ours
