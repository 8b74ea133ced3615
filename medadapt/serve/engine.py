"""One base model plus named LoRA adapters; mixed-adapter streaming generation with continuous batching.

Every row (e.g. base, RAG = base with another prompt, SFT, MSFT) decodes with its own adapter (``BASE`` for none).
Every caller's rows join one running batch (:mod:`medadapt.serve.batching`) and leave it as they finish, so concurrent users
share decode steps. Adapters live in :mod:`medadapt.serve.multilora` layers (two matmuls per layer for any mix of adapters).

Implements :class:`medadapt.serve.api.TextEngine`; the chat template is :func:`medadapt.prompts.render_chat`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from medadapt.adapters import resolve_adapter
from medadapt.serve.api import (BASE, AdapterLoadError, GenSettings, Prompt, PromptTooLongError, Request, RowState,
                                 UnknownAdapterError, adapter_folder)
from medadapt.prompts import render_chat, special_token_strings
from medadapt.serve.think_budget import BudgetRows, ThinkBudget

if TYPE_CHECKING:
    from medadapt.config import AppConfig

__all__ = ["BASE", "Engine", "GenSettings", "PromptTooLongError", "RowState", "UnknownAdapterError"]

log = logging.getLogger(__name__)


class Engine:
    """Load the base model once; adapters are added under names; all rows generate in one batch."""

    def __init__(self, model_path: str, dtype: str = "float32", reasoning_template: bool = False,
                 device: str | None = None, trust_remote_code: bool = False, max_context: int = 2048,
                 num_threads: int | None = None, fast_attention: bool = True, max_batch_rows: int = 64) -> None:
        import torch

        from medadapt.models import load_model, load_tokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.model_path, self.reasoning_template = model_path, reasoning_template
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.model = load_model(model_path, dtype, trust_remote_code, device)
        if fast_attention:
            from medadapt.serve.decoding import install_decode_attention

            try:
                install_decode_attention(self.model)
            except (ValueError, AttributeError, NotImplementedError) as e:  # a model without the attention interface
                log.warning("keeping the model's own attention: %s", e)
        self.max_context = max_context
        self.adapters: dict[str, Path] = {}
        self.adapter_errors: dict[str, str] = {}  # from_config: adapters that exist but failed to load
        self.eos_ids = self._eos_ids()
        self._model_lock = threading.Lock()  # held by each decode step and by adapter changes
        from medadapt.serve.batching import Batcher
        from medadapt.serve.multilora import MultiLora

        self._multilora = MultiLora(self.model)
        self._multilora.wrap_all_linear()
        self._batcher = Batcher(self.model, lambda: self.eos_ids, self._route_names, self._model_lock, max_batch_rows)

    @classmethod
    def from_config(cls, cfg: AppConfig, **kwargs) -> Engine:
        """The profile's base model plus the configured ``sft``/``msft`` adapters that exist."""
        from medadapt.models import base_model_path

        m = cfg.model
        kwargs.setdefault("num_threads", getattr(m, "num_threads", 0) or None)
        engine = cls(base_model_path(cfg), m.dtype, m.reasoning_template, trust_remote_code=m.trust_remote_code,
                     max_context=m.max_context, **kwargs)
        for kind in ("sft", "msft"):
            path = resolve_adapter(cfg, kind)
            if path is None:
                continue
            try:
                engine.load_adapter(kind, path)
            except AdapterLoadError as e:
                log.warning("%s", e)
                engine.adapter_errors[kind] = str(e)
        return engine

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(int(v) for v in value)
        return ids

    # ------------------------------------------------------------------ adapters

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load the PEFT adapter at ``path`` under ``name`` (replacing one of that name)."""
        path = adapter_folder(name, path)
        from medadapt.serve.multilora import read_adapter

        weights = read_adapter(name, path)  # read from disk before taking the model from the decode loop
        with self._model_lock:
            self._multilora.add(weights)
            self.adapters[name] = path
            self.adapter_errors.pop(name, None)

    def unload_adapter(self, name: str) -> None:
        """Forget adapter ``name`` (no-op when not loaded); every loaded adapter costs a little per decode step."""
        with self._model_lock:
            if name not in self.adapters:
                return
            self._multilora.remove(name)
            del self.adapters[name]

    def has_adapter(self, name: str) -> bool:
        return name == BASE or name in self.adapters

    # ------------------------------------------------------------------ prompts

    def render(self, messages: list[dict]) -> str:
        """The chat template applied with the generation prompt (R1 models: ending inside ``<think>``)."""
        return render_chat(self.tokenizer, messages, self.reasoning_template, self.special_tokens)

    @property
    def special_tokens(self) -> list[str]:
        if getattr(self, "_special_tokens", None) is None:
            self._special_tokens = special_token_strings(self.tokenizer)
        return self._special_tokens

    def prompt_opens_think(self) -> bool:
        """True when generation starts inside the reasoning (the prompt already opened ``<think>``)."""
        return self.render([{"role": "user", "content": "?"}]).rstrip().endswith("<think>")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, messages: Prompt) -> int:
        return len(self._prompt_ids(messages))

    def _prompt_ids(self, messages: Prompt) -> list[int]:
        if isinstance(messages, str):  # a raw prompt: no template, the tokenizer's special tokens (BOS) as vLLM adds
            return self.tokenizer(messages, add_special_tokens=True)["input_ids"]
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ generation

    def start(self, requests: list[Request], settings: GenSettings) -> LocalGeneration:
        """Validate and queue all ``(messages, adapter)`` rows; iterate the result for every row's state per step."""
        names = [adapter for _, adapter in requests]
        for name in names:
            if not self.has_adapter(name):
                raise UnknownAdapterError(f"adapter {name!r} is not loaded (loaded: {sorted(self.adapters)})")
        prompts = [self._prompt_ids(messages) for messages, _ in requests]
        max_new = []
        for ids in prompts:
            room = self.max_context - len(ids)
            if room < 1:
                raise PromptTooLongError(
                    f"the prompt has {len(ids)} tokens; the model's context is {self.max_context} tokens"
                )
            max_new.append(min(settings.max_new_tokens, room))
        rule = (ThinkBudget.for_tokenizer(settings.think_budget, self.tokenizer, self.prompt_opens_think())
                if settings.think_budget > 0 else None)
        return LocalGeneration(self, prompts, max_new, names, settings, rule.rows(len(prompts)) if rule else None)

    def stream(self, requests: list[Request], settings: GenSettings) -> Iterator[list[RowState]]:
        """Generate all ``(messages, adapter)`` rows; yield every row's state after each step."""
        generation = self.start(requests, settings)
        try:
            yield from generation
        finally:
            generation.close()

    def _route_names(self, names: list[str]) -> dict:
        """Forward kwargs that give batch row ``i`` adapter ``names[i]`` (the router is set; no kwargs)."""
        self._multilora.router.set_rows(names)
        return {}

    def generate_batch(self, messages_list: list[list[dict]], adapters: list[str], settings: GenSettings) -> list[str]:
        """Final texts of one generation (see :meth:`stream`)."""
        if len(messages_list) != len(adapters):
            raise ValueError("messages_list and adapters must have the same length")
        final: list[RowState] = []
        for final in self.stream(list(zip(messages_list, adapters)), settings):
            pass
        return [st.text for st in final]


class LocalGeneration:
    """One :meth:`Engine.start` call: its rows in the shared batch."""

    def __init__(self, engine: Engine, prompts: list[list[int]], max_new: list[int], names: list[str],
                 settings: GenSettings, budget: BudgetRows | None = None) -> None:
        from medadapt.serve.batching import Job

        self.engine, self.names, self.budget = engine, names, budget
        self.job = Job(prompts, max_new, names, settings, budget=budget)
        self.start = time.perf_counter()
        self.closed = False
        engine._batcher.submit(self.job)

    def close(self) -> None:
        """Stop this generation's rows (the batch goes on for everyone else)."""
        self.closed = True
        self.engine._batcher.cancel(self.job)

    def _events(self) -> Iterator[list[tuple[int, int, str | None]]]:
        job = self.job
        left = sum(1 for m in job.max_new if m > 0)
        while left:
            events = [job.events.get()]
            while not job.events.empty():  # a consumer that fell behind catches up in one snapshot
                events.append(job.events.get())
            merged = []
            for event in events:
                if isinstance(event, BaseException):
                    raise event
                merged += event
            left -= sum(1 for _, _, reason in merged if reason is not None)
            yield merged

    def __iter__(self) -> Iterator[list[RowState]]:
        engine = self.engine
        tokens: list[list[int]] = [[] for _ in self.names]
        states = [RowState(n, "", 0, None, 0.0, False, None) for n in self.names]
        for event in self._events():
            if self.closed:
                return
            now = time.perf_counter() - self.start
            changed = set()
            for row, tok, reason in event:
                st = states[row]
                if tok not in engine.eos_ids:
                    tokens[row].append(tok)
                    changed.add(row)
                st.n_tokens = len(tokens[row])
                st.first_token_s = now if st.first_token_s is None else st.first_token_s
                st.finished, st.finish_reason = reason is not None, reason
                st.elapsed_s = now
            for row in changed:
                states[row].text = engine.tokenizer.decode(tokens[row], skip_special_tokens=True)
                states[row].budget_closed = self.budget is not None and self.budget.forced[row]
            for st in states:
                if not st.finished:
                    st.elapsed_s = now
            yield [RowState(**vars(st)) for st in states]
