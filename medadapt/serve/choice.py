"""Which engine serves generations: ``MEDADAPT_ENGINE`` (``local``, ``openai`` or ``openvino``; default: the profile's
``engine.kind``, ``local`` unless its ``cpu:`` section picks the CPU engine), and how many questions may generate at
once (``MEDADAPT_CONCURRENT_ASKS``; ``MEDADAPT_BATCHING=off``: one).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medadapt.config import AppConfig
    from medadapt.serve.api import TextEngine

ENGINE_ENV = "MEDADAPT_ENGINE"
ENGINES = ("local", "openai", "openvino")


def batching_enabled() -> bool:
    """Several questions share the in-process engine's batch, unless ``MEDADAPT_BATCHING`` is 0/false/no/off (then
    one question generates at a time: the serial baseline of ``bench/serve_load.py``)."""
    return os.environ.get("MEDADAPT_BATCHING", "on").strip().lower() not in ("0", "false", "no", "off")


def concurrent_generations() -> int:
    """How many questions may generate at once: 1 with ``MEDADAPT_BATCHING=off``, else ``MEDADAPT_CONCURRENT_ASKS`` (default
    16; the in-process batch then holds up to 64 rows)."""
    if engine_kind() == "local" and not batching_enabled():
        return 1
    return max(1, int(os.environ.get("MEDADAPT_CONCURRENT_ASKS", "16")))


def engine_kind(cfg: AppConfig | None = None) -> str:
    kind = os.environ.get(ENGINE_ENV, "").strip().lower() or (cfg.engine.kind if cfg is not None else "local")
    if kind not in ENGINES:
        raise ValueError(f"{ENGINE_ENV} must be one of {ENGINES}, got {kind!r}")
    return kind


def make_engine(cfg: AppConfig) -> TextEngine:
    """The engine ``MEDADAPT_ENGINE`` (or the profile) names, set up from ``cfg`` (and, for ``openai``, its env
    variables)."""
    kind = engine_kind(cfg)
    if kind == "openai":
        from medadapt.serve.remote import OpenAIEngine

        return OpenAIEngine.from_config(cfg)
    if kind == "openvino":
        from medadapt.serve.cpu_engine import CPUEngine

        return CPUEngine.from_config(cfg)
    from medadapt.serve.engine import Engine

    return Engine.from_config(cfg)
