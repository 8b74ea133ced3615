"""Which engine serves generations: ``MEDADAPT_ENGINE`` (``local``, the default, or ``openai``), whether the local one
batches continuously (``MEDADAPT_BATCHING``), and how many questions may generate at once.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medadapt.config import AppConfig
    from medadapt.engine_api import TextEngine

ENGINE_ENV = "MEDADAPT_ENGINE"
ENGINES = ("local", "openai")


def batching_enabled() -> bool:
    """Continuous batching in the in-process engine, unless ``MEDADAPT_BATCHING`` is 0/false/no/off (then one
    generation at a time: the serial baseline of ``bench/serve_load.py``)."""
    return os.environ.get("MEDADAPT_BATCHING", "on").strip().lower() not in ("0", "false", "no", "off")


def concurrent_generations() -> int:
    """How many questions may generate at once: 1 on the serial path, else ``MEDADAPT_CONCURRENT_ASKS`` (default
    16; the in-process batch then holds up to 64 rows)."""
    if engine_kind() == "local" and not batching_enabled():
        return 1
    return max(1, int(os.environ.get("MEDADAPT_CONCURRENT_ASKS", "16")))


def engine_kind() -> str:
    kind = os.environ.get(ENGINE_ENV, "local").strip().lower() or "local"
    if kind not in ENGINES:
        raise ValueError(f"{ENGINE_ENV} must be one of {ENGINES}, got {kind!r}")
    return kind


def make_engine(cfg: AppConfig) -> TextEngine:
    """The engine ``MEDADAPT_ENGINE`` names, set up from ``cfg`` (and, for ``openai``, its env variables)."""
    if engine_kind() == "openai":
        from medadapt.remote import OpenAIEngine

        return OpenAIEngine.from_config(cfg)
    from medadapt.engine import Engine

    return Engine.from_config(cfg, batching=batching_enabled())
