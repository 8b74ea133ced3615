"""An OpenAI-compatible model server (vLLM, SGLang, ...) as the engine: every row is one streaming chat request.

``MEDADAPT_ENGINE=openai`` with ``MEDADAPT_OPENAI_BASE_URL`` (default ``http://127.0.0.1:8000/v1``) and, when the
server wants one, the API key in ``MEDADAPT_OPENAI_API_KEY``; ``MEDADAPT_OPENAI_MODEL`` names the base model (default:
the server's first model that is not an adapter); ``MEDADAPT_OPENAI_FIRST_TOKEN_TIMEOUT_S`` is how long a row waits for
its first token (default 600: a loaded server queues requests and prefills them, which is normal) and
``MEDADAPT_OPENAI_TIMEOUT_S`` how long for each next one (default 120: a stall). A raw text prompt (the study's
evaluation protocol, :mod:`eval.study`) goes to ``POST /v1/completions`` instead of the chat endpoint. A LoRA adapter is the request's ``model``: adapters the server was started with
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
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from medadapt.serve.api import AdapterLoadError
from medadapt.serve.api import BASE, GenSettings, Prompt, PromptTooLongError, Request, RowState
from medadapt.env import env_flag
from medadapt.prompts import defuse_messages, render_chat, special_token_strings

if TYPE_CHECKING:
    from medadapt.config import AppConfig

log = logging.getLogger(__name__)
DEFAULT_URL = "http://127.0.0.1:8000/v1"
FINISH = {"stop": "eos", "length": "length"}


class RemoteError(RuntimeError):
    """A row's request failed; the message is what its column shows."""


class OpenAIEngine:
    """The :class:`medadapt.serve.api.TextEngine` of an OpenAI-compatible server; a local tokenizer counts tokens."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str = "", model: str = "", tokenizer_path: str = "",
                 max_context: int = 2048, reasoning_template: bool = False, timeout_s: float = 120.0,
                 connect_timeout_s: float = 5.0, first_token_timeout_s: float = 600.0,
                 thinking_budget: bool = False) -> None:
        """``thinking_budget``: send a thinking budget as vLLM's ``thinking_token_budget`` (the server must have been
        started with a reasoning parser or config; vLLM refuses the field otherwise, so it is off by default)."""
        from transformers import AutoTokenizer

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)  # server-state calls; a stall mid-answer
        # a stream's reads may wait this long (its first token); later stalls are cut by RemoteGeneration's watchdog
        self.stream_timeout = httpx.Timeout(max(first_token_timeout_s, timeout_s), connect=connect_timeout_s)
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout,
                                   limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.specials = special_token_strings(self.tokenizer)
        self.reasoning_template, self.max_context, self.model = reasoning_template, max_context, model
        self.thinking_budget = thinking_budget
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
                   cfg.model.reasoning_template, float(env("MEDADAPT_OPENAI_TIMEOUT_S", "120")),
                   first_token_timeout_s=float(env("MEDADAPT_OPENAI_FIRST_TOKEN_TIMEOUT_S", "600")),
                   thinking_budget=env_flag("MEDADAPT_OPENAI_THINKING_BUDGET"))

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

    def prompt_tokens(self, messages: Prompt) -> int:
        if isinstance(messages, str):  # a raw prompt: the server adds the tokenizer's special tokens (BOS)
            return len(self.tokenizer(messages, add_special_tokens=True)["input_ids"])
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
            # raw: /completions; chat messages go out defused, as the in-process engine's template sees them (the
            # server's tokenizer would read "<|im_start|>" in a question as a control token)
            prompt = {"prompt": messages} if isinstance(messages, str) else \
                {"messages": defuse_messages(messages, self.specials)}
            body = {"model": self.model if adapter == BASE else adapter, **prompt, "stream": True,
                    "max_tokens": min(settings.max_new_tokens, room), "temperature": settings.temperature,
                    "top_p": settings.top_p, "seed": settings.seed, "stream_options": {"include_usage": True}}
            if settings.repetition_penalty != 1.0:
                body["repetition_penalty"] = settings.repetition_penalty  # a vLLM/SGLang extension
            if settings.think_budget > 0 and self.thinking_budget:  # vLLM's extension (see __init__)
                body["thinking_token_budget"] = settings.think_budget
            bodies.append(body)
        return RemoteGeneration(self, [a for _, a in requests], bodies)


class RemoteGeneration:
    """The rows of one :meth:`OpenAIEngine.start`, streamed by one thread each; snapshots as chunks arrive.

    A watchdog cuts a row's stream when its next token is later than the engine's stall timeout (its first token may
    take up to the stream timeout); ``close()`` cuts every stream at once, so the server drops those requests.
    """

    def __init__(self, engine: OpenAIEngine, adapters: list[str], bodies: list[dict]) -> None:
        self.engine, self.bodies = engine, bodies
        self.t0 = time.perf_counter()
        self.states = [RowState(a, "", 0, None, 0.0, False, None) for a in adapters]
        self.updates: queue.SimpleQueue = queue.SimpleQueue()
        self.stopped = threading.Event()
        n = len(bodies)
        self.sockets: list[socket.socket | None] = [None] * n  # each open stream's socket (cut to stop a read)
        self.last_token: list[float | None] = [None] * n  # monotonic time of each row's latest token
        self.stalled, self.ended = [False] * n, [False] * n
        self.threads = [threading.Thread(target=self._row, args=(i,), daemon=True, name=f"medadapt-remote-{i}")
                        for i in range(n)]
        for t in self.threads:
            t.start()
        threading.Thread(target=self._watch, daemon=True, name="medadapt-remote-watchdog").start()

    def close(self) -> None:
        """Stop this generation's requests now (their streams are cut; the other generations go on)."""
        self.stopped.set()
        for i in range(len(self.sockets)):
            self._cut(i)

    def _cut(self, i: int) -> None:
        sock = self.sockets[i]
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the row's blocked read, unlike close()
            except OSError:
                pass

    def _watch(self) -> None:
        stall = self.engine.timeout.read
        while not self.stopped.is_set() and not all(self.ended):
            now = time.monotonic()
            for i, last in enumerate(self.last_token):
                if last is not None and not self.ended[i] and now - last > stall:
                    self.stalled[i] = True
                    self._cut(i)
            self.stopped.wait(min(1.0, stall / 4))

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
            path = "/completions" if "prompt" in body else "/chat/completions"
            with self.engine.client.stream("POST", path, json=body, timeout=self.engine.stream_timeout) as r:
                stream = r.extensions.get("network_stream")
                self.sockets[i] = stream.get_extra_info("socket") if stream is not None else None
                if self.stopped.is_set():
                    return
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
                        delta = choice.get("delta") or {}  # a completions chunk has the choice's "text" instead
                        piece = (delta.get("reasoning_content") or delta.get("reasoning") or "",
                                 delta.get("content") or choice.get("text") or "")
                        if any(piece):
                            text.add(*piece)
                            n += 1
                            first = first if first is not None else time.perf_counter() - self.t0
                            self.last_token[i] = time.monotonic()
                            self.updates.put((i, {"text": text.value(), "n_tokens": n, "first_token_s": first}))
                        reason = choice.get("finish_reason") or reason
                if reason is None or self.stalled[i]:  # _error_message names a stall first
                    raise RemoteError("the model server closed the stream before the answer finished")
            self._finish(i, text.value(), n, first, FINISH.get(reason, "eos"), "")
        except Exception as e:
            if self.stopped.is_set():
                return
            self._finish(i, text.value(), n, first, "error", self._error_message(i, e, n))

    def _error_message(self, i: int, e: Exception, n: int) -> str:
        """What row ``i``'s column says when its request failed with ``e`` after ``n`` tokens."""
        eng = self.engine
        if self.stalled[i]:
            return f"the model server was too slow: no token for {eng.timeout.read:.0f} s after {n} tokens"
        if isinstance(e, RemoteError):
            return str(e)
        if isinstance(e, httpx.TimeoutException):
            return (f"the model server was too slow: no first token in {eng.stream_timeout.read:.0f} s "
                    "(it may be overloaded; MEDADAPT_OPENAI_FIRST_TOKEN_TIMEOUT_S sets the wait)")
        if isinstance(e, (httpx.TransportError, httpx.StreamError)):
            where = f"after {n} tokens" if n else "before the first token"
            what = "is unreachable" if isinstance(e, httpx.ConnectError) else f"failed {where}"
            return f"the model server at {eng.base_url} {what} ({type(e).__name__})"
        return f"unexpected answer from the model server: {e!r}"  # e.g. a malformed chunk: only this row fails

    def _finish(self, i: int, text: str, n: int, first: float | None, reason: str, error: str) -> None:
        self.ended[i] = True
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
