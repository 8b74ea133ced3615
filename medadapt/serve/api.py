"""The engine protocol the pipeline depends on, and its records.

Three engines implement :class:`TextEngine`: :class:`medadapt.serve.engine.Engine` (the model in this process, continuous
batching), :class:`medadapt.serve.remote.OpenAIEngine` (an OpenAI-compatible server such as vLLM, one streaming chat
request per row) and :class:`medadapt.serve.cpu_engine.CPUEngine` (the CPU engine's server: OpenVINO, every row its own
adapter in one batch; the app renders the template and sends token ids). Chat messages go in (or, for the study's evaluation protocol, a raw text prompt); the
chat template is applied by the engine's model (``medadapt.prompts.render_chat`` locally, the server remotely) and
``<think>`` is split by :mod:`medadapt.reasoning`, never by an engine. :mod:`medadapt.serve.choice` picks one.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medadapt.config import GenSettings  # one generation's decoding settings, passed whole

BASE = "__base__"  # the adapter name of a row without an adapter

Prompt = list[dict] | str  # chat messages, or a raw text prompt (no chat template, the tokenizer's own special
# tokens such as BOS added, as vLLM's completions endpoint does: the original study's eval prompts; never user input)
Request = tuple[Prompt, str]  # (prompt, adapter name or BASE)


class PromptTooLongError(ValueError):
    """A prompt leaves no room for an answer within the model's context."""


class UnknownAdapterError(KeyError):
    """A request names an adapter that is not loaded."""


class AdapterLoadError(RuntimeError):
    """An adapter folder is missing, corrupt, or does not fit the base model."""


def adapter_folder(name: str, path: str | Path) -> Path:
    """``path`` as a folder an engine may load as adapter ``name``; AdapterLoadError for the base's reserved name or
    a path that is not a folder (the checks every engine's ``load_adapter`` starts with)."""
    if name == BASE:
        raise AdapterLoadError(f"{BASE!r} is reserved for the base model")
    path = Path(path)
    if not path.is_dir():
        raise AdapterLoadError(f"adapter {name!r}: {path} is not a folder")
    return path


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
    budget_closed: bool = False  # the thinking budget closed this row's reasoning


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
