"""An OpenAI-compatible model server (vLLM, SGLang, ...) as the engine: every row is one streaming chat request.

``MEDADAPT_ENGINE=openai`` with ``MEDADAPT_OPENAI_BASE_URL`` (default ``http://127.0.0.1:8000/v1``) and, when the
server wants one, the API key in ``MEDADAPT_OPENAI_API_KEY``; ``MEDADAPT_OPENAI_MODEL`` names the base model (default:
the server's first model that is not an adapter); ``MEDADAPT_OPENAI_TIMEOUT_S`` is how long a row waits for the next
token (default 120). A LoRA adapter is the request's ``model``: adapters the server was started with
(vLLM ``--lora-modules name=path``) are reused by folder, others (e.g. finished in the Training tab) are loaded at run
time with vLLM's ``POST /v1/load_lora_adapter`` (server started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; the
folder must be readable by the server). The server's reasoning field (``reasoning_content``/``reasoning``), where it
runs a reasoning parser, is passed on as ``<think>…</think>`` for :mod:`medadapt.reasoning`.

Faults stay in their row: a server that is down, too slow, failing mid-stream or not knowing an adapter ends that
row with ``finish_reason="error"`` and a message; the other rows go on.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from medadapt.adapters import AdapterLoadError
from medadapt.engine_api import BASE, GenSettings, PromptTooLongError, Request, RowState
from medadapt.prompts import render_chat, special_token_strings

if TYPE_CHECKING:
    from medadapt.config import AppConfig

log = logging.getLogger(__name__)
DEFAULT_URL = "http://127.0.0.1:8000/v1"
FINISH = {"stop": "eos", "length": "length"}


class RemoteError(RuntimeError):
    """A row's request failed; the message is what its column shows."""


class OpenAIEngine:
    """The :class:`medadapt.engine_api.TextEngine` of an OpenAI-compatible server; a local tokenizer counts tokens."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str = "", model: str = "", tokenizer_path: str = "",
                 max_context: int = 2048, reasoning_template: bool = False, timeout_s: float = 120.0,
                 connect_timeout_s: float = 5.0) -> None:
        from transformers import AutoTokenizer

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout,
                                   limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.specials = special_token_strings(self.tokenizer)
        self.reasoning_template, self.max_context, self.model = reasoning_template, max_context, model
        self.adapters: dict[str, Path] = {}  # served adapter name -> folder
        self._loaded: set[str] = set()  # the ones this engine loaded at run time (and may unload)
        try:
            self.refresh()
        except RemoteError as e:  # the app still starts; each column says the server is down
            log.warning("%s", e)

    @classmethod
    def from_config(cls, cfg: AppConfig) -> OpenAIEngine:
        from medadapt.models import base_model_path

        env = os.environ.get
        return cls(env("MEDADAPT_OPENAI_BASE_URL", DEFAULT_URL), env("MEDADAPT_OPENAI_API_KEY", ""),
                   env("MEDADAPT_OPENAI_MODEL", ""), base_model_path(cfg), cfg.model.max_context,
                   cfg.model.reasoning_template, float(env("MEDADAPT_OPENAI_TIMEOUT_S", "120")))

    # ------------------------------------------------------------------ server state

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.client.request(method, path, **kwargs)
        except httpx.TimeoutException as e:
            raise RemoteError(f"the model server at {self.base_url} did not answer in time ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise RemoteError(f"the model server at {self.base_url} is unreachable ({type(e).__name__}: {e})") from e

    def refresh(self) -> None:
        """Read the served models: the base model's name, its context length and the adapters (vLLM lists each
        LoRA module with its ``parent`` model and its folder as ``root``)."""
        r = self._call("GET", "/models")
        if r.status_code != 200:
            raise RemoteError(f"the model server at {self.base_url} answered {r.status_code} to GET /models")
        models = r.json().get("data", [])
        bases = [m for m in models if not m.get("parent")]
        if not self.model and bases:
            self.model = bases[0]["id"]
        for m in bases:
            if m["id"] == self.model and m.get("max_model_len"):
                self.max_context = min(self.max_context, int(m["max_model_len"]))
        for m in models:
            if m.get("parent"):
                self.adapters[m["id"]] = Path(m.get("root") or m["id"])

    def has_adapter(self, name: str) -> bool:
        return name == BASE or name in self.adapters

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Make the server serve the adapter folder ``path`` as ``name`` (vLLM runtime LoRA loading)."""
        path = Path(path)
        try:
            r = self._call("POST", "/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        except RemoteError as e:  # the column says so; the others still answer
            raise AdapterLoadError(f"adapter {name!r}: {e}") from e
        if r.status_code in (404, 405):
            raise AdapterLoadError(
                f"adapter {name!r}: the model server does not load adapters at run time (start vLLM with "
                f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or with --lora-modules {name}={path})")
        if r.status_code != 200 and "already" not in r.text:
            raise AdapterLoadError(f"adapter {name!r}: the model server could not load {path}: {_detail(r)}")
        self.adapters[name] = path
        self._loaded.add(name)

    def unload_adapter(self, name: str) -> None:
        """Unload an adapter this engine loaded (the server's own ``--lora-modules`` stay)."""
        if name not in self._loaded:
            return
        try:
            self._call("POST", "/unload_lora_adapter", json={"lora_name": name})
        except RemoteError as e:
            log.warning("unloading %s: %s", name, e)
        self._loaded.discard(name)
        self.adapters.pop(name, None)

    # ------------------------------------------------------------------ tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict]) -> str:
        return render_chat(self.tokenizer, messages, self.reasoning_template, self.specials)

    def prompt_tokens(self, messages: list[dict]) -> int:
        return self.count_tokens(self.render(messages))

    def prompt_opens_think(self) -> bool:
        return self.render([{"role": "user", "content": "?"}]).rstrip().endswith("<think>")

    # ------------------------------------------------------------------ generation

    def start(self, requests: list[Request], settings: GenSettings) -> RemoteGeneration:
        if not self.model:  # the server was down when this engine was made
            try:
                self.refresh()
            except RemoteError:
                pass  # every row will say the server is unreachable
        bodies = []
        for messages, adapter in requests:
            n = self.prompt_tokens(messages)
            room = self.max_context - n
            if room < 1:
                raise PromptTooLongError(f"the prompt has {n} tokens; the model's context is {self.max_context} tokens")
            body = {"model": self.model if adapter == BASE else adapter, "messages": messages, "stream": True,
                    "max_tokens": min(settings.max_new_tokens, room), "temperature": settings.temperature,
                    "top_p": settings.top_p, "seed": settings.seed, "stream_options": {"include_usage": True}}
            if settings.repetition_penalty != 1.0:
                body["repetition_penalty"] = settings.repetition_penalty  # a vLLM/SGLang extension
            bodies.append(body)
        return RemoteGeneration(self, [a for _, a in requests], bodies)


class RemoteGeneration:
    """The rows of one :meth:`OpenAIEngine.start`, streamed by one thread each; snapshots as chunks arrive."""

    def __init__(self, engine: OpenAIEngine, adapters: list[str], bodies: list[dict]) -> None:
        self.engine, self.bodies = engine, bodies
        self.t0 = time.perf_counter()
        self.states = [RowState(a, "", 0, None, 0.0, False, None) for a in adapters]
        self.updates: queue.SimpleQueue = queue.SimpleQueue()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._row, args=(i,), daemon=True, name=f"medadapt-remote-{i}")
                        for i in range(len(bodies))]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        """Stop this generation's requests (each closes its stream at its next chunk)."""
        self.stopped.set()

    def __iter__(self) -> Iterator[list[RowState]]:
        left = len(self.states)
        while left:
            i, change = self.updates.get()
            while True:  # apply everything that has arrived, then one snapshot
                st = self.states[i]
                for k, v in change.items():
                    setattr(st, k, v)
                left -= change.get("finished", False)
                try:
                    i, change = self.updates.get_nowait()
                except queue.Empty:
                    break
            now = time.perf_counter() - self.t0
            for st in self.states:
                if not st.finished:
                    st.elapsed_s = now
            yield [RowState(**vars(st)) for st in self.states]

    def _row(self, i: int) -> None:
        body, st = self.bodies[i], self.states[i]
        text = _Text()
        n, first = 0, None
        try:
            with self.engine.client.stream("POST", "/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise RemoteError(_status_message(r, body["model"], st.adapter))
                reason = None
                for line in r.iter_lines():
                    if self.stopped.is_set():
                        return
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise RemoteError(f"the model server failed mid-answer: {_error_text(chunk['error'])}")
                    if chunk.get("usage") and chunk["usage"].get("completion_tokens") is not None:
                        n = int(chunk["usage"]["completion_tokens"])
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        piece = (delta.get("reasoning_content") or delta.get("reasoning") or "", delta.get("content") or "")
                        if any(piece):
                            text.add(*piece)
                            n += 1
                            first = first if first is not None else time.perf_counter() - self.t0
                            self.updates.put((i, {"text": text.value(), "n_tokens": n, "first_token_s": first}))
                        reason = choice.get("finish_reason") or reason
                if reason is None:
                    raise RemoteError("the model server closed the stream before the answer finished")
            self._finish(i, text.value(), n, first, FINISH.get(reason, "eos"), "")
        except RemoteError as e:
            self._finish(i, text.value(), n, first, "error", str(e))
        except httpx.TimeoutException:
            self._finish(i, text.value(), n, first, "error",
                         f"the model server was too slow: no token for {self.engine.timeout.read:.0f} s "
                         f"after {n} tokens")
        except (httpx.TransportError, httpx.StreamError) as e:
            where = f"after {n} tokens" if n else "before the first token"
            what = "is unreachable" if isinstance(e, httpx.ConnectError) else f"failed {where}"
            self._finish(i, text.value(), n, first, "error",
                         f"the model server at {self.engine.base_url} {what} ({type(e).__name__})")
        except Exception as e:  # e.g. a malformed chunk: this row fails, the app and the other rows go on
            self._finish(i, text.value(), n, first, "error", f"unexpected answer from the model server: {e!r}")

    def _finish(self, i: int, text: str, n: int, first: float | None, reason: str, error: str) -> None:
        self.updates.put((i, {"text": text, "n_tokens": n, "first_token_s": first, "finished": True,
                              "finish_reason": reason, "error": error,
                              "elapsed_s": time.perf_counter() - self.t0}))


class _Text:
    """A row's text so far: the server's reasoning field (if any) as ``<think>…</think>``, then the content."""

    def __init__(self) -> None:
        self.reasoning, self.content = "", ""

    def add(self, reasoning: str, content: str) -> None:
        self.reasoning += reasoning
        self.content += content

    def value(self) -> str:
        if not self.reasoning:
            return self.content
        return f"<think>{self.reasoning}{'</think>' if self.content else ''}{self.content}"


def _error_text(err: Any) -> str:
    return err.get("message", str(err)) if isinstance(err, dict) else str(err)


def _detail(r: httpx.Response) -> str:
    try:
        return _error_text(r.json().get("error", r.json()))
    except ValueError:
        return r.text[:300] or f"HTTP {r.status_code}"


def _status_message(r: httpx.Response, model: str, adapter: str) -> str:
    detail = _detail(r)
    if r.status_code == 404 or "does not exist" in detail:
        what = "the base model" if adapter == BASE else "adapter"
        return f"the model server does not know {what} {model!r} ({detail})"
    return f"the model server answered {r.status_code}: {detail}"
