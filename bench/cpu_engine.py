"""CPU engines for the study's model: the four-column load on the DeepSeek-R1-Distill-Qwen-1.5B shape, and fidelity.

Run: ``python bench/cpu_engine.py [--candidates torch,openvino,llamacpp,ovgenai] [--tokens 32] [--rounds 2]
[--torch-dtypes bfloat16,float32] [--openvino-precisions int8,int4,int8-bf16] [--llamacpp-precisions q8_0,q4_0]``.
One sitting, every engine on the same 2 cores with the same load:

- **Speed** on the R1-1.5B shape with random weights (the exact config, built locally: 28 layers, hidden 1,536,
  intermediate 8,960, 12/2 heads, vocabulary 151,936, untied head; bf16, ~3.5 GB, cached under
  ``<cache>/bench/r1-shape``): four columns of one Compare question at once, each with its own adapter: base, two
  LoRA adapters of the reference recipe's shape (rank 16 on the 7 projections) and a rank-64 delta (a published
  model's shape, 7 projections); ``--tokens`` new tokens per column, EOS ignored, greedy. Per engine: tokens/s per
  column (after its first token), time to first token, the engine process's peak resident memory, install size and
  time (``install.json`` of its venv), and the step time against the memory-traffic bound (weight bytes per step /
  the bandwidth measured here).

  ``torch``: the in-process engine (transformers Qwen2 in bf16, or ``--torch-dtypes``; gathered multi-LoRA, 2
  threads; a worker process).
  ``openvino``: the project's CPU engine (``scripts/cpu_engine.sh``, :mod:`medadapt.serve.openvino.graph`), int8 and int4
  weights computed in f32 (``int8-bf16``: computed in bf16, OpenVINO's default on AVX-512 bf16/AMX CPUs).
  ``llamacpp``: llama.cpp as the ik_llama.cpp fork's wheel (``scripts/cpu_candidates.sh llamacpp``,
  :mod:`bench.llamacpp_worker` in its venv): GGUF f16 from its ``convert_hf_to_gguf.py``, Q8_0, Q4_0 and Q4_K_M from
  its ``llama-quantize`` (``-rtr``: repacked at load), the adapters as GGUF LoRAs. llama.cpp sets LoRAs per context,
  not per row, so the four columns are four sequences of one context decoded one batch per adapter each step (as
  llama-server groups its slots by LoRA set): four decodes per step; a note gives the four rows on the base in one
  batch. Its step bound counts the GGUF's own tensor bytes (llama-quantize keeps the head at Q6_K or above).
  ``ovgenai``: OpenVINO GenAI's ``LLMPipeline`` on optimum-intel's int8/int4 export (``scripts/cpu_candidates.sh
  ovgenai``): adapters are chosen per ``generate`` call, so the four columns are four calls (tok/s: each column's
  share of the decoding; the single-stream rates in a note).

- **Fidelity** on real weights (SmolLM2-135M-Instruct, the offline model): the Compare prompts of the first
  ``--items`` evaluated items of each benchmark, ``--cont`` greedy tokens from the fp32 in-process engine, then each
  engine's next-token distributions under teacher forcing on the same tokens: top-1 agreement with the fp32 engine
  and KL(fp32 || engine) in nats per position, per precision.

Last line: ``RESULT r1_tok_s_torch=<x> r1_tok_s_engine=<x> r1_speedup=<x> r1_ttft_s=<s> r1_rss_mb=<mb>
smol_agreement=<x> smol_kl=<x> engine=<name> precision=<bits>`` for the engine the app uses (``--engine``,
``--precision``, default openvino int8).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = Path(os.environ.get("MEDADAPT_CACHE_DIR", "~/.cache/medadapt")).expanduser()
BENCH = CACHE / "bench"
CANDIDATES = Path(os.environ.get("MEDADAPT_CANDIDATES_DIR", CACHE / "candidates")).expanduser()
R1_CONFIG = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072, rope_theta=10000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False, bos_token_id=151646,
                 eos_token_id=151643)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
COLUMNS = ("base", "lora16_a", "lora16_b", "delta64")  # the adapter of each column (base: none)
QUESTION = ("A 58-year-old woman has fatigue, pallor and a low MCV. What is the most likely cause, and which test "
            "should be ordered first?")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidates", default="torch,openvino,llamacpp,ovgenai")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per column (EOS ignored)")
    p.add_argument("--torch-tokens", type=int, default=8, help="new tokens per column for the slow torch baseline")
    p.add_argument("--torch-dtypes", default="bfloat16", help="the in-process engine's dtypes (e.g. bfloat16,float32)")
    p.add_argument("--openvino-precisions", default="int8,int4",
                   help="the CPU engine's weight precisions; -bf16 computes in bf16 (e.g. int8,int4,int8-bf16)")
    p.add_argument("--llamacpp-precisions", default="q8_0,q4_0",
                   help="llama.cpp's GGUF types (f16,q8_0,q4_0,q4_k); -rtr repacks at load (e.g. q8_0-rtr)")
    p.add_argument("--rounds", type=int, default=2, help="each engine is timed this many times (interleaved); best")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--items", type=int, default=10, help="fidelity: evaluated items per benchmark")
    p.add_argument("--cont", type=int, default=32, help="fidelity: greedy tokens scored per prompt")
    p.add_argument("--engine", default="openvino", help="the engine of the RESULT line")
    p.add_argument("--precision", default="int8", help="its precision")
    p.add_argument("--skip", default="", help="comma list of phases to skip: speed,fidelity")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


# ---------------------------------------------------------------- the machine

def machine() -> dict:
    info = {"cpus": os.cpu_count(), "load": os.getloadavg()}
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        info["model"] = fields.get("Model name", "?").strip()
        flags = fields.get("Flags", "").split()
        info["flags"] = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni",
                                     "amx_tile", "amx_bf16", "amx_int8") if f in flags]
    except OSError:
        pass
    return info


def bandwidth_gbs(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Memory read bandwidth: the best of ``repeats`` sums over a ``gib`` GiB float32 tensor on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30 // 4))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


# ---------------------------------------------------------------- models and adapters

def r1_assets() -> tuple[Path, dict[str, Path]]:
    """The R1-1.5B-shaped random model (bf16, with the real R1 tokenizer) and the three adapters, built once."""
    root = BENCH / "r1-shape"
    model_dir = root / "model"
    if not (model_dir / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        from medadapt.r1_tokenizer import r1_tokenizer_dir

        log("building the R1-1.5B-shaped random model (bf16, once)")
        torch.manual_seed(0)
        model = Qwen2ForCausalLM._from_config(Qwen2Config(**R1_CONFIG), dtype=torch.bfloat16)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="model.tmp-", dir=root))
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(r1_tokenizer_dir()).save_pretrained(tmp)
        del model
        os.replace(tmp, model_dir)
    return model_dir, random_adapters(model_dir, root / "adapters", {"lora16_a": 16, "lora16_b": 16, "delta64": 64})


def random_adapters(model_dir: Path, out: Path, ranks: dict[str, int]) -> dict[str, Path]:
    """PEFT LoRA adapters on the 7 projections with random B factors (rank -> alpha 2r for 16, r for the delta)."""
    paths = {name: out / name for name in ranks}
    if all((p / "adapter_config.json").is_file() for p in paths.values()):
        return paths
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    log(f"making adapters {sorted(ranks)} for {model_dir.name} (once)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    for seed, (name, r) in enumerate(ranks.items(), 1):
        torch.manual_seed(seed)
        pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r if r <= 16 else r, target_modules=PROJECTIONS))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01 if r <= 16 else 0.005)
        pm.save_pretrained(paths[name])
        model = pm.unload()
    return paths


def r1_prompt_ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    from medadapt.prompts import build_messages, render_chat

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = render_chat(tok, build_messages(QUESTION, system_role=False), reasoning_template=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def weight_bytes(model_dir: Path, bits: float) -> float:
    """Bytes of weights one decode step reads: every layer and the head (the embedding rows read are negligible)."""
    c = json.loads((model_dir / "config.json").read_text())
    h, m, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    per_layer = h * h * 2 + 2 * h * kv + 3 * h * m
    return (layers * per_layer + c["vocab_size"] * h) * bits / 8


# ---------------------------------------------------------------- timing helpers

class Columns:
    """Per-row token timestamps of one four-column request."""

    def __init__(self, n: int) -> None:
        self.t0 = time.perf_counter()
        self.times: list[list[float]] = [[] for _ in range(n)]

    def token(self, row: int, count: int = 1) -> None:
        now = time.perf_counter() - self.t0
        self.times[row].extend([now] * count)

    def summary(self) -> dict:
        rates = []
        for ts in self.times:
            rates.append((len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0)
        return {"tok_s": rates, "tok_s_min": min(rates), "tok_s_mean": sum(rates) / len(rates),
                "ttft_s": max(ts[0] for ts in self.times if ts), "wall_s": max(ts[-1] for ts in self.times if ts),
                "tokens": [len(ts) for ts in self.times]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """Peak resident memory of ``pid`` (``RssFile``: its file-backed part now, e.g. mmapped weights the kernel can
    drop and read again)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def wait_http(url: str, proc: subprocess.Popen, log_file: Path, timeout: float = 1800) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode}):\n{log_file.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def install_info(folder: Path) -> dict:
    info = {}
    if (folder / "install.json").is_file():
        info = json.loads((folder / "install.json").read_text())
    return {"install_s": info.get("seconds"), "install_mb": (info.get("bytes") or 0) / 2**20 or None}


def free_port() -> int:
    from tests.net import free_port as fp

    return fp()


# ---------------------------------------------------------------- the project's engine (openvino)

class OpenVINOEngine:
    """The project's CPU engine server on a converted graph."""

    name = "openvino"

    def __init__(self, model_dir: Path, precision: str, threads: int) -> None:
        from medadapt.serve.cpu_engine import engine_installed, graph_dir, venv_python

        self.python = venv_python(CACHE)
        why = engine_installed(self.python)
        if why:
            subprocess.run(["bash", str(ROOT / "scripts" / "cpu_engine.sh"), "setup"], check=False)
            why = engine_installed(self.python)
            if why:
                raise RuntimeError(why)
        self.model_dir, self.precision, self.threads = model_dir, precision, threads
        weights, _, act = precision.partition("-")  # int8-bf16: int8 weights, computed in bf16
        self.graph, self.weights, self.activations = graph_dir(CACHE, model_dir, weights), weights, act or "f32"
        self.install = install_info(self.python.parent.parent)
        self.proc = None

    def prepare(self) -> float:
        from medadapt.serve.cpu_engine import ensure_graph, graph_ready

        if graph_ready(self.graph):
            return 0.0
        t0 = time.perf_counter()
        ensure_graph(self.python, self.model_dir, self.graph, self.weights, lambda s: log(f"  {s}"))
        return time.perf_counter() - t0

    def start(self, adapters: dict[str, Path]) -> None:
        from medadapt.serve.cpu_engine import _engine_env

        self.port = free_port()
        self.log_file = Path(tempfile.mkstemp(prefix="ov-server-", suffix=".log")[1])
        cmd = [str(self.python), "-m", "medadapt.serve.openvino.server", "--graph", str(self.graph), "--model",
               str(self.model_dir), "--port", str(self.port), "--threads", str(self.threads), "--cache-dir",
               str(CACHE / "ov-cache"), "--activations", self.activations] + \
            [f"--adapter={k}={v}" for k, v in adapters.items()]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_engine_env(), stdout=open(self.log_file, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/health", self.proc, self.log_file)
        self.start_s = time.perf_counter() - t0

    def four_columns(self, prompt: list[int], names: list[str], tokens: int) -> dict:
        import httpx

        cols = Columns(len(names))
        body = {"prompts": [prompt] * len(names), "adapters": [n if n != "base" else "__base__" for n in names],
                "max_new": [tokens] * len(names), "ignore_eos": True}
        c0 = cpu_seconds(self.proc.pid)
        with httpx.stream("POST", self.url + "/generate", json=body, timeout=3600) as r:
            for line in r.iter_lines():
                msg = json.loads(line) if line else {}
                if "error" in msg or "row_error" in msg:
                    raise RuntimeError(str(msg))
                for row, _, _, _ in msg.get("e", []):
                    cols.token(row)
        out = cols.summary()
        out["cpu_s"] = cpu_seconds(self.proc.pid) - c0
        health = httpx.get(self.url + "/health", timeout=10).json()
        out["step_s_median"] = health.get("step_s_median")
        return out

    def score(self, prompt: list[int], cont: list[int], adapter: str = "__base__"):
        import httpx
        import numpy as np

        r = httpx.post(self.url + "/score", json={"prompt": prompt, "continuation": cont, "adapter": adapter},
                       timeout=600)
        r.raise_for_status()
        rows, cols = (int(x) for x in r.headers["X-Shape"].split(","))
        return np.frombuffer(r.content, np.float32).reshape(rows, cols)

    def rss_mb(self) -> float:
        self.file_mb = peak_rss_mb(self.proc.pid, "RssFile")
        return peak_rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


# ---------------------------------------------------------------- llama.cpp (a worker in its venv)

class LlamaCppEngine:
    """llama.cpp (the ik_llama.cpp fork's wheel) on GGUF weights: ``bench/llamacpp_worker.py serve`` in its venv, the
    model and the adapters as GGUF LoRAs loaded once; the bench sends it one JSON request per line."""

    name = "llamacpp"
    QUANT = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k": "Q4_K_M"}  # precision -> llama-quantize type
    CONVERTED = ("f32", "f16")  # written by convert_hf_to_gguf.py itself
    PRE = {"qwen2": "deepseek-r1-qwen"}  # model_type -> pre-tokenizer when the converter does not know the tokenizer

    def __init__(self, model_dir: Path, precision: str, threads: int) -> None:
        self.root = CANDIDATES / "llamacpp"
        self.python = self.root / "venv" / "bin" / "python"
        if not self.python.exists():
            subprocess.run(["bash", str(ROOT / "scripts" / "cpu_candidates.sh"), "llamacpp"], check=True)
        self.model_dir, self.precision, self.threads = model_dir, precision, threads
        self.quant, _, flag = precision.partition("-")  # q8_0-rtr: repacked at load (ik's -rtr)
        self.repack = flag == "rtr"
        self.lora_type = "f32" if self.quant == "f32" else "f16"
        self.out = BENCH / "gguf" / f"{model_dir.parent.name}-{model_dir.name}"
        self.install = install_info(self.root)
        self.site = next((self.root / "venv" / "lib").glob("python3*/site-packages"))
        self.proc = None

    def gguf(self, quant: str | None = None) -> Path:
        return self.out / f"model-{quant or self.quant}.gguf"

    def lora(self, name: str) -> Path:
        return self.out / f"lora-{name}-{self.lora_type}.gguf"

    def _run(self, cmd: list, what: str) -> None:
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{what} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")

    def prepare(self, adapters: dict[str, Path] | None = None) -> float:
        """f16 (or f32) GGUF by the wheel's convert_hf_to_gguf.py (through the worker), quantized by its
        llama-quantize, and the GGUF LoRAs (f32 with an f32 model, else f16); each once."""
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        config = json.loads((self.model_dir / "config.json").read_text())
        src = self.gguf(self.quant if self.quant in self.CONVERTED else "f16")
        if not src.exists():
            tmp = src.with_suffix(".tmp")
            pre = ["--pre", self.PRE[config["model_type"]]] if config["model_type"] in self.PRE else []
            self._run([self.python, ROOT / "bench" / "llamacpp_worker.py", "convert", self.model_dir, "--outtype",
                       src.stem.split("-")[-1], "--outfile", tmp, *pre], "convert_hf_to_gguf.py")
            os.replace(tmp, src)
        if not self.gguf().exists():
            tmp = self.gguf().with_suffix(".tmp")
            self._run([self.site / "ik_llama_cpp" / "bin" / "llama-quantize", src, tmp, self.QUANT[self.quant],
                       self.threads], "llama-quantize")
            os.replace(tmp, self.gguf())
        for name, path in (adapters or {}).items():
            if not self.lora(name).exists():
                self._run([self.python, ROOT / "bench" / "llamacpp_worker.py", "lora", "--adapter", path, "--arch",
                           config["model_type"], "--layers", config["num_hidden_layers"], "--out", self.lora(name),
                           "--outtype", self.lora_type],
                          f"GGUF LoRA {name}")
        return time.perf_counter() - t0

    def start(self, adapters: dict[str, Path], ctx: int = 2048) -> None:
        self.log_file = Path(tempfile.mkstemp(prefix="llamacpp-", suffix=".log")[1])
        cmd = [str(self.python), str(ROOT / "bench" / "llamacpp_worker.py"), "serve", "--model", str(self.gguf()),
               "--threads", str(self.threads), "--ctx", str(ctx)] + ["--repack"] * self.repack + \
            [f"--lora={n}={self.lora(n)}" for n in adapters]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=open(self.log_file, "wb"), start_new_session=True)
        self.ready = self._reply()
        self.start_s = time.perf_counter() - t0

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the llama.cpp worker exited ({self.proc.wait()}):\n"
                               f"{self.log_file.read_text()[-3000:]}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(msg["error"])
        return msg

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def four_columns(self, prompt: list[int], names: list[str], tokens: int) -> dict:
        """The columns as llama.cpp serves them: one batch per distinct adapter each step (LoRAs are per context);
        and, as a note, the same rows all on the base in one batch (what one shared LoRA set would cost)."""
        c0 = cpu_seconds(self.proc.pid)
        out = self.ask({"job": "columns", "prompt": prompt, "names": names, "tokens": tokens})
        out["cpu_s"] = cpu_seconds(self.proc.pid) - c0
        base = self.ask({"job": "columns", "prompt": prompt, "names": ["base"] * len(names), "tokens": tokens})
        out["note"] = (f"{out['decodes_per_step']} decodes per step, one per adapter; the {len(names)} rows on the "
                       f"base in one batch: {base['tok_s_min']:.2f} tok/s per column")
        out.pop("ids")
        return out

    def score(self, prompt: list[int], cont: list[int], adapter: str = "base"):
        import numpy as np

        fd, path = tempfile.mkstemp(suffix=".npy")
        os.close(fd)
        try:
            self.ask({"job": "score", "prompt": prompt, "cont": cont, "adapter": adapter, "out": path})
            return np.load(path)
        finally:
            os.unlink(path)

    def rss_mb(self) -> float:
        self.file_mb = peak_rss_mb(self.proc.pid, "RssFile")
        return peak_rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            stop(self.proc)
            self.proc = None


# ---------------------------------------------------------------- OpenVINO GenAI (a worker in its venv)

class OVGenAIEngine:
    """OpenVINO GenAI's LLMPipeline on optimum-intel's export; runs as a worker process in its venv."""

    name = "ovgenai"

    def __init__(self, model_dir: Path, precision: str, threads: int) -> None:
        self.root = CANDIDATES / "ovgenai"
        if not (self.root / "venv" / "bin" / "python").exists():
            subprocess.run(["bash", str(ROOT / "scripts" / "cpu_candidates.sh"), "ovgenai"], check=True)
        self.model_dir, self.precision, self.threads = model_dir, precision, threads
        self.out = BENCH / "ovgenai" / f"{model_dir.parent.name}-{precision}"
        self.install = install_info(self.root)
        self.proc = None

    def prepare(self) -> float:
        if (self.out / "openvino_model.xml").exists():
            return 0.0
        t0 = time.perf_counter()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=self.out.name + ".tmp-", dir=self.out.parent))
        args = ["--weight-format", self.precision] + (["--group-size", "128", "--ratio", "1.0"]
                                                       if self.precision == "int4" else [])
        subprocess.run([str(self.root / "venv" / "bin" / "optimum-cli"), "export", "openvino", "--model",
                        str(self.model_dir), "--task", "text-generation-with-past", *args, str(tmp)], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(tmp, self.out)
        return time.perf_counter() - t0

    def start(self, adapters: dict[str, Path]) -> None:
        self.adapters = adapters
        self.start_s = None

    def four_columns(self, prompt: list[int], names: list[str], tokens: int) -> dict:
        spec = {"model": str(self.out), "adapters": {k: str(v) for k, v in self.adapters.items()}, "names": names,
                "prompt": prompt, "tokens": tokens, "threads": self.threads}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        proc = subprocess.run([str(self.root / "venv" / "bin" / "python"), __file__, "--worker", "ovgenai", "--spec",
                               f.name], capture_output=True, text=True)
        os.unlink(f.name)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            raise RuntimeError(f"ovgenai worker failed:\n{proc.stderr[-3000:]}")
        out = json.loads(lines[-1])
        self._rss = out.pop("rss_mb")
        return out

    def rss_mb(self) -> float:
        return getattr(self, "_rss", float("nan"))

    def stop(self) -> None:
        pass


def worker_ovgenai(spec: dict) -> dict:
    """In the ovgenai venv: the base rows batched in one generate call (what OpenVINO GenAI does best), and the four
    columns as it would serve per-row adapters: one generate call per adapter, one after another."""
    import openvino as ov
    import openvino_genai as og

    ads = {n: og.Adapter(str(Path(p) / "adapter_model.safetensors")) for n, p in spec["adapters"].items()}
    config = og.AdapterConfig()
    for a in ads.values():
        config.add(a, 1.0)
    pipe = og.LLMPipeline(spec["model"], "CPU", adapters=config, INFERENCE_NUM_THREADS=spec["threads"])
    gc = og.GenerationConfig()
    gc.max_new_tokens, gc.min_new_tokens, gc.do_sample, gc.ignore_eos = spec["tokens"], spec["tokens"], False, True
    ids = ov.Tensor(__import__("numpy").array([spec["prompt"]], dtype="int64"))
    names = spec["names"]
    cols = Columns(len(names))
    c0 = time.process_time()
    for i, name in enumerate(names):  # the columns as four calls (each its own adapter)
        ac = og.AdapterConfig() if name not in ads else og.AdapterConfig(ads[name], 1.0)

        def streamer(token, i=i):
            cols.token(i)
            return og.StreamingStatus.RUNNING

        pipe.generate(og.TokenizedInputs(ids, ov.Tensor(__import__("numpy").ones_like(ids.data))), gc,
                      adapters=ac, streamer=streamer)
    out = cols.summary()
    # one call after another: a column's share of the decoding is its tokens over all four calls' decode time
    decode_s = sum(ts[-1] - ts[0] for ts in cols.times if len(ts) > 1)
    out["tok_s_single"] = out["tok_s"]
    out["tok_s"] = [(len(ts) - 1) / decode_s for ts in cols.times]
    out["tok_s_min"], out["tok_s_mean"] = min(out["tok_s"]), sum(out["tok_s"]) / len(out["tok_s"])
    out["cpu_s"] = time.process_time() - c0
    out["note"] = "columns one generate call after another (adapters are per call); single-stream " + \
        "/".join(f"{x:.2f}" for x in out["tok_s_single"]) + " tok/s"
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ---------------------------------------------------------------- torch (the in-process engine, a worker)

def worker_torch(spec: dict) -> dict:
    from medadapt.serve.engine import Engine

    engine = Engine(spec["model"], dtype=spec["dtype"], num_threads=spec["threads"])
    for name, path in spec["adapters"].items():
        engine.load_adapter(name, path)
    engine.eos_ids = set()  # every column decodes its tokens
    prompt = spec["prompt"]
    names = [n if n in spec["adapters"] else "__base__" for n in spec["names"]]
    from medadapt.serve.batching import Job
    from medadapt.config import GenSettings

    cols = Columns(len(names))
    job = Job([prompt] * len(names), [spec["tokens"]] * len(names), names, GenSettings())
    c0 = time.process_time()
    engine._batcher.submit(job)
    left = len(names)
    while left:
        event = job.events.get()
        if isinstance(event, BaseException):
            raise event
        for row, _, reason in event:
            cols.token(row)
            left -= reason is not None
    out = cols.summary()
    out["cpu_s"] = time.process_time() - c0
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["steps"] = engine._batcher.steps
    return out


class TorchEngine:
    name = "torch"

    def __init__(self, model_dir: Path, precision: str, threads: int) -> None:
        self.model_dir, self.precision, self.threads = model_dir, precision, threads
        self.install = {"install_s": None, "install_mb": None}

    def prepare(self) -> float:
        return 0.0

    def start(self, adapters: dict[str, Path]) -> None:
        self.adapters, self.start_s = adapters, None

    def four_columns(self, prompt: list[int], names: list[str], tokens: int) -> dict:
        spec = {"model": str(self.model_dir), "dtype": self.precision, "threads": self.threads, "prompt": prompt,
                "adapters": {k: str(v) for k, v in self.adapters.items()}, "names": names, "tokens": tokens}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        proc = subprocess.run([sys.executable, __file__, "--worker", "torch", "--spec", f.name], capture_output=True,
                              text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        os.unlink(f.name)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            raise RuntimeError(f"torch worker failed:\n{proc.stderr[-3000:]}")
        out = json.loads(lines[-1])
        self._rss = out.pop("rss_mb")
        return out

    def rss_mb(self) -> float:
        return getattr(self, "_rss", float("nan"))

    def stop(self) -> None:
        pass


ENGINES = {"torch": TorchEngine, "openvino": OpenVINOEngine, "llamacpp": LlamaCppEngine, "ovgenai": OVGenAIEngine}
BITS = {"bfloat16": 16, "float32": 32, "int8": 8.25, "int4": 4.5, "fp32": 32}  # with their scales


# ---------------------------------------------------------------- phases

def precisions(args, name: str) -> list[str]:
    return {"torch": args.torch_dtypes, "openvino": args.openvino_precisions,
            "llamacpp": args.llamacpp_precisions}.get(name, "int8,int4").split(",")


def speed(args, candidates: list[str], bandwidth: float) -> dict:
    model_dir, adapters = r1_assets()
    prompt = r1_prompt_ids(model_dir)
    log(f"R1 shape: prompt of {len(prompt)} tokens, columns {COLUMNS}, {args.tokens} tokens each")
    engines = []
    for name in candidates:
        for precision in precisions(args, name):
            try:
                eng = ENGINES[name](model_dir, precision, args.threads)
                if name == "llamacpp":
                    secs = eng.prepare(adapters)
                else:
                    secs = eng.prepare()
                if secs:
                    log(f"{name} {precision}: converted in {secs:.0f} s")
                engines.append(eng)
            except Exception as e:  # noqa: BLE001 — an engine that cannot install or convert is reported
                log(f"{name} {precision}: not measured: {type(e).__name__}: {e}")
    results: dict[str, dict] = {}
    for rnd in range(args.rounds):
        for eng in engines:
            key = f"{eng.name} {eng.precision}"
            tokens = args.torch_tokens if eng.name == "torch" else args.tokens
            try:
                eng.start(adapters)
                if eng.name in ("openvino", "llamacpp"):
                    eng.four_columns(prompt, list(COLUMNS), 4)  # warm-up
                res = eng.four_columns(prompt, list(COLUMNS), tokens)
                res["rss_mb"] = eng.rss_mb()
                res["rss_file_mb"] = getattr(eng, "file_mb", None)
                res["start_s"] = eng.start_s
            except Exception as e:  # noqa: BLE001
                log(f"{key}: failed: {type(e).__name__}: {e}")
                results.setdefault(key, {"error": f"{type(e).__name__}: {e}"})
                continue
            finally:
                eng.stop()
            step_bytes = getattr(eng, "ready", {}).get("step_bytes") or \
                weight_bytes(model_dir, BITS[eng.precision.split("-")[0]])
            bound = step_bytes / (bandwidth * 1e9)
            res["bound_s"] = bound
            res.update(eng.install)
            log(f"{key} round {rnd + 1}: per column " + ", ".join(f"{x:.2f}" for x in res["tok_s"])
                + f" tok/s, TTFT {res['ttft_s']:.1f} s, peak RSS {res['rss_mb']:.0f} MB")
            best = results.get(key)
            if best is None or "error" in best or res["tok_s_min"] > best["tok_s_min"]:
                results[key] = res
    return results


def fidelity(args, candidates: list[str]) -> dict:
    """SmolLM2: teacher-forced agreement and KL of each engine against the fp32 in-process engine."""
    import numpy as np
    import torch

    from medadapt.config import load_config
    from medadapt.data.benchmarks import evaluated_items, posed
    from medadapt.serve.engine import Engine, GenSettings
    from medadapt.models import base_model_path
    from medadapt.prompts import build_messages

    cfg = load_config("offline")
    model_dir = Path(base_model_path(cfg))
    items = [it for its in evaluated_items(cfg, n=args.items).values() for it in its]
    ref = Engine(str(model_dir), num_threads=args.threads)
    prompts, conts = [], []
    for it in items:
        msgs = build_messages(**posed(it), system_role=cfg.model.system_prompt)
        ids = ref._prompt_ids(msgs)
        text = ref.generate_batch([msgs], ["__base__"], GenSettings(max_new_tokens=args.cont))[0]
        cont = ref.tokenizer(text, add_special_tokens=False)["input_ids"][:args.cont]
        if len(cont) < 2:
            continue
        prompts.append(ids)
        conts.append(cont)
    refs = []
    with torch.no_grad():
        for ids, cont in zip(prompts, conts):
            logits = ref.model(torch.tensor([ids + cont])).logits[0, len(ids) - 1:-1].float()
            refs.append(torch.log_softmax(logits, -1).numpy())
    n_pos = sum(len(c) for c in conts)
    log(f"fidelity: {len(prompts)} Compare prompts of evaluated items, {n_pos} positions (fp32 reference)")
    del ref
    out: dict[str, dict] = {}
    for name in candidates:
        if name not in ("openvino", "llamacpp"):
            continue
        for precision in precisions(args, name):
            key = f"{name} {precision}"
            try:
                eng = ENGINES[name](model_dir, precision, args.threads)
                eng.prepare({}) if name == "llamacpp" else eng.prepare()
                eng.start({})
                agree = kl = 0.0
                for ids, cont, lp in zip(prompts, conts, refs):
                    got = eng.score(ids, cont)
                    for pos in range(len(cont)):
                        q = got[pos]
                        agree += int(q.argmax()) == int(lp[pos].argmax())
                        kl += float((np.exp(lp[pos]) * (lp[pos] - q)).sum())
                out[key] = {"agreement": agree / n_pos, "kl": kl / n_pos, "positions": n_pos}
                log(f"{key}: top-1 agreement {agree / n_pos:.4f}, KL {kl / n_pos:.5f} nats/position")
            except Exception as e:  # noqa: BLE001
                log(f"{key}: fidelity not measured: {type(e).__name__}: {e}")
                out[key] = {"error": str(e)}
            finally:
                try:
                    eng.stop()
                except Exception:  # noqa: BLE001
                    pass
    return out


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        print(json.dumps({"torch": worker_torch, "ovgenai": worker_ovgenai}[args.worker](spec)))
        return 0
    candidates = [c for c in args.candidates.split(",") if c]
    skip = set(args.skip.split(","))
    info = machine()
    bw = bandwidth_gbs(args.threads)
    log(f"CPU {info.get('model')} x{info['cpus']} flags {' '.join(info.get('flags', []))}; load {info['load']}; "
        f"memory read bandwidth {bw:.1f} GB/s ({args.threads} threads)")
    res = speed(args, candidates, bw) if "speed" not in skip else {}
    fid = fidelity(args, candidates) if "fidelity" not in skip else {}
    print("\n| engine | precision | tok/s per column (min / mean) | TTFT s | step vs bound | CPU s per step |"
          " peak RSS MB | install |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, r in res.items():
        name, precision = key.split(" ")
        if "error" in r:
            print(f"| {name} | {precision} | failed: {r['error'][:80]} | | | | | |")
            continue
        step = 1.0 / r["tok_s_min"] if r["tok_s_min"] else float("nan")
        inst = f"{r['install_s']:.0f} s, {r['install_mb']:.0f} MB" if r.get("install_s") else "-"
        cpu_step = r.get("cpu_s", float("nan")) / max(1, max(r["tokens"]))
        mem = f"{r['rss_mb']:.0f}" + (f" ({r['rss_file_mb']:.0f} file-backed)" if r.get("rss_file_mb") else "")
        print(f"| {name} | {precision} | {r['tok_s_min']:.2f} / {r['tok_s_mean']:.2f} | {r['ttft_s']:.1f} | "
              f"{step / r['bound_s']:.2f}x ({r['bound_s'] * 1e3:.0f} ms) | {cpu_step:.2f} | {mem} | {inst} |")
        if r.get("note"):
            print(f"|  | ({r['note']}) | | | | | | |")
    for key, f in fid.items():
        if "error" not in f:
            print(f"fidelity {key}: agreement {f['agreement']:.4f}, KL {f['kl']:.5f}")
    torch_r = res.get("torch bfloat16", {})
    eng_r = res.get(f"{args.engine} {args.precision}", {})
    fid_r = fid.get(f"{args.engine} {args.precision}", {})
    t_tok, e_tok = torch_r.get("tok_s_min", float("nan")), eng_r.get("tok_s_min", float("nan"))
    bits = "".join(ch for ch in args.precision if ch.isdigit()) or args.precision
    print(f"RESULT r1_tok_s_torch={t_tok:.2f} r1_tok_s_engine={e_tok:.2f} r1_speedup={e_tok / t_tok:.1f} "
          f"r1_ttft_s={eng_r.get('ttft_s', float('nan')):.1f} r1_rss_mb={eng_r.get('rss_mb', float('nan')):.0f} "
          f"smol_agreement={fid_r.get('agreement', float('nan')):.4f} smol_kl={fid_r.get('kl', float('nan')):.5f} "
          f"engine={args.engine} precision={bits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
