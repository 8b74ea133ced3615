"""Compare-tab latency: four answers as one mixed-adapter batch vs four separately loaded models one after another.

Run: ``python bench/compare_latency.py [--max-new-tokens 64] [--threads 1] [--repeats 2] [--rag-snippets 0]
[--cpu-engine int8]`` and ``python bench/compare_latency.py --ablation`` for what each decode-path optimisation buys.

Offline SmolLM2-135M-Instruct, variants base, rag (base + another prompt), sft, msft (the newest finished adapters in
``runs/offline`` when present, else random LoRA r=16 on all linear layers), one question, greedy, same
``max_new_tokens`` (EOS ignored so every row decodes the same number of tokens). Each approach runs in its own
subprocess so its peak RSS is its own:

- ``batched``: one :class:`medadapt.serve.engine.Engine`, all four rows in one ``Engine.stream`` call;
- ``sequential``: four models loaded separately (adapters merged into their copy: the fastest single-variant
  model), each answering with HF ``generate`` one after another;
- ``one``: a single base model answering once, the memory reference;
- ``cpu`` (``--cpu-engine PRECISION``): the same four rows as one generation of the CPU engine
  (:mod:`medadapt.serve.cpu_engine`, its server on the same threads; its memory is the server's peak RSS).

Times exclude loading and follow one warm-up generation; the two approaches alternate ``--rounds`` times and each
keeps its best, so load from other processes on a shared CPU hits both alike. CPU seconds are printed too.
Last line: ``RESULT speedup=<x> mem_ratio=<x>`` (wall-clock speedup; memory: batched peak RSS / one model's), with
``cpu_speedup=<batched wall / CPU engine wall> cpu_mem_ratio=<x>`` added when ``--cpu-engine`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTION = "What is the first-line drug treatment for type 2 diabetes, and how does it work?"
SNIPPET = ("Metformin, a biguanide, lowers hepatic glucose production and improves insulin sensitivity; it is the "
           "preferred initial pharmacologic agent for type 2 diabetes unless contraindicated. ")
from medadapt.variants import VARIANTS  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads in every approach (default %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per approach per round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2,
                   help="batched and sequential workers alternate this many times; each keeps its best (shared CPU)")
    p.add_argument("--rag-snippets", type=int, default=0, help="snippets in the RAG row's prompt (0: same prompt)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="batched engine dtype")
    p.add_argument("--ablation", action="store_true", help="time each decode-path optimisation instead")
    p.add_argument("--cpu-engine", default="", choices=["", "int8", "int4", "fp32"],
                   help="also time the CPU engine (MEDADAPT_ENGINE=openvino) at this precision")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p


def messages(variant: str, rag_snippets: int) -> list[dict]:
    from types import SimpleNamespace

    from medadapt.prompts import build_messages

    snippets = [SimpleNamespace(title=f"Textbook {i}", content=SNIPPET * 3) for i in range(1, rag_snippets + 1)]
    return build_messages(QUESTION, snippets=snippets if variant == "rag" else None)


def random_adapter(model_path: str, out: Path, seed: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    model.save_pretrained(out)
    return str(out)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- workers (one approach per process)

def worker_batched(spec: dict) -> dict:
    import medadapt.serve.multilora
    from medadapt.serve.engine import BASE, Engine, GenSettings

    if not spec.get("skinny", True):
        medadapt.serve.multilora.SKINNY_ROWS = 0
    engine = Engine(spec["model"], dtype=spec["dtype"], num_threads=spec["threads"])
    for kind in ("sft", "msft"):
        engine.load_adapter(kind, spec["adapters"][kind])
    engine.eos_ids = set()  # every row decodes max_new_tokens
    requests = [(messages(v, spec["rag_snippets"]), v if v in ("sft", "msft") else BASE) for v in VARIANTS]
    list(engine.stream(requests, GenSettings(max_new_tokens=4)))
    best, texts, ttft = None, [], []
    for _ in range(spec["repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        for states in engine.stream(requests, GenSettings(max_new_tokens=spec["max_new"])):
            pass
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if best is None or wall < best[0]:
            best = (wall, cpu)
        texts, ttft = [s.text for s in states], [s.first_token_s for s in states]
    return {"wall_s": best[0], "cpu_s": best[1], "texts": texts, "ttft_s": ttft, "rss_mb": peak_rss_mb()}


def worker_cpu(spec: dict) -> dict:
    """The four rows through the CPU engine's server (converted graph cached; started here, stopped after)."""
    import os

    from medadapt.serve.cpu_engine import CPUEngine, venv_python
    from medadapt.serve.api import BASE, GenSettings

    cache = Path(os.environ.get("MEDADAPT_CACHE_DIR", "~/.cache/medadapt")).expanduser()
    engine = CPUEngine(spec["model"], python=venv_python(cache), precision=spec["cpu_engine"],
                       threads=spec["threads"], cache_dir=cache,
                       adapters={k: Path(v) for k, v in spec["adapters"].items()})
    try:
        engine.wait_ready(3600)
        engine.ignore_eos = True  # every row decodes max_new_tokens, as in the other approaches
        requests = [(messages(v, spec["rag_snippets"]), v if v in ("sft", "msft") else BASE) for v in VARIANTS]
        list(engine.start(requests, GenSettings(max_new_tokens=4)))
        best, texts, ttft = None, [], []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            for states in engine.start(requests, GenSettings(max_new_tokens=spec["max_new"])):
                pass
            wall = time.perf_counter() - t0
            best = wall if best is None or wall < best else best
            texts, ttft = [s.text for s in states], [s.first_token_s for s in states]
        rss = 0.0
        for line in Path(f"/proc/{engine.process.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    finally:
        engine.close()
    return {"wall_s": best, "cpu_s": float("nan"), "texts": texts, "ttft_s": ttft, "rss_mb": rss}


def load_variant(spec: dict, variant: str):
    from medadapt.models import load_model

    model = load_model(spec["model"], "float32")
    if variant in ("sft", "msft"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec["adapters"][variant]).merge_and_unload().eval()
    return model


def hf_generate(model, tok, msgs: list[dict], max_new: int) -> str:
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def worker_sequential(spec: dict, variants: tuple[str, ...] = VARIANTS) -> dict:
    import torch

    from medadapt.models import load_tokenizer

    torch.set_num_threads(spec["threads"])
    tok = load_tokenizer(spec["model"])
    models = {v: load_variant(spec, v) for v in variants}
    best, texts = None, []
    with torch.inference_mode():
        hf_generate(models[variants[0]], tok, messages(variants[0], 0), 4)
        for _ in range(spec["repeats"]):
            t0, c0 = time.perf_counter(), time.process_time()
            texts = [hf_generate(models[v], tok, messages(v, spec["rag_snippets"]), spec["max_new"]) for v in variants]
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if best is None or wall < best[0]:
                best = (wall, cpu)
    return {"wall_s": best[0], "cpu_s": best[1], "texts": texts, "rss_mb": peak_rss_mb()}


def worker_hf_batch(spec: dict) -> dict:
    """HF ``generate`` on one left-padded batch of the four prompts: PEFT ``adapter_names`` or base only."""
    import torch
    from peft import PeftModel

    from medadapt.models import load_model, load_tokenizer

    torch.set_num_threads(spec["threads"])
    tok = load_tokenizer(spec["model"])
    tok.padding_side = "left"
    model, kwargs = load_model(spec["model"], "float32"), {}
    if spec["mode"] == "peft_generate":
        model = PeftModel.from_pretrained(model, spec["adapters"]["sft"], adapter_name="sft")
        model.load_adapter(spec["adapters"]["msft"], adapter_name="msft")
        kwargs = {"adapter_names": [v if v in ("sft", "msft") else "__base__" for v in VARIANTS]}
    texts = [tok.apply_chat_template(messages(v, spec["rag_snippets"]), tokenize=False, add_generation_prompt=True)
             for v in VARIANTS]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    best = None
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=4, do_sample=False, **kwargs)
        for _ in range(spec["repeats"]):
            t0, c0 = time.perf_counter(), time.process_time()
            model.generate(**enc, max_new_tokens=spec["max_new"], min_new_tokens=spec["max_new"], do_sample=False,
                           **kwargs)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            best = (wall, cpu) if best is None or wall < best[0] else best
    return {"wall_s": best[0], "cpu_s": best[1], "rss_mb": peak_rss_mb()}


ABLATION = [  # (label, worker, spec overrides)
    ("4 models one after another, HF generate (baseline)", "sequential", {}),
    ("HF generate, one padded batch, base only (no adapters)", "hf_batch", {"mode": "base"}),
    ("HF generate, one padded batch, PEFT adapter_names", "hf_batch", {"mode": "peft_generate"}),
    ("own decode loop, gathered multi-LoRA (2 matmuls per layer)", "batched", {"skinny": False}),
    ("+ skinny W @ x^T matmuls for decode (default)", "batched", {}),
    ("  same, bfloat16 weights", "batched", {"dtype": "bfloat16"}),
    ("  same, 2 threads", "batched", {"threads": 2}),
]


def run_ablation(spec: dict) -> None:
    rows = []
    for label, worker, over in ABLATION:
        res = run_worker(worker, {**spec, **over})
        rows.append((label, res))
        print(f"{label}: {res['wall_s']:.2f} s wall, {res['cpu_s']:.2f} s CPU, RSS {res['rss_mb']:.0f} MB", flush=True)
    base = rows[0][1]
    print("\n| step | wall s | CPU s | speedup (wall) | speedup (CPU) | peak RSS MB |\n| --- | --- | --- | --- | --- | --- |")
    for label, res in rows:
        print(f"| {label.strip()} | {res['wall_s']:.2f} | {res['cpu_s']:.2f} | {base['wall_s'] / res['wall_s']:.2f}x | "
              f"{base['cpu_s'] / res['cpu_s']:.2f}x | {res['rss_mb']:.0f} |")


def run_worker(name: str, spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--spec", f.name], capture_output=True,
                          text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    os.unlink(f.name)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"worker {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------- main

def prepare(args) -> dict:
    from medadapt.adapters import list_adapters
    from medadapt.config import load_config
    from medadapt.models import base_model_path

    cfg = load_config("offline")
    model = base_model_path(cfg)
    adapters, source = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    for seed, kind in enumerate(("sft", "msft"), 1):
        found = list_adapters(cfg, kind)
        if found:
            adapters[kind], source[kind] = str(found[0].path), f"trained ({found[0].run_dir.name})"
        else:
            adapters[kind], source[kind] = random_adapter(model, tmp / kind, seed), "random LoRA r=16, all linear"
    print(f"model {model}\nadapters: " + ", ".join(f"{k}: {v}" for k, v in source.items()))
    return {"model": model, "adapters": adapters, "threads": args.threads, "repeats": args.repeats,
            "max_new": args.max_new_tokens, "rag_snippets": args.rag_snippets, "dtype": args.dtype,
            "cpu_engine": args.cpu_engine}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        fn = {"batched": worker_batched, "sequential": worker_sequential, "hf_batch": worker_hf_batch, "cpu": worker_cpu,
              "one": lambda s: worker_sequential(s, ("base",))}[args.worker]
        print(json.dumps(fn(spec)))
        return 0
    spec = prepare(args)
    if args.ablation:
        run_ablation(spec)
        return 0
    one = run_worker("one", spec)
    batched = seq = cpu = None
    for _ in range(max(1, args.rounds)):
        b, q = run_worker("batched", spec), run_worker("sequential", spec)
        print(f"round: batched {b['wall_s']:.2f} s, sequential {q['wall_s']:.2f} s wall", flush=True)
        batched = b if batched is None or b["wall_s"] < batched["wall_s"] else batched
        seq = q if seq is None or q["wall_s"] < seq["wall_s"] else seq
        if args.cpu_engine:
            c = run_worker("cpu", spec)
            print(f"round: CPU engine ({args.cpu_engine}) {c['wall_s']:.2f} s wall", flush=True)
            cpu = c if cpu is None or c["wall_s"] < cpu["wall_s"] else cpu
    n = spec["max_new"]
    speedup = seq["wall_s"] / batched["wall_s"]
    mem_ratio = batched["rss_mb"] / one["rss_mb"]
    same = sum(a == b for a, b in zip(batched["texts"], seq["texts"]))
    print(f"{n} new tokens x 4 rows, threads={spec['threads']}, rag snippets={spec['rag_snippets']}")
    print(f"sequential (4 models, HF generate): {seq['wall_s']:.2f} s wall, {seq['cpu_s']:.2f} s CPU, "
          f"peak RSS {seq['rss_mb']:.0f} MB")
    print(f"batched (1 engine, mixed adapters): {batched['wall_s']:.2f} s wall, {batched['cpu_s']:.2f} s CPU, "
          f"peak RSS {batched['rss_mb']:.0f} MB, first token " + ", ".join(f"{t:.2f}" for t in batched["ttft_s"]) + " s")
    print(f"one base model (memory reference): peak RSS {one['rss_mb']:.0f} MB")
    print(f"speedup {speedup:.2f}x wall ({seq['cpu_s'] / batched['cpu_s']:.2f}x CPU); memory {mem_ratio:.2f}x one "
          f"model (sequential: {seq['rss_mb'] / one['rss_mb']:.2f}x); identical greedy outputs {same}/4")
    extra = ""
    if cpu is not None:
        same_cpu = sum(a == b for a, b in zip(cpu["texts"], batched["texts"]))
        print(f"CPU engine ({args.cpu_engine}, server on {spec['threads']} threads): {cpu['wall_s']:.2f} s wall, "
              f"server peak RSS {cpu['rss_mb']:.0f} MB, first token " + ", ".join(f"{t:.2f}" for t in cpu["ttft_s"])
              + f" s; greedy outputs equal to the fp32 batched engine's {same_cpu}/4")
        extra = f" cpu_speedup={batched['wall_s'] / cpu['wall_s']:.2f} cpu_mem_ratio={cpu['rss_mb'] / one['rss_mb']:.2f}"
    print(f"RESULT speedup={speedup:.2f} mem_ratio={mem_ratio:.2f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
