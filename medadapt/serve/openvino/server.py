"""The CPU engine's server: ``python -m medadapt.serve.openvino.server`` in the engine's venv (``scripts/cpu_engine.sh serve``).

A small HTTP server on loopback around :class:`medadapt.serve.openvino.runtime.Runtime`; :class:`medadapt.serve.cpu_engine.CPUEngine`
is its client. Prompts arrive as token ids (the app renders the chat template and defuses special tokens, exactly as
for the in-process engine), tokens go back as they are decoded:

- ``GET /health``: model, precision, compile time, the loop's figures (steps, median step time, rows, cache size);
- ``GET /adapters``: loaded adapters (name -> folder) and notes (e.g. a whole-copy SVD's energy);
- ``POST /adapters`` ``{"name", "path"}``: read a PEFT adapter folder and serve it from the next step (no restart,
  no recompile); 400 with the reason when it cannot be served; ``POST /adapters/unload`` ``{"name"}``;
- ``POST /generate`` ``{"prompts": [[ids]], "adapters": [...], "max_new": [...], "temperature", "top_p", "seed",
  "repetition_penalty", "think_budget", "opened", "ignore_eos"}``: one generation (a job), streamed as JSON lines: ``{"e":
  [[row, token, reason, budget_closed], ...]}`` per step, ``{"row_error": [row, message]}`` for a row that cannot run (an unknown
  adapter: the other rows go on), ``{"error": message}`` when a step failed, ``{"hb": 1}`` while waiting. Closing
  the connection cancels the job's rows (only them);
- ``POST /score`` ``{"prompt", "continuation", "adapter"}``: the log-probabilities ``[len(continuation), vocab]``
  (float32 bytes, shape in ``X-Shape``) of each next token under teacher forcing: the fidelity bench's view.

``--parent-pid``: exit when that process is gone (the app that started the server).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

log = logging.getLogger("medadapt.serve.openvino.server")
HEARTBEAT_S = 1.0


class Server:
    """The loaded model, its runtime and tokenizer."""

    def __init__(self, graph_dir: str, hf_dir: str, threads: int, cache_dir: str | None, max_rows: int,
                 prefill_chunk: int, adapter_cache: str | None = None, activations: str = "f32") -> None:
        from transformers import AutoTokenizer

        from medadapt.serve.openvino.runtime import Graph, Runtime, eos_of

        self.hf_dir = Path(hf_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        gen_cfg = {}
        if (self.hf_dir / "generation_config.json").is_file():
            gen_cfg = json.loads((self.hf_dir / "generation_config.json").read_text(encoding="utf-8"))
        self.graph = Graph(graph_dir, threads, cache_dir, activations)
        self.runtime = Runtime(self.graph, eos_of(self.tokenizer, gen_cfg), max_rows, prefill_chunk)
        self.graph_dir, self.threads, self.adapter_cache = graph_dir, threads, adapter_cache
        self.adapter_paths: dict[str, str] = {}
        self.notes: dict[str, list[str]] = {}
        self._base = None
        self._load_lock = threading.Lock()

    def base_tensor(self, name: str):
        """A base model tensor (float32 torch) by name, for adapters that carry whole module copies."""
        if self._base is None:
            from safetensors import safe_open

            self._base = {}
            for f in sorted(self.hf_dir.glob("*.safetensors")):
                h = safe_open(str(f), framework="pt")
                self._base.update({k: h for k in h.keys()})
        if name not in self._base:
            raise KeyError(f"the base model has no tensor {name!r}")
        return self._base[name].get_tensor(name).float()

    def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        from medadapt.serve.openvino.adapters import read_adapter

        with self._load_lock:
            adapter = read_adapter(name, path, self.base_tensor, self.graph.shape, cache_dir=self.adapter_cache)
            self.runtime.set_adapter(adapter)
            self.adapter_paths[name], self.notes[name] = str(path), adapter.notes
        return {"name": name, "rank": adapter.rank, "notes": adapter.notes}

    def unload_adapter(self, name: str) -> bool:
        with self._load_lock:
            self.adapter_paths.pop(name, None)
            self.notes.pop(name, None)
            return self.runtime.remove_adapter(name)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": str(self.hf_dir), "graph": str(self.graph_dir),
                "precision": self.graph.precision, "activations": self.graph.activations, "threads": self.threads,
                "compile_s": round(self.graph.compile_s, 2), "vocab": self.graph.shape["vocab"],
                "max_position": self.graph.shape["max_position"], **self.runtime.stats()}


def decoding_settings(raw: Any) -> SimpleNamespace:
    """A request's decoding settings: the app's ``GenSettings`` fields as JSON numbers, read by name by the decoder
    (:func:`medadapt.serve.decoding.pick_tokens`) and the thinking budget."""
    if not isinstance(raw, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                            for v in raw.values()):
        raise ValueError("settings must map each decoding setting to a number")
    return SimpleNamespace(**raw)


def make_handler(server: Server):
    from medadapt.serve.openvino.adapters import AdapterError
    from medadapt.serve.openvino.runtime import Job

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: one line per request at debug level
            log.debug("%s " + fmt, self.address_string(), *args)

        def _json(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            if n > 64 * 2**20:
                raise ValueError("request body too large")
            data = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            return data

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._json(200, server.health())
            elif self.path == "/adapters":
                self._json(200, {"adapters": server.adapter_paths, "notes": server.notes})
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                body = self._body()
            except (ValueError, json.JSONDecodeError) as e:
                self._json(400, {"error": f"bad request: {e}"})
                return
            if self.path == "/adapters":
                try:
                    self._json(200, server.load_adapter(str(body["name"]), str(body["path"])))
                except (AdapterError, KeyError, OSError) as e:
                    self._json(400, {"error": str(e)})
            elif self.path == "/adapters/unload":
                self._json(200, {"unloaded": server.unload_adapter(str(body.get("name")))})
            elif self.path == "/generate":
                self._generate(body)
            elif self.path == "/score":
                self._score(body)
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def _generate(self, body: dict[str, Any]) -> None:
            from medadapt.serve.think_budget import ThinkBudget

            try:
                prompts = [[int(t) for t in p] for p in body["prompts"]]
                adapters = [str(a) for a in body["adapters"]]
                max_new = [int(m) for m in body["max_new"]]
                if not (len(prompts) == len(adapters) == len(max_new)) or not prompts:
                    raise ValueError("prompts, adapters and max_new must have the same non-zero length")
                vocab = server.graph.shape["vocab"]
                if any(not p or min(p) < 0 or max(p) >= vocab for p in prompts):
                    raise ValueError(f"every prompt needs token ids in [0, {vocab})")
                settings = decoding_settings(body["settings"])
                budget = int(settings.think_budget)
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                self._json(400, {"error": f"bad request: {e}"})
                return
            row_errors = []
            for i, a in enumerate(adapters):
                if a != "__base__" and a not in server.runtime.adapters:
                    row_errors.append((i, f"the CPU engine has no adapter {a!r} loaded"))
                    max_new[i] = 0
            rule = ThinkBudget.for_tokenizer(budget, server.tokenizer, bool(body.get("opened"))) if budget > 0 \
                else None
            job = Job(prompts, max_new, adapters, settings, rule.rows(len(prompts)) if rule else None,
                      ignore_eos=bool(body.get("ignore_eos")))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            left = sum(1 for m in max_new if m > 0)
            try:
                for row, msg in row_errors:
                    self._line({"row_error": [row, msg]})
                if left:
                    server.runtime.submit(job)
                while left:
                    try:
                        event = job.events.get(timeout=HEARTBEAT_S)
                    except queue.Empty:
                        self._line({"hb": 1})
                        continue
                    if isinstance(event, BaseException):
                        self._line({"error": f"{type(event).__name__}: {event}"})
                        return
                    left -= sum(1 for _, _, reason, _ in event if reason is not None)
                    self._line({"e": event})
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # the client closed the stream: stop its rows
            finally:
                server.runtime.cancel(job)

        def _score(self, body: dict[str, Any]) -> None:
            try:
                prompt = [int(t) for t in body["prompt"]]
                cont = [int(t) for t in body["continuation"]]
                adapter = str(body.get("adapter", "__base__"))
                if not prompt or not cont:
                    raise ValueError("prompt and continuation must not be empty")
                if adapter != "__base__" and adapter not in server.runtime.adapters:
                    raise ValueError(f"no adapter {adapter!r} loaded")
            except (KeyError, TypeError, ValueError) as e:
                self._json(400, {"error": f"bad request: {e}"})
                return
            data = server.runtime.score(prompt, cont, adapter)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("X-Shape", f"{data.shape[0]},{data.shape[1]}")
            self.send_header("Content-Length", str(data.nbytes))
            self.end_headers()
            self.wfile.write(data.tobytes())

        def _line(self, obj: dict[str, Any]) -> None:
            self.wfile.write(json.dumps(obj).encode() + b"\n")
            self.wfile.flush()

    return Handler


def watch_parent(pid: int) -> None:
    """Exit when process ``pid`` is gone (the app that started this server died without stopping it)."""
    while True:
        time.sleep(2.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.warning("parent process %d is gone; exiting", pid)
            os._exit(0)
        except PermissionError:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medadapt.serve.openvino.server", description=__doc__.split("\n")[0])
    p.add_argument("--graph", required=True, help="folder written by medadapt.serve.openvino.graph.export")
    p.add_argument("--model", required=True, help="the Hugging Face model folder (tokenizer, base tensors)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=None, help="OpenVINO's compiled-model cache")
    p.add_argument("--adapter-cache", default=None, help="where the SVDs of adapters' whole-module copies are kept")
    p.add_argument("--max-rows", type=int, default=64)
    p.add_argument("--prefill-chunk", type=int, default=128)
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--activations", choices=["f32", "bf16"],
                   default=os.environ.get("MEDADAPT_CPU_ENGINE_ACTIVATIONS", "f32"),
                   help="compute precision (bf16: faster on AMX CPUs, less faithful); env "
                   "MEDADAPT_CPU_ENGINE_ACTIVATIONS")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("MEDADAPT_LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    server = Server(args.graph, args.model, args.threads, args.cache_dir, args.max_rows, args.prefill_chunk,
                    args.adapter_cache, args.activations)
    for spec in args.adapter:
        name, _, path = spec.partition("=")
        print(json.dumps(server.load_adapter(name, path)), flush=True)
    if args.parent_pid:
        threading.Thread(target=watch_parent, args=(args.parent_pid,), daemon=True).start()
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(server))
    httpd.daemon_threads = True
    print(f"medadapt CPU engine ready on http://{args.host}:{args.port} ({server.graph.precision}, "
          f"{args.threads} threads, up in {time.perf_counter() - t0:.1f} s)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
