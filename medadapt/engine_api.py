"""The engine protocol the pipeline depends on, its records, and the one place that picks an engine.

Two engines implement :class:`TextEngine`: :class:`medadapt.engine.Engine` (the model in this process, continuous
batching) and :class:`medadapt.remote.OpenAIEngine` (an OpenAI-compatible server such as vLLM, one streaming chat
request per row). ``MEDADAPT_ENGINE`` picks one (``local``, the default, or ``openai``). Chat messages go in; the
chat template is applied by the engine's model (``medadapt.prompts.render_chat`` locally, the server remotely) and
``<think>`` is split by :mod:`medadapt.reasoning`, never by an engine.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from medadapt.config import AppConfig

BASE = "__base__"  # the adapter name of a row without an adapter
ENGINE_ENV = "MEDADAPT_ENGINE"
ENGINES = ("local", "openai")

Request = tuple[list[dict], str]  # (chat messages, adapter name or BASE)


class PromptTooLongError(ValueError):
    """A prompt leaves no room for an answer within the model's context."""


class UnknownAdapterError(KeyError):
    """A request names an adapter that is not loaded."""


@dataclass
class GenSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0  # 1: off


@dataclass
class RowState:
    """One row's progress, snapshotted after every step."""

    adapter: str
    text: str  # the generated part so far (special tokens skipped; a server's reasoning field as <think>…</think>)
    n_tokens: int  # generated tokens, the final EOS not counted
    first_token_s: float | None  # seconds from the call to this row's first token
    elapsed_s: float
    finished: bool
    finish_reason: str | None  # "eos" | "length" | "error"
    error: str = ""  # why the row failed (finish_reason "error"): server down, too slow, broken stream, ...


class Generation(Protocol):
    """A running generation: iterate for snapshots of every row; ``close()`` stops its rows (only its own)."""

    def __iter__(self) -> Iterator[list[RowState]]: ...

    def close(self) -> None: ...


class TextEngine(Protocol):
    """What the pipeline needs from an engine."""

    max_context: int  # tokens a prompt plus its answer may use
    adapters: Mapping[str, Path]  # loaded adapter name -> folder

    def count_tokens(self, text: str) -> int: ...

    def prompt_tokens(self, messages: list[dict]) -> int:
        """Tokens of ``messages`` rendered with the chat template and generation prompt."""
        ...

    def prompt_opens_think(self) -> bool: ...

    def has_adapter(self, name: str) -> bool: ...

    def load_adapter(self, name: str, path: str | Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def start(self, requests: list[Request], settings: GenSettings) -> Generation:
        """Begin generating every row now (validated and queued before returning)."""
        ...


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

    return Engine.from_config(cfg)
