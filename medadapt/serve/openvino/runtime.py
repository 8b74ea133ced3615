"""The CPU engine's decode loop: continuous batching over the multi-LoRA OpenVINO graph (runs in the engine's venv).

The same scheme as the in-process engine (:mod:`medadapt.serve.batching`), on :mod:`medadapt.serve.openvino.graph`:

- a :class:`Job` is one caller's rows (a Compare question's four variants), each row with its own adapter, with the
  job's sampling settings, seed and thinking budget (:mod:`medadapt.serve.decoding` and :mod:`medadapt.serve.think_budget`, the
  in-process engine's own code);
- the loop admits jobs between steps; a job's prompts are prefilled in groups of equal length, in chunks of
  ``prefill_chunk`` positions into a staging cache, one chunk per loop turn, so a long prompt never stalls the other
  users' rows for more than one chunk; then the rows join the running batch;
- one decode step serves every live row of every job in ONE graph call (each row through its own adapter), rows leave
  when finished or cancelled and the last live row takes a leaving row's place in the :class:`KVCache`;
- adapters are added and removed between steps (:class:`medadapt.serve.openvino.adapters.AdapterInputs`), never recompiled.

A step that raises ends every job in it with the error; the loop goes on for later jobs.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medadapt.serve.openvino.adapters import Adapter, AdapterInputs

log = logging.getLogger(__name__)
NEG = np.float32(-1e30)  # additive mask value of a slot a row may not attend to (finite: no NaN on empty rows)


class KVCache:
    """Keys and values per layer, ``[rows, kv_heads, length, head_dim]`` float32, right-padded; grown on demand."""

    GROW = 256  # length capacity grows in these steps

    def __init__(self, layers: int, kv_heads: int, head_dim: int, rows: int = 0, length: int = 0) -> None:
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.rows = self.length = 0
        self.k: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.reserve(rows, length)

    def reserve(self, rows: int, length: int) -> None:
        """Room for ``rows`` rows of ``length`` slots (entries kept)."""
        if rows <= self.rows and length <= self.length:
            return
        rows = max(rows, self.rows + (self.rows // 2 if rows > self.rows else 0))
        length = max(self.length, -(-length // self.GROW) * self.GROW)
        for store in (self.k, self.v):
            for i in range(self.layers):
                new = np.zeros((rows, self.kv_heads, length, self.head_dim), np.float32)
                if i < len(store):
                    old = store[i]
                    new[:old.shape[0], :, :old.shape[2]] = old
                    store[i] = new
                else:
                    store.append(new)
        self.rows, self.length = rows, length

    def write(self, rows: np.ndarray, positions: np.ndarray, new: list[np.ndarray]) -> None:
        """Store ``new`` (per layer k, v ``[n, kv_heads, T, D]``) at cache rows ``rows``, from each row's position."""
        t = new[0].shape[2]
        for i in range(self.layers):
            nk, nv = new[2 * i], new[2 * i + 1]
            if t == 1:
                self.k[i][rows, :, positions] = nk[:, :, 0]
                self.v[i][rows, :, positions] = nv[:, :, 0]
            else:
                for j, (r, p) in enumerate(zip(rows, positions)):
                    self.k[i][r, :, p:p + t] = nk[j]
                    self.v[i][r, :, p:p + t] = nv[j]

    def copy_rows(self, src: KVCache, src_rows: list[int], dst_rows: list[int], length: int) -> None:
        for i in range(self.layers):
            self.k[i][dst_rows, :, :length] = src.k[i][src_rows, :, :length]
            self.v[i][dst_rows, :, :length] = src.v[i][src_rows, :, :length]

    def past(self, rows: int) -> list[np.ndarray]:
        """The first ``rows`` rows of every layer (contiguous views): the graph's ``past_*`` inputs."""
        out = []
        for i in range(self.layers):
            out += [self.k[i][:rows], self.v[i][:rows]]
        return out

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k + self.v)


class Graph:
    """The compiled graph and one infer request; ``run`` feeds it and returns logits and the new keys/values."""

    def __init__(self, graph_dir: str | Path, threads: int = 2, cache_dir: str | Path | None = None,
                 activations: str = "f32") -> None:
        """``activations``: the precision OpenVINO computes in (``f32``, or ``bf16``: its default on CPUs with
        AVX-512 bf16/AMX, which changes the answers; fixed here so every CPU computes the same)."""
        import json

        import openvino as ov

        graph_dir = Path(graph_dir)
        meta = json.loads((graph_dir / "graph.json").read_text(encoding="utf-8"))
        self.shape, self.precision = meta["shape"], meta["precision"]
        core = ov.Core()
        if cache_dir:  # the compiled blob is cached: a restart loads it in seconds
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_PRECISION_HINT": activations}
        self.activations = activations
        t0 = time.perf_counter()
        self.compiled = core.compile_model(str(graph_dir / "model.xml"), "CPU", config)
        self.compile_s = time.perf_counter() - t0
        self.request = self.compiled.create_infer_request()
        self._ov = ov
        self._adapters: AdapterInputs | None = None  # the adapter inputs set on the request (they stay set)

    def set_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            self.request.set_tensor(name, self._ov.Tensor(np.ascontiguousarray(arr), shared_memory=True))

    def run(self, feed: dict[str, np.ndarray], adapters: AdapterInputs) -> tuple[np.ndarray, list]:
        if adapters is not self._adapters:  # a new adapter set: its tensors, once (shared memory, no copy)
            self.set_inputs(adapters.arrays)
            self._adapters = adapters
        self.set_inputs(feed)
        self.request.infer()
        layers = self.shape["layers"]
        logits = self.request.get_tensor("logits").data.copy()
        new = []
        for i in range(layers):
            new += [self.request.get_tensor(f"new_k_{i}").data, self.request.get_tensor(f"new_v_{i}").data]
        return logits, new


@dataclass(eq=False)
class Job:
    """One request's rows; the loop puts lists of ``(row, token, finish reason or None, budget closed)`` (or the
    exception that broke a step) on ``events``."""

    prompts: list[list[int]]
    max_new: list[int]
    adapters: list[str]
    settings: Any  # the app's GenSettings fields as sent (server.decoding_settings), read by the decoder
    budget: Any = None  # medadapt.serve.think_budget.BudgetRows
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    generator: Any = None
    seen: Any = None  # torch bool [rows, V]: tokens each row generated (repetition penalty)
    ignore_eos: bool = False  # benches: every row decodes its max_new tokens


@dataclass(eq=False)
class _Row:
    job: Job
    index: int
    pos: int = 0  # tokens in the cache
    last: int = 0
    count: int = 0
    done: bool = False


@dataclass(eq=False)
class _Prefill:
    """A group of one job's rows with equal prompt lengths, prefilled chunk by chunk into its own cache."""

    job: Job
    rows: list[int]
    length: int
    cache: KVCache
    done: int = 0  # positions prefilled


class Runtime:
    """Owns the loop thread over a :class:`Graph`; ``submit`` a :class:`Job`, ``cancel`` it, change adapters."""

    def __init__(self, graph: Graph, eos_ids: set[int], max_rows: int = 64, prefill_chunk: int = 128) -> None:
        self.graph, self.eos_ids, self.max_rows, self.prefill_chunk = graph, set(eos_ids), max_rows, prefill_chunk
        s = graph.shape
        self.cache = KVCache(s["layers"], s["kv_heads"], s["head_dim"])
        self.adapters: dict[str, Adapter] = {}
        self.inputs = AdapterInputs(s, [])
        self.live: list[_Row] = []
        self.prefilling: deque[_Prefill] = deque()
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.lock = threading.Lock()  # held by each step and by adapter changes
        self.steps = 0
        self.tokens = 0  # tokens decoded (all rows)
        self.step_s = deque(maxlen=64)  # recent decode step times (the /health figure)
        self.thread = threading.Thread(target=self._loop, name="medadapt-ov-loop", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ adapters

    def set_adapter(self, adapter: Adapter) -> None:
        """Add or replace an adapter (its inputs are rebuilt off the loop, swapped in between steps)."""
        adapters = {**self.adapters, adapter.name: adapter}
        inputs = AdapterInputs(self.graph.shape, list(adapters.values()))
        with self.lock:
            self.adapters, self.inputs = adapters, inputs

    def remove_adapter(self, name: str) -> bool:
        if name not in self.adapters:
            return False
        adapters = {k: v for k, v in self.adapters.items() if k != name}
        inputs = AdapterInputs(self.graph.shape, list(adapters.values()))
        with self.lock:
            self.adapters, self.inputs = adapters, inputs
        return True

    # ------------------------------------------------------------------ jobs

    def submit(self, job: Job) -> None:
        if job.settings.temperature > 0:
            import torch

            job.generator = torch.Generator().manual_seed(job.settings.seed)
        with self.cond:
            self.waiting.append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        with self.cond:
            self.cond.notify()

    def busy(self) -> bool:
        return bool(self.live or self.waiting or self.prefilling)

    # ------------------------------------------------------------------ the loop

    def _admit(self) -> None:
        with self.cond:
            while not (self.waiting or self.live or self.prefilling):
                self.cond.wait()
            room = self.max_rows - len(self.live) - sum(len(p.rows) for p in self.prefilling)
            while self.waiting and (len(self.waiting[0].prompts) <= room or not (self.live or self.prefilling)):
                job = self.waiting.popleft()
                if job.cancelled:
                    continue
                room -= len(job.prompts)
                groups: dict[int, list[int]] = {}
                for i, (p, m) in enumerate(zip(job.prompts, job.max_new)):
                    if m > 0:
                        groups.setdefault(len(p), []).append(i)
                s = self.graph.shape
                for n, rows in sorted(groups.items()):
                    self.prefilling.append(_Prefill(job, rows, n, KVCache(s["layers"], s["kv_heads"], s["head_dim"],
                                                                          len(rows), n)))

    def _loop(self) -> None:
        while True:
            self._admit()
            out: dict[Job, list] = {}
            touched: set[Job] = set()
            try:
                with self.lock:
                    self._drop()
                    self.prefilling = deque(p for p in self.prefilling if not p.job.cancelled)
                    if self.prefilling:
                        touched.add(self.prefilling[0].job)
                        self._prefill_chunk(self.prefilling[0], out)
                    self._drop()
                    if self.live:
                        touched |= {r.job for r in self.live}
                        self._step(out)
                        self._drop()
            except Exception as e:  # a broken step fails the jobs in it, never the loop
                log.exception("engine step failed")
                for job in touched | set(out):
                    job.events.put(e)
                    job.cancelled = True
                self.live = [r for r in self.live if not r.job.cancelled]
                self.prefilling = deque(p for p in self.prefilling if not p.job.cancelled)
                if not self.live:
                    self.cache = KVCache(self.cache.layers, self.cache.kv_heads, self.cache.head_dim)
                continue
            for job, events in out.items():
                if events:
                    job.events.put(events)

    def _feed(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, names: list[str],
              past: list[np.ndarray]) -> dict[str, np.ndarray]:
        s = self.graph.shape
        feed = {"input_ids": ids, "positions": positions, "mask": mask, "lora_mask": self.inputs.row_mask(names),
                "head_mask": self.inputs.row_mask(names, head=True), "norm_delta": self.inputs.norm_delta(names)}
        for i in range(s["layers"]):
            feed[f"past_k_{i}"], feed[f"past_v_{i}"] = past[2 * i], past[2 * i + 1]
        return feed

    def _prefill_chunk(self, pre: _Prefill, out: dict[Job, list]) -> None:
        job, n = pre.job, len(pre.rows)
        start = pre.done
        t = min(self.prefill_chunk, pre.length - start)
        span = pre.cache.length
        ids = np.array([job.prompts[r][start:start + t] for r in pre.rows], np.int64)
        positions = np.broadcast_to(np.arange(start, start + t, dtype=np.int64), (n, t)).copy()
        mask = np.full((n, 1, t, span + t), NEG, np.float32)
        mask[:, :, :, :start] = 0.0
        mask[:, :, :, span:] = np.triu(np.full((t, t), NEG, np.float32), 1)
        names = [job.adapters[r] for r in pre.rows]
        t0 = time.perf_counter()
        logits, new = self.graph.run(self._feed(ids, positions, mask, names, pre.cache.past(n)), self.inputs)
        pre.cache.write(np.arange(n), np.full(n, start), new)
        pre.done += t
        log.debug("prefill chunk %d x %d in %.2f s", n, t, time.perf_counter() - t0)
        if pre.done < pre.length:
            return
        self.prefilling.popleft()
        first = len(self.live)
        need = max(pre.length + 1, max((r.pos + 1 for r in self.live), default=0))
        self.cache.reserve(first + n, need)
        self.cache.copy_rows(pre.cache, list(range(n)), list(range(first, first + n)), pre.length)
        rows = [_Row(job, r, pos=pre.length) for r in pre.rows]
        self.live.extend(rows)
        for row, tok in zip(rows, self._pick(job, logits, rows)):
            self._emit(row, tok, out)

    def _step(self, out: dict[Job, list]) -> None:
        live = self.live
        b = len(live)
        pos = np.array([r.pos for r in live], np.int64)
        self.cache.reserve(b, int(pos.max()) + 1)
        span = self.cache.length
        mask = np.full((b, 1, 1, span + 1), NEG, np.float32)
        allowed = np.arange(span)[None, :] < pos[:, None]
        mask[:, 0, 0, :span][allowed] = 0.0
        mask[:, 0, 0, span] = 0.0
        names = [r.job.adapters[r.index] for r in live]
        ids = np.array([[r.last] for r in live], np.int64)
        t0 = time.perf_counter()
        logits, new = self.graph.run(self._feed(ids, pos[:, None].copy(), mask, names, self.cache.past(b)),
                                     self.inputs)
        self.step_s.append(time.perf_counter() - t0)
        self.cache.write(np.arange(b), pos, new)
        self.steps += 1
        self.tokens += b
        by_job: dict[Job, list[int]] = {}
        for i, r in enumerate(live):
            r.pos += 1
            by_job.setdefault(r.job, []).append(i)
        for job, idx in by_job.items():
            rows = [live[i] for i in idx]
            for row, tok in zip(rows, self._pick(job, logits[idx], rows)):
                self._emit(row, tok, out)

    def _pick(self, job: Job, logits: np.ndarray, rows: list[_Row]) -> list[int]:
        import torch

        from medadapt.serve.decoding import pick_tokens

        s = job.settings
        t = torch.from_numpy(np.ascontiguousarray(logits))
        if s.repetition_penalty != 1.0 and job.seen is None:
            job.seen = torch.zeros(len(job.prompts), t.shape[-1], dtype=torch.bool)
        seen = None if job.seen is None else job.seen[[r.index for r in rows]]
        return pick_tokens(t, s, job.generator, seen).tolist()

    def _emit(self, row: _Row, token: int, out: dict[Job, list]) -> None:
        job = row.job
        if job.budget is not None:
            token = job.budget.token(row.index, token)
        row.last, row.count = token, row.count + 1
        if job.seen is not None and token < job.seen.shape[1]:
            job.seen[row.index, token] = True
        eos = token in self.eos_ids and not job.ignore_eos
        reason = "eos" if eos else "length" if row.count >= job.max_new[row.index] else None
        row.done = reason is not None
        forced = bool(job.budget is not None and job.budget.forced[row.index])
        out.setdefault(job, []).append((row.index, token, reason, forced))

    def _drop(self) -> None:
        """Remove finished and cancelled rows; the last live rows take their places in the cache."""
        gone = {i for i, r in enumerate(self.live) if r.done or r.job.cancelled}
        if not gone:
            return
        k = len(self.live) - len(gone)
        holes = sorted(i for i in gone if i < k)
        movers = [i for i in range(k, len(self.live)) if i not in gone]
        if movers:
            self.cache.copy_rows(self.cache, movers, holes, max(self.live[i].pos for i in movers))
        for h, m in zip(holes, movers):
            self.live[h] = self.live[m]
        self.live = self.live[:k]
        if not self.live:  # free the memory of a long answer
            self.cache = KVCache(self.cache.layers, self.cache.kv_heads, self.cache.head_dim)

    def score(self, prompt: list[int], continuation: list[int], adapter: str) -> np.ndarray:
        """Log-probabilities ``[len(continuation), V]`` of each next token after ``prompt`` + the continuation so far
        (teacher forcing through the decode path; a private cache, between the loop's steps): the fidelity bench's
        and the tests' view of the engine's distributions."""
        s = self.graph.shape
        n = len(prompt)
        cache = KVCache(s["layers"], s["kv_heads"], s["head_dim"], 1, n + len(continuation) + 1)
        span = cache.length
        out = []
        with self.lock:
            mask = np.full((1, 1, n, span + n), NEG, np.float32)
            mask[:, :, :, span:] = np.triu(np.full((n, n), NEG, np.float32), 1)
            logits, new = self.graph.run(self._feed(np.array([prompt], np.int64), np.arange(n)[None].copy(), mask,
                                                    [adapter], cache.past(1)), self.inputs)
            cache.write(np.array([0]), np.array([0]), new)
            for i, tok in enumerate(continuation[:-1]):
                out.append(logits[0])
                pos = n + i
                mask = np.full((1, 1, 1, span + 1), NEG, np.float32)
                mask[0, 0, 0, :pos] = 0.0
                mask[0, 0, 0, span] = 0.0
                logits, new = self.graph.run(self._feed(np.array([[tok]], np.int64), np.array([[pos]], np.int64),
                                                        mask, [adapter], cache.past(1)), self.inputs)
                cache.write(np.array([0]), np.array([pos]), new)
            out.append(logits[0])
        x = np.stack(out).astype(np.float64)
        x -= x.max(-1, keepdims=True)
        return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)

    def stats(self) -> dict[str, Any]:
        recent = sorted(self.step_s)
        return {"steps": self.steps, "tokens": self.tokens, "live_rows": len(self.live),
                "waiting_jobs": len(self.waiting), "prefilling_groups": len(self.prefilling),
                "step_s_median": recent[len(recent) // 2] if recent else None,
                "kv_cache_mb": self.cache.nbytes() / 2**20, "adapter_inputs_mb": self.inputs.nbytes() / 2**20,
                "adapters": sorted(self.adapters)}


def eos_of(tokenizer, generation_config: dict | None = None) -> set[int]:
    """EOS ids: the tokenizer's and the model's generation config's."""
    ids: set[int] = set()
    for value in ((generation_config or {}).get("eos_token_id"), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids

