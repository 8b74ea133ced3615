"""One base model plus named LoRA adapters; batched mixed-adapter streaming generation. No prompts, no UI.

All rows of a :meth:`Engine.stream` call (e.g. base, RAG = base with another prompt, SFT, MSFT) decode together in
one batch, each row with its own adapter (``BASE`` for none). Two backends give the same greedy tokens:

- ``gathered`` (default): adapters live in :mod:`medadapt.multilora` layers (two matmuls per layer for any mix).
- ``peft``: the reference, a ``PeftModel`` with named adapters and ``adapter_names=[...]`` per forward.

Both run the token loop of :mod:`medadapt.decoding`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medadapt.adapters import AdapterLoadError, resolve_adapter
from medadapt.prompts import defuse_messages

if TYPE_CHECKING:
    from medadapt.config import AppConfig

__all__ = ["BASE", "Engine", "GenSettings", "PromptTooLongError", "RowState", "UnknownAdapterError"]

log = logging.getLogger(__name__)
BASE = "__base__"
BACKENDS = ("gathered", "peft")


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
    """One row's progress, snapshotted after every decode step."""

    adapter: str
    text: str  # the generated part decoded so far (special tokens skipped)
    n_tokens: int  # generated tokens, the final EOS not counted
    first_token_s: float | None  # seconds from the call to this row's first token
    elapsed_s: float
    finished: bool
    finish_reason: str | None  # "eos" | "length"


class Engine:
    """Load the base model once; adapters are added under names; all rows generate in one batch."""

    def __init__(self, model_path: str, dtype: str = "float32", reasoning_template: bool = False,
                 device: str | None = None, trust_remote_code: bool = False, max_context: int = 2048,
                 backend: str = "gathered", num_threads: int | None = None, fast_attention: bool = True) -> None:
        import torch

        from medadapt.models import load_model, load_tokenizer

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model_path, self.backend, self.reasoning_template = model_path, backend, reasoning_template
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.model = load_model(model_path, dtype, trust_remote_code, device)
        if fast_attention:
            from medadapt.decoding import install_decode_attention

            try:
                install_decode_attention(self.model)
            except (ValueError, AttributeError, NotImplementedError) as e:  # a model without the attention interface
                log.warning("keeping the model's own attention: %s", e)
        self.max_context = max_context
        self.adapters: dict[str, Path] = {}
        self.adapter_errors: dict[str, str] = {}  # from_config: adapters that exist but failed to load
        self.eos_ids = self._eos_ids()
        self._lock = threading.Lock()
        self._multilora = None
        if backend == "gathered":
            from medadapt.multilora import MultiLora

            self._multilora = MultiLora(self.model)
            self._multilora.wrap_all_linear()

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
        if name == BASE:
            raise AdapterLoadError(f"{BASE!r} is reserved for the base model")
        path = Path(path)
        if not path.is_dir():
            raise AdapterLoadError(f"adapter {name!r}: {path} is not a folder")
        with self._lock:
            if self._multilora is not None:
                from medadapt.multilora import read_adapter

                self._multilora.add(read_adapter(name, path))
            else:
                self._load_peft(name, path)
            self.adapters[name] = path
            self.adapter_errors.pop(name, None)

    def _load_peft(self, name: str, path: Path) -> None:
        from medadapt.multilora import read_adapter

        read_adapter(name, path)  # same validation and messages as the gathered backend
        try:
            from peft import PeftModel

            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
                return
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            self.model.load_adapter(str(path), adapter_name=name)
            self.model.eval()
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise AdapterLoadError(f"adapter {name!r}: PEFT could not load {path}: {e}") from e

    def unload_adapter(self, name: str) -> None:
        """Forget adapter ``name`` (no-op when not loaded); every loaded adapter costs a little per decode step."""
        with self._lock:
            if name not in self.adapters:
                return
            if self._multilora is not None:
                self._multilora.remove(name)
            else:
                self.model.delete_adapter(name)
            del self.adapters[name]

    def has_adapter(self, name: str) -> bool:
        return name == BASE or name in self.adapters

    # ------------------------------------------------------------------ prompts

    def render(self, messages: list[dict]) -> str:
        """The chat template applied with the generation prompt (R1 models: ending inside ``<think>``)."""
        messages = defuse_messages(messages, self.special_tokens)  # content never becomes a special token
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.reasoning_template and not text.rstrip().endswith("<think>"):
            text += "<think>\n"
        return text

    @property
    def special_tokens(self) -> list[str]:
        """Every special-token string of the tokenizer (its named ones and the added tokens marked special)."""
        if getattr(self, "_special_tokens", None) is None:
            added = [t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special]
            self._special_tokens = sorted(set(self.tokenizer.all_special_tokens) | set(added))
        return self._special_tokens

    def prompt_opens_think(self) -> bool:
        """True when generation starts inside the reasoning (the prompt already opened ``<think>``)."""
        return self.render([{"role": "user", "content": "?"}]).rstrip().endswith("<think>")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ generation

    def stream(self, requests: list[tuple[list[dict], str]], settings: GenSettings) -> Iterator[list[RowState]]:
        """Generate all ``(messages, adapter)`` rows in one batch; yield every row's state after each step."""
        from medadapt.decoding import SamplingSettings, decode

        start = time.perf_counter()
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
        tokens: list[list[int]] = [[] for _ in requests]
        states = [RowState(n, "", 0, None, 0.0, False, None) for n in names]
        sampling = SamplingSettings(settings.temperature, settings.top_p, settings.seed, settings.repetition_penalty)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        with self._lock:
            for event in decode(self.model, prompts, max_new, sampling, self.eos_ids, pad, self._route(names)):
                now = time.perf_counter() - start
                for row, tok, reason in event:
                    st = states[row]
                    if tok not in self.eos_ids:
                        tokens[row].append(tok)
                        st.text = self.tokenizer.decode(tokens[row], skip_special_tokens=True)
                    st.n_tokens = len(tokens[row])
                    st.first_token_s = now if st.first_token_s is None else st.first_token_s
                    st.finished, st.finish_reason = reason is not None, reason
                    st.elapsed_s = now
                for st in states:
                    if not st.finished:
                        st.elapsed_s = now
                yield [RowState(**vars(st)) for st in states]

    def _route(self, names: list[str]):
        if self._multilora is not None:
            router = self._multilora.router

            def route(rows: list[int]) -> dict:
                router.set_rows([names[r] for r in rows])
                return {}
        elif self.adapters:
            def route(rows: list[int]) -> dict:
                return {"adapter_names": [names[r] for r in rows]}
        else:
            def route(rows: list[int]) -> dict:
                return {}
        return route

    def generate_batch(self, messages_list: list[list[dict]], adapters: list[str], settings: GenSettings) -> list[str]:
        """Final texts of one batched generation (see :meth:`stream`)."""
        if len(messages_list) != len(adapters):
            raise ValueError("messages_list and adapters must have the same length")
        final: list[RowState] = []
        for final in self.stream(list(zip(messages_list, adapters)), settings):
            pass
        return [st.text for st in final]
