"""The CPU engine as the app's engine: a :class:`medadapt.serve.api.TextEngine` client of :mod:`medadapt.serve.openvino.server`.

``MEDADAPT_ENGINE=openvino`` (or ``engine.kind: openvino``; the reference profile on CPU-only hardware) serves the
four Compare columns through an OpenVINO graph with per-row LoRA (:mod:`medadapt.serve.openvino.graph`) in its own venv
(``scripts/cpu_engine.sh setup``; ``MEDADAPT_CPU_ENGINE_VENV``, default ``<cache_dir>/openvino-venv``). The app
starts and stops the server itself: on first use the base model is converted once into
``<cache_dir>/cpu-engine/<model>-<precision>/`` (:func:`ensure_graph`: written to ``<name>.partial`` and renamed; one
converting process per machine, by a file lock; an interrupted conversion resumes at its last stage; the stage shows
in every Compare column meanwhile), the server is started on a free loopback port (it exits with the app) and the
profile's adapters are loaded. Adapters trained later and published models' deltas are loaded at run time by folder
(``POST /adapters``), never by a restart. ``MEDADAPT_CPU_ENGINE_URL`` uses a server started by hand instead
(``scripts/cpu_engine.sh serve``).

Prompts are rendered and defused here (:func:`medadapt.prompts.render_chat`, as the in-process engine does) and sent
as token ids; tokens stream back per step and are decoded here. One streaming request per generation: ``close()``
cuts it and the server drops only those rows; a row the server cannot run (an unknown adapter) fails alone; a server
that dies or stalls ends the rows it was serving with a message, and the next question starts it again.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from medadapt.serve.api import (BASE, AdapterLoadError, GenSettings, Prompt, PromptTooLongError, Request, RowState,
                                 UnknownAdapterError, adapter_folder)
from medadapt.prompts import render_chat, special_token_strings

if TYPE_CHECKING:
    from medadapt.config import AppConfig

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "cpu_engine.sh"


class EngineError(RuntimeError):
    """The CPU engine cannot be prepared or started; the message says why and what to do."""


def venv_python(cache_dir: Path) -> Path:
    venv = Path(os.environ.get("MEDADAPT_CPU_ENGINE_VENV") or cache_dir / "openvino-venv").expanduser()
    return venv / "bin" / "python"


def engine_installed(python: Path) -> str:
    """'' when the engine's venv imports openvino, nncf and torch; else why not (and how to fix it)."""
    if not python.exists():
        return f"the CPU engine's venv is not installed ({python.parent.parent}): run `bash scripts/cpu_engine.sh setup`"
    r = subprocess.run([str(python), "-c", "import openvino, nncf, torch, transformers"], capture_output=True,
                       text=True)
    return "" if r.returncode == 0 else f"the CPU engine's venv is broken ({r.stderr.strip()[-300:]}): run " \
        "`bash scripts/cpu_engine.sh setup` again"


def graph_dir(cache_dir: Path, model_dir: str | Path, precision: str) -> Path:
    """Where the converted graph of ``model_dir`` at ``precision`` lives."""
    import hashlib

    model_dir = Path(model_dir).resolve()
    tag = hashlib.sha1(str(model_dir).encode()).hexdigest()[:8]
    return cache_dir / "cpu-engine" / f"{model_dir.name}-{tag}-{precision}"


def graph_ready(path: Path) -> bool:
    return (path / "graph.json").is_file() and (path / "model.xml").is_file() and (path / "model.bin").is_file()


def ensure_graph(python: Path, model_dir: str | Path, out: Path, precision: str,
                 progress: Callable[[str], None] = lambda s: None) -> Path:
    """The converted graph at ``out``, converting it now if it is not there (in the engine's venv; one process at a
    time per folder: a second one waits for the first and reuses its result). Stages go to ``progress``."""
    if graph_ready(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("waiting for another process that converts the model")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if graph_ready(out):
            return out
        work = out.parent / f"{out.name}.partial"  # kept when interrupted: the next attempt resumes its stage
        cmd = [str(python), "-m", "medadapt.serve.openvino.convert", "--model", str(model_dir), "--out", str(work),
               "--precision", precision]
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_engine_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip()
            tail = (tail + [line])[-30:]
            if line.startswith("STAGE "):
                progress(line[6:])
        if proc.wait() != 0 or not graph_ready(work):
            raise EngineError("converting the model for the CPU engine failed:\n" + "\n".join(tail[-12:]))
        os.replace(work, out)
    return out


def _engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineProcess:
    """The server process this app started: start, wait until it answers, stop (its whole process group)."""

    def __init__(self, python: Path, graph: Path, model_dir: str | Path, threads: int, cache_dir: Path,
                 log_file: Path, max_rows: int = 64) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(python), "-m", "medadapt.serve.openvino.server", "--graph", str(graph), "--model", str(model_dir),
               "--port", str(self.port), "--threads", str(threads), "--cache-dir", str(cache_dir / "ov-cache"),
               "--adapter-cache", str(cache_dir / "cpu-engine" / "adapters"), "--max-rows", str(max_rows),
               "--parent-pid", str(os.getpid())]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_engine_env(), stdout=open(log_file, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 900.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise EngineError(f"the CPU engine exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
            try:
                r = httpx.get(self.url + "/health", timeout=2.0)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise EngineError(f"the CPU engine did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class CPUEngine:
    """The TextEngine of the CPU engine server; a local tokenizer renders prompts and decodes tokens."""

    def __init__(self, model_dir: str | Path, *, url: str = "", python: Path | None = None, graph: Path | None = None,
                 precision: str = "int8", threads: int = 2, cache_dir: Path | None = None, max_context: int = 2048,
                 reasoning_template: bool = False, adapters: dict[str, Path] | None = None,
                 stall_timeout_s: float = 120.0, start_timeout_s: float = 900.0, install: bool = False) -> None:
        """``install``: create the engine's venv (``scripts/cpu_engine.sh setup``) when it is missing, as the app
        does (e.g. a Space, which installs only requirements.txt)."""
        from medadapt.models import load_tokenizer

        self.model_dir, self.precision, self.threads = str(model_dir), precision, threads
        self.python, self.graph = python, graph
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "medadapt")
        self.tokenizer = load_tokenizer(self.model_dir)
        self.specials = special_token_strings(self.tokenizer)
        self.max_context, self.reasoning_template = max_context, reasoning_template
        self.stall_timeout_s, self.start_timeout_s, self.install = stall_timeout_s, start_timeout_s, install
        self.ignore_eos = False  # benches: every row decodes its max new tokens
        self.eos_ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        self.adapters: dict[str, Path] = {}
        self.adapter_errors: dict[str, str] = {}
        self.adapter_notes: dict[str, list[str]] = {}
        self._wanted = dict(adapters or {})  # loaded once the server is up
        self.url = url.rstrip("/")
        self.process: EngineProcess | None = None
        self.health: dict[str, Any] = {}
        self._status = "starting"  # starting | ready | failed
        self._doing = "starting the CPU engine"
        self._error = ""
        self._lock = threading.Lock()
        self.client = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0))
        atexit.register(self.close)  # the server also exits by itself when this process is gone (--parent-pid)
        self._bring_up_async()

    @classmethod
    def from_config(cls, cfg: AppConfig, **kwargs: Any) -> CPUEngine:
        """The profile's base model (converted once) plus its configured ``sft``/``msft`` adapters that exist."""
        from medadapt.adapters import model_folder_of, resolve_adapter
        from medadapt.models import base_model_path

        cache = cfg.paths.resolve("cache_dir")
        model_dir = model_folder_of(base_model_path(cfg))
        adapters = {}
        for kind in ("sft", "msft"):
            path = resolve_adapter(cfg, kind)
            if path is not None:
                adapters[kind] = path
        e = cfg.engine
        kwargs.setdefault("url", os.environ.get("MEDADAPT_CPU_ENGINE_URL", ""))
        kwargs.setdefault("install", True)
        return cls(model_dir, python=venv_python(cache), precision=e.precision, threads=e.threads, cache_dir=cache,
                   max_context=cfg.model.max_context, reasoning_template=cfg.model.reasoning_template,
                   adapters=adapters, **kwargs)

    # ------------------------------------------------------------------ bring-up (background)

    def _bring_up_async(self) -> None:
        threading.Thread(target=self._bring_up, name="medadapt-cpu-engine-start", daemon=True).start()

    def _set_doing(self, what: str) -> None:
        self._doing = what
        log.info("CPU engine: %s", what)

    def _bring_up(self) -> None:
        try:
            if not self.url:
                python = self.python or venv_python(self.cache_dir)
                why = engine_installed(python)
                if why and self.install:
                    self._set_doing("installing the CPU engine (its own venv, once: a few minutes)")
                    r = subprocess.run(["bash", str(SCRIPT), "setup"], capture_output=True, text=True,
                                       env={**os.environ, "MEDADAPT_CPU_ENGINE_VENV": str(python.parent.parent)})
                    why = engine_installed(python) if r.returncode == 0 else \
                        f"installing it failed ({SCRIPT.name} setup): {r.stderr.strip()[-300:]}"
                if why:
                    raise EngineError(why)
                graph = self.graph or graph_dir(self.cache_dir, self.model_dir, self.precision)
                ensure_graph(python, self.model_dir, graph, self.precision,
                             lambda stage: self._set_doing(f"converting the model for the CPU engine "
                                                           f"({self.precision}): {stage}"))
                self._set_doing("starting the CPU engine (compiling the model)")
                self.process = EngineProcess(python, graph, self.model_dir, self.threads, self.cache_dir,
                                             self.cache_dir / "cpu-engine" / "server.log")
                self.url = self.process.url
                self.health = self.process.wait_ready(self.start_timeout_s)
            else:
                self.health = self._call("GET", "/health").json()
            self._sync_loaded()
            for name, path in self._wanted.items():
                try:
                    self.load_adapter(name, path)
                except AdapterLoadError as e:
                    log.warning("%s", e)
                    self.adapter_errors[name] = str(e)
            self._status = "ready"
            log.info("CPU engine ready at %s (%s, compiled in %s s)", self.url, self.health.get("precision"),
                     self.health.get("compile_s"))
        except Exception as e:  # noqa: BLE001 — every column says why
            self._error = str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
            self._status = "failed"
            log.error("the CPU engine could not start: %s", self._error)

    def preparing(self) -> str | None:
        """What every Compare column says while the engine is not ready (None once it is); a dead server is
        restarted here (its rows already ended with an error)."""
        if self._status == "ready" and self.process is not None and not self.process.alive():
            with self._lock:
                if self._status == "ready":
                    log.warning("the CPU engine exited (%s); restarting it", self.process.proc.returncode)
                    self._wanted = dict(self.adapters)
                    self.adapters, self.url, self._status = {}, "", "starting"
                    self._doing = "restarting the CPU engine (it had stopped)"
                    self._bring_up_async()
        if self._status == "ready":
            return None
        if self._status == "failed":
            return f"The CPU engine could not start: {self._error}"
        return f"preparing: {self._doing}"

    def failed(self) -> bool:
        return self._status == "failed"

    def wait_ready(self, timeout_s: float = 1800.0) -> None:
        """Block until the engine is ready (tests, benches, the CLI); EngineError when it failed."""
        deadline = time.monotonic() + timeout_s
        while self._status == "starting" and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._status != "ready":
            raise EngineError(self.preparing() or "the CPU engine is not ready")

    def close(self) -> None:
        """Stop the server this engine started."""
        if self.process is not None:
            self.process.stop()

    # ------------------------------------------------------------------ server state

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if not self.url:
            raise EngineError(self.preparing() or "the CPU engine is not running")
        try:
            return self.client.request(method, self.url + path, **kwargs)
        except httpx.HTTPError as e:
            raise EngineError(f"the CPU engine at {self.url} is unreachable ({type(e).__name__}: {e})") from e

    def _sync_loaded(self) -> None:
        data = self._call("GET", "/adapters").json()
        self.adapters = {k: Path(v) for k, v in data.get("adapters", {}).items()}
        self.adapter_notes = data.get("notes", {})

    def has_adapter(self, name: str) -> bool:
        return name == BASE or name in self.adapters

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Serve the PEFT adapter folder ``path`` as ``name`` from the next decode step (no restart)."""
        path = adapter_folder(name, path)
        try:
            r = self._call("POST", "/adapters", json={"name": name, "path": str(path.resolve())},
                           timeout=httpx.Timeout(600.0, connect=5.0))
        except EngineError as e:
            raise AdapterLoadError(f"adapter {name!r}: {e}") from e
        if r.status_code != 200:
            raise AdapterLoadError(r.json().get("error", r.text[:300]))
        self.adapters[name] = path
        self.adapter_notes[name] = r.json().get("notes", [])
        self.adapter_errors.pop(name, None)

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            return
        try:
            self._call("POST", "/adapters/unload", json={"name": name})
        except EngineError as e:
            log.warning("unloading %s: %s", name, e)
        self.adapters.pop(name, None)

    def score(self, prompt: list[int], continuation: list[int], adapter: str = BASE):
        """Log-probabilities ``[len(continuation), vocab]`` (numpy) of each next token under teacher forcing, through
        the engine's decode path (the fidelity bench and the tests compare them with the in-process model's)."""
        import numpy as np

        r = self._call("POST", "/score", json={"prompt": prompt, "continuation": continuation, "adapter": adapter},
                       timeout=httpx.Timeout(600.0, connect=5.0))
        if r.status_code != 200:
            raise EngineError(f"the CPU engine answered {r.status_code}: {r.text[:300]}")
        rows, cols = (int(x) for x in r.headers["X-Shape"].split(","))
        return np.frombuffer(r.content, np.float32).reshape(rows, cols)

    # ------------------------------------------------------------------ tokens

    def render(self, messages: list[dict]) -> str:
        return render_chat(self.tokenizer, messages, self.reasoning_template, self.specials)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, messages: Prompt) -> int:
        return len(self._prompt_ids(messages))

    def _prompt_ids(self, messages: Prompt) -> list[int]:
        if isinstance(messages, str):  # a raw prompt: no template, the tokenizer's special tokens (BOS), as in-process
            return self.tokenizer(messages, add_special_tokens=True)["input_ids"]
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    def prompt_opens_think(self) -> bool:
        return self.render([{"role": "user", "content": "?"}]).rstrip().endswith("<think>")

    # ------------------------------------------------------------------ generation

    def start(self, requests: list[Request], settings: GenSettings) -> CPUGeneration:
        """Validate every row and send the generation (its rows stream as they decode)."""
        for _, adapter in requests:
            if not self.has_adapter(adapter):
                raise UnknownAdapterError(f"adapter {adapter!r} is not loaded (loaded: {sorted(self.adapters)})")
        prompts, max_new = [], []
        for messages, _ in requests:
            ids = self._prompt_ids(messages)
            room = self.max_context - len(ids)
            if room < 1:
                raise PromptTooLongError(f"the prompt has {len(ids)} tokens; the model's context is "
                                         f"{self.max_context} tokens")
            prompts.append(ids)
            max_new.append(min(settings.max_new_tokens, room))
        body = {"prompts": prompts, "adapters": [a for _, a in requests], "max_new": max_new,
                "settings": asdict(settings),  # every decoding setting, passed whole to the server's decoder
                "opened": self.prompt_opens_think() if settings.think_budget > 0 else False,
                "ignore_eos": self.ignore_eos}
        return CPUGeneration(self, [a for _, a in requests], body)


class CPUGeneration:
    """One :meth:`CPUEngine.start`: one streaming request read by a thread; snapshots of every row per step."""

    def __init__(self, engine: CPUEngine, adapters: list[str], body: dict[str, Any]) -> None:
        self.engine, self.body = engine, body
        self.t0 = time.perf_counter()
        self.states = [RowState(a, "", 0, None, 0.0, False, None) for a in adapters]
        self.tokens: list[list[int]] = [[] for _ in adapters]
        self.updates: queue.SimpleQueue = queue.SimpleQueue()
        self.stopped = threading.Event()
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._read, name="medadapt-cpu-engine-stream", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop this generation's rows (the server drops them; other generations go on)."""
        self.stopped.set()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _read(self) -> None:
        eng = self.engine
        try:
            timeout = httpx.Timeout(eng.stall_timeout_s, connect=5.0)
            with eng.client.stream("POST", eng.url + "/generate", json=self.body, timeout=timeout) as r:
                stream = r.extensions.get("network_stream")
                self.sock = stream.get_extra_info("socket") if stream is not None else None
                if self.stopped.is_set():
                    return
                if r.status_code != 200:
                    r.read()
                    raise EngineError(f"the CPU engine answered {r.status_code}: {r.text[:300]}")
                for line in r.iter_lines():
                    if self.stopped.is_set():
                        return
                    if line:
                        self.updates.put(json.loads(line))
            self.updates.put({"end": True})
        except Exception as e:  # noqa: BLE001 — the rows still open end with this message
            if self.stopped.is_set():
                return
            if isinstance(e, httpx.TimeoutException):
                msg = f"the CPU engine was too slow: nothing for {eng.stall_timeout_s:.0f} s"
            elif isinstance(e, (httpx.TransportError, httpx.StreamError)):
                msg = self._lost(f"the CPU engine failed while answering ({type(e).__name__})")
            else:
                msg = str(e) if isinstance(e, EngineError) else f"unexpected answer from the CPU engine: {e!r}"
            self.updates.put({"fail": msg})

    def __iter__(self) -> Iterator[list[RowState]]:
        tok = self.engine.tokenizer
        eos = self.engine.eos_ids
        left = sum(1 for st in self.states if not st.finished)
        while left:
            msgs = [self.updates.get()]
            while not self.updates.empty():
                msgs.append(self.updates.get())
            now = time.perf_counter() - self.t0
            changed: set[int] = set()
            for msg in msgs:
                for row, token, reason, forced in msg.get("e", []):
                    st = self.states[row]
                    if token not in eos:
                        self.tokens[row].append(token)
                        changed.add(row)
                    st.n_tokens = len(self.tokens[row])
                    st.first_token_s = now if st.first_token_s is None else st.first_token_s
                    st.budget_closed = bool(forced)
                    if reason is not None:
                        st.finished, st.finish_reason, st.elapsed_s = True, reason, now
                if "row_error" in msg:
                    row, error = msg["row_error"]
                    self._fail(row, error, now)
                fault = msg.get("error") or msg.get("fail") or (
                    self._lost("the CPU engine closed the stream before the answer finished") if "end" in msg else "")
                if fault:
                    for i, st in enumerate(self.states):
                        if not st.finished:
                            self._fail(i, fault, now)
            for row in changed:
                self.states[row].text = tok.decode(self.tokens[row], skip_special_tokens=True)
            for st in self.states:
                if not st.finished:
                    st.elapsed_s = now
            left = sum(1 for st in self.states if not st.finished)
            yield [RowState(**vars(st)) for st in self.states]

    def _lost(self, otherwise: str) -> str:
        """Why a stream broke off: the server process this app started died (its exit code), else ``otherwise``."""
        proc = self.engine.process
        if proc is None:
            return otherwise
        try:
            code = proc.proc.wait(timeout=2.0)  # a killed server closes its sockets just before it is reaped
        except subprocess.TimeoutExpired:
            return otherwise
        return f"the CPU engine stopped while answering (exit code {code}); the next question restarts it"

    def _fail(self, row: int, error: str, now: float) -> None:
        st = self.states[row]
        st.finished, st.finish_reason, st.error, st.elapsed_s = True, "error", error, now


def main(argv: list[str] | None = None) -> int:
    """``python -m medadapt.serve.cpu_engine prepare [--profile P]``: convert the profile's model for the CPU engine now
    (what the app otherwise does on first use) and print where it is."""
    import argparse

    from medadapt.adapters import model_folder_of
    from medadapt.config import load_config
    from medadapt.models import base_model_path

    p = argparse.ArgumentParser(prog="python -m medadapt.serve.cpu_engine", description=main.__doc__.split("\n")[0])
    p.add_argument("cmd", choices=["prepare"])
    p.add_argument("--profile", default=None)
    p.add_argument("--precision", default=None, choices=["int8", "int4", "fp32"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.profile)
    cache = cfg.paths.resolve("cache_dir")
    python = venv_python(cache)
    why = engine_installed(python)
    if why:
        print(why, file=sys.stderr)
        return 1
    precision = args.precision or cfg.engine.precision
    model_dir = model_folder_of(base_model_path(cfg))
    out = ensure_graph(python, model_dir, graph_dir(cache, model_dir, precision), precision,
                       lambda stage: print(stage, flush=True))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
