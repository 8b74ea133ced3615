"""GPU checks of the reference path on a bare offline CUDA machine (run by ``bench/gpu_check.sh``): no Hub, no data
dir, no network. A random Qwen2 (the R1 distills' architecture: untied ``lm_head``, 151,936-row embedding) with the
real DeepSeek-R1-Distill tokenizer (:mod:`medadapt.r1_tokenizer`; carried as ``.whl/r1-tokenizer``) and the
Hub-dataset fixtures (``tests/fixtures/hub``, read by the same ``datasets`` calls) go through the project's own code,
each check one ``RESULT`` line:

- ``qlora``: the reference SFT recipe (its 2,048-token length) through the real trainer (``trainers.sft.run``: ``TrainingArguments``,
  bitsandbytes NF4, the targets-only collator, gradient checkpointing, paged 8-bit AdamW): tokens/s, peak memory,
  loss, Linear4bit layers;
- ``seed_cpt``: the study's CPT settings (``configs/study/cpt.yaml``: ``modules_to_save`` embed_tokens + lm_head at
  their own learning rate, 8-bit AdamW, 4-bit): the optimizer and its learning-rate groups as built;
- ``msft``: the study's MSFT chain (``configs/study/msft.yaml``, ``msft_stage2: merge``), 10 CPT + 10 SFT steps: CPT
  merged, a fresh LoRA trained on it, merged again, its delta (whole embedding copies) published as ``adapter/``;
- ``delta``: that delta served by the engine on the unchanged base in bf16, base and delta rows in one batch: greedy
  tokens against the merged full model, base rows against the base alone;
- ``decode``: the engine's bf16 batched decode with the thinking budget (R1's template opens ``<think>``);
- ``packing``: packed vs padded CPT batches, useful tokens/s;
- ``lancedb``: a LanceDB table built from GPU embeddings and queried, where ``lancedb`` imports (not carried by
  default: its 185 MB native library exceeds the 64 MiB the device tool carries).

    python bench/gpu_check.py [--which qlora,seed_cpt,msft,delta,decode,packing,lancedb] [--tokenizer DIR]
    python bench/gpu_check.py --device cpu --small     # a smoke run here: the same code paths, tiny, on the CPU
                                                       # (no 4-bit weights or 8-bit optimizers there: the trainers
                                                       # fall back to fp32 LoRA and AdamW, and the lines say so)
"""
from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HUB = ROOT / "tests" / "fixtures" / "hub"
CHECKS = ("qlora", "seed_cpt", "msft", "delta", "decode", "packing", "lancedb")


def result(name: str, **fields) -> str:
    return "RESULT " + " ".join(f"{name}_{k}={v}" for k, v in fields.items())


def failure(name: str, e: BaseException) -> str:
    return result(name, ok=0, error=f"{type(e).__name__}:{str(e)[:100]}".replace(" ", "_").replace("\n", "_"))


# ---------------------------------------------------------------- setup

def tokenizer_dir(carried: str | None) -> str:
    """The real R1 tokenizer: the carried folder (``tokenizer.json.xz`` unpacked to a temp folder), else built from
    the PyPI wheel here (:func:`medadapt.r1_tokenizer.r1_tokenizer_dir`)."""
    if carried and Path(carried).is_dir():
        src, dst = Path(carried), Path(tempfile.mkdtemp(prefix="r1-tokenizer-"))
        for f in src.iterdir():
            if f.name == "tokenizer.json.xz":
                (dst / "tokenizer.json").write_bytes(lzma.decompress(f.read_bytes()))
            elif f.is_file():
                shutil.copy2(f, dst / f.name)
        return str(dst)
    from medadapt.r1_tokenizer import r1_tokenizer_dir

    return str(r1_tokenizer_dir("hub"))


def app_config(model: str, work: Path):
    """The reference profile on the random model; runs and caches under ``work``; Hub datasets from the fixtures."""
    from medadapt.config import load_config

    os.environ["MEDADAPT_HUB_DATASETS_DIR"] = str(HUB)
    return load_config("reference", {
        "model": {"name_or_path": model, "display_name": "random-r1", "dtype": "bfloat16", "max_context": 4096},
        "paths": {"runs_dir": str(work / "runs"), "index_dir": str(work / "index"),
                  "results_dir": str(work / "results"), "cache_dir": str(work / "cache")}})


def train_config(recipe: str, model: str, out: Path, steps: int, length: int, **over):
    from medadapt.config import REPO_ROOT, load_train_config

    base = {"base_model": model, "max_steps": steps, "max_length": length, "output_dir": str(out), "report_to": "none",
            "use_unsloth": "false", "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "logging_steps": 1,
            "eval_steps": 10_000, "save_steps": 10_000, "warmup_steps": 0, "warmup_ratio": 0.0, "max_eval_samples": 2}
    return load_train_config(REPO_ROOT / "configs" / recipe, {**base, **over})


def log_lines(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


class Captured:
    """The model and optimizer the trainer built (``load_trainable`` and ``Trainer.create_optimizer`` wrapped)."""

    def __init__(self) -> None:
        import transformers

        import trainers.common as common

        self.models, self.optimizers = [], []
        self._load, self._opt = common.load_trainable, transformers.Trainer.create_optimizer
        cap = self

        def load(*a, **k):
            model, tok = cap._load(*a, **k)
            cap.models.append(model)
            return model, tok

        def create_optimizer(trainer, *a, **k):
            opt = cap._opt(trainer, *a, **k)
            cap.optimizers.append(opt)
            return opt

        common.load_trainable, transformers.Trainer.create_optimizer = load, create_optimizer
        for mod in ("trainers.sft", "trainers.cpt"):
            if hasattr(sys.modules.get(mod), "load_trainable"):
                sys.modules[mod].load_trainable = load

    def close(self) -> None:
        import transformers

        import trainers.common as common

        common.load_trainable, transformers.Trainer.create_optimizer = self._load, self._opt


def peak_mb(device: str) -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if device == "cuda" else "na"


# ---------------------------------------------------------------- checks

def check_qlora(model: str, work: Path, device: str, steps: int) -> str:
    import torch

    from trainers import sft

    cap = Captured()
    try:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run = work / "qlora"
        t0 = time.perf_counter()
        status = sft.run(train_config("reference/sft.yaml", model, run, steps, 2048), app_config(model, work))
        wall = time.perf_counter() - t0
        m = cap.models[-1]
        logs = [x for x in log_lines(run) if "loss" in x]
        tps = [x["tokens_per_s"] for x in log_lines(run) if x.get("tokens_per_s")]
        four = sum(1 for mod in m.modules() if type(mod).__name__ == "Linear4bit")
        return result("qlora", ok=int(status["status"] == "finished"), steps=status.get("steps"),
                      tokens_per_s=f"{tps[-1]:.0f}" if tps else "na", wall_s=f"{wall:.1f}", peak_mb=peak_mb(device),
                      loss_first=f"{logs[0]['loss']:.3f}" if logs else "na",
                      loss_last=f"{logs[-1]['loss']:.3f}" if logs else "na", linear4bit=four,
                      grad_ckpt=int(bool(getattr(m, "is_gradient_checkpointing", False))),
                      optimizer=type(cap.optimizers[-1]).__name__ if cap.optimizers else "na")
    finally:
        cap.close()


def check_seed_cpt(model: str, work: Path, device: str, steps: int) -> str:
    from safetensors import safe_open

    from trainers import cpt

    cap = Captured()
    try:
        run = work / "seed_cpt"
        status = cpt.run(train_config("study/cpt.yaml", model, run, steps, 256, profile="reference"),
                         app_config(model, work))
        opt = cap.optimizers[-1]
        lrs = sorted({g.get("initial_lr", g["lr"]) for g in opt.param_groups if g["params"]}, reverse=True)
        with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as f:
            whole = sorted({k.split(".")[-2] for k in f.keys() if "lora_" not in k})
        tps = [x["tokens_per_s"] for x in log_lines(run) if x.get("tokens_per_s")]
        return result("seed_cpt", ok=int(status["status"] == "finished"), steps=status.get("steps"),
                      optimizer=type(opt).__name__, lrs=",".join(f"{x:g}" for x in lrs),
                      whole_modules=",".join(whole) or "none", tokens_per_s=f"{tps[-1]:.0f}" if tps else "na",
                      peak_mb=peak_mb(device))
    finally:
        cap.close()


def check_msft(model: str, work: Path, device: str, steps: int) -> tuple[str, Path | None]:
    from trainers import msft

    run = work / "msft"
    small = {"max_length": 256, "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "max_steps": steps,
             "eval_steps": 10_000, "save_steps": 10_000, "warmup_steps": 0, "logging_steps": 1, "max_eval_samples": 2}
    over = {"max_samples": 0, "use_unsloth": "false",
            "cpt": {**small, "lora": {"r": 8, "alpha": 16, "use_rslora": True,
                                      "modules_to_save": ["embed_tokens", "lm_head"]}}}
    if device != "cuda":  # 4-bit and 8-bit optimizers are CUDA's; the chain itself runs anywhere
        over.update(load_in_4bit=False, optim="adamw_torch")
        over["cpt"].update(load_in_4bit=False, optim="adamw_torch")
    t0 = time.perf_counter()
    status = msft.run(train_config("study/msft.yaml", model, run, steps, 256, **over), app_config(model, work))
    wall = time.perf_counter() - t0
    meta = json.loads((run / "adapter" / "medadapt.json").read_text())
    delta = (meta.get("data") or {}).get("delta") or meta.get("delta") or {}
    ok = status["status"] == "finished" and (run / "merged" / ".merged").exists()
    line = result("msft", ok=int(ok), steps=status.get("steps"), wall_s=f"{wall:.1f}", delta_rank=delta.get("rank"),
                  full_copies=",".join(delta.get("full_copies") or []) or "none", peak_mb=peak_mb(device))
    return line, run if ok else None


def check_delta(model: str, run: Path | None, device: str, new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from medadapt.serve.engine import BASE, Engine, GenSettings
    from medadapt.prompts import build_messages

    if run is None:
        return result("delta", ok=0, error="no_msft_run")
    dtype = "bfloat16" if device == "cuda" else "float32"
    engine = Engine(model, dtype, reasoning_template=True, device=device, max_context=4096)
    engine.load_adapter("msft", run / "adapter")
    qs = ["Which vitamin is only in animal food?", "What causes megaloblastic anemia?",
          "First-line drug for hypertension?", "Why check potassium before insulin in DKA?"]
    reqs = [(build_messages(q, system_role=False), name) for q in qs for name in (BASE, "msft")]
    final = []
    for final in engine.stream(reqs, GenSettings(max_new_tokens=new_tokens)):
        pass
    tok = engine.tokenizer
    agree = {BASE: [], "msft": []}
    for path, name in ((model, BASE), (run / "merged", "msft")):
        full = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        for (msgs, row), st in zip(reqs, final):
            if row != name:
                continue
            ids = tok(engine.render(msgs), add_special_tokens=False, return_tensors="pt").input_ids.to(device)
            with torch.no_grad():
                ref = full.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                    pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
            got = tok(st.text, add_special_tokens=False).input_ids
            want = tok(tok.decode(ref, skip_special_tokens=True), add_special_tokens=False).input_ids
            same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            agree[name].append(same / max(1, len(want)))
        del full
    from medadapt.delta import fidelity

    fid = fidelity(model, run / "merged", run / "adapter", qs[:2], dtype="float32")
    return result("delta", ok=1, rows=len(reqs), base_prefix_agree=f"{sum(agree[BASE]) / len(agree[BASE]):.3f}",
                  delta_prefix_agree=f"{sum(agree['msft']) / len(agree['msft']):.3f}",
                  next_token_agree=f"{fid['agree']:.4f}", kl=f"{fid['kl']:.2e}", dtype=dtype)


def check_decode(model: str, device: str, new_tokens: int, budget: int) -> str:
    import torch

    from medadapt.serve.engine import BASE, Engine, GenSettings
    from medadapt.prompts import build_messages

    dtype = "bfloat16" if device == "cuda" else "float32"
    engine = Engine(model, dtype, reasoning_template=True, device=device, max_context=4096)
    qs = ["Which vitamin is only in animal food?", "What causes megaloblastic anemia?",
          "First-line drug for hypertension?", "Why check potassium before insulin in DKA?"] * 4
    reqs = [(build_messages(q, system_role=False), BASE) for q in qs]
    list(engine.stream(reqs[:2], GenSettings(max_new_tokens=8)))  # warm-up
    settings = GenSettings(max_new_tokens=new_tokens, temperature=0.6, top_p=0.95, seed=0, think_budget=budget)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    final = []
    for final in engine.stream(reqs, settings):
        pass
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    n = sum(r.n_tokens for r in final)
    closed = sum(r.budget_closed for r in final)
    return result("decode", ok=int(closed > 0), rows=len(reqs), tokens=n, tokens_per_s=f"{n / secs:.0f}", dtype=dtype,
                  think_budget=budget, budget_closed=closed, opens_think=int(engine.prompt_opens_think()))


def corpus_texts() -> list[str]:
    texts = []
    for path in sorted((ROOT / "tests" / "fixtures").rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            for key in ("contents", "question", "Question", "Complex_CoT", "exp", "sent1"):
                if isinstance(rec.get(key), str):
                    texts.append(rec[key])
    return texts


def batches(tok, n: int, rows: int, length: int, packed: bool, seed: int = 0) -> list[dict]:
    """CPT batches of the fixture texts: packed blocks, or one padded example per text (trainers.formatting)."""
    from trainers.formatting import PadCollator, cpt_examples

    texts = corpus_texts()
    random.Random(seed).shuffle(texts)
    texts = texts * math.ceil(n * rows * (8 if packed else 1) / max(1, len(texts)))
    ex = cpt_examples(tok, texts, length, packing=packed)[: n * rows]
    collate = PadCollator(tok.pad_token_id)
    return [collate(ex[i:i + rows]) for i in range(0, n * rows, rows)]


def check_packing(model: str, device: str, steps: int, length: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medadapt.models import load_tokenizer

    tok = load_tokenizer(model)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    out = {}
    for packed in (False, True):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device)
        m = get_peft_model(m, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        data = batches(tok, steps + 1, 8, length, packed)
        secs = tokens = 0
        for i, batch in enumerate(data):
            batch = {k: v.to(device) for k, v in batch.items()}
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                secs += time.perf_counter() - t0
                tokens += int(batch["attention_mask"].sum())
        nonpad = sum(int(b["attention_mask"].sum()) for b in data) / sum(b["attention_mask"].numel() for b in data)
        out[packed] = (tokens / secs, nonpad)
    return result("packing", ok=1, padded_tokens_per_s=f"{out[False][0]:.0f}", packed_tokens_per_s=f"{out[True][0]:.0f}",
                  speedup=f"{out[True][0] / out[False][0]:.2f}", padded_nonpad=f"{out[False][1]:.3f}")


def check_lancedb(model: str, work: Path, device: str) -> str:
    """GPU embeddings of the fixture corpus (a random MiniLM-shaped encoder: the cost, not the quality) into a
    LanceDB table, then queries: each probed stored vector comes back as its own nearest row (distance 0)."""
    try:
        import lancedb
    except ImportError:
        return result("lancedb", ok=0, error="not_carried_(185_MB_native_library;_scripts/gpu_wheels.py_--with_lancedb)")
    import pyarrow as pa
    import torch
    from transformers import BertConfig, BertModel

    from medadapt.models import load_tokenizer

    tok = load_tokenizer(model)
    texts = corpus_texts() * (1 if device == "cpu" else 8)
    enc = BertModel(BertConfig(vocab_size=len(tok), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                               intermediate_size=1536)).to(device).eval()
    t0 = time.perf_counter()
    vecs = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            b = tok(texts[i:i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
            h = enc(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state
            v = (h * b.attention_mask[..., None]).sum(1) / b.attention_mask.sum(1, keepdim=True)
            vecs.append(torch.nn.functional.normalize(v, dim=-1).float().cpu())
    emb = torch.cat(vecs).numpy()
    secs = time.perf_counter() - t0
    db = lancedb.connect(str(work / "lance"))
    table = db.create_table("chunks", pa.table({"id": [str(i) for i in range(len(texts))],
                                                "vector": pa.array(list(emb), type=pa.list_(pa.float32(), 384))}))
    probes = range(0, len(texts), max(1, len(texts) // 8))
    hits = sum(table.search(emb[i]).limit(1).to_list()[0]["_distance"] < 1e-4 for i in probes)
    return result("lancedb", ok=int(hits == len(probes)), rows=len(texts),
                  embed_rows_per_s=f"{len(texts) / secs:.0f}", self_hits=hits, version=lancedb.__version__)


# ---------------------------------------------------------------- main

def versions() -> str:
    import importlib.metadata as md

    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    for name in ("transformers", "peft", "accelerate", "datasets", "bitsandbytes", "pydantic", "tokenizers",
                 "sentence-transformers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "missing"
    return "RESULT " + " ".join(f"v_{k.replace('-', '_')}={v}" for k, v in out.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--which", default=",".join(CHECKS))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tokenizer", help="the carried R1 tokenizer folder (default: built from the PyPI wheel here)")
    ap.add_argument("--small", action="store_true", help="tiny sizes (a smoke run: hidden 64, 2 layers, 2 steps)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--new_tokens", type=int, default=128)
    args = ap.parse_args(argv)
    which = [w for w in args.which.split(",") if w]
    unknown = [w for w in which if w not in CHECKS]
    if unknown:
        ap.error(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    if args.small:
        args.hidden, args.layers, args.steps, args.new_tokens = 64, 2, 2, 24
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    # import what every check needs first: a missing package fails here, named, before any work
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import medadapt.config  # noqa: F401  (pydantic)
    import medadapt.delta  # noqa: F401
    import medadapt.serve.engine  # noqa: F401
    import trainers.common  # noqa: F401
    import trainers.cpt  # noqa: F401
    import trainers.msft  # noqa: F401
    import trainers.sft  # noqa: F401

    print(versions(), flush=True)
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("RESULT cuda=0 (no CUDA device: nothing measured; `--device cpu --small` runs the CPU-capable checks)")
        for name in which:
            print(result(name, ok=0, error="no_cuda"), flush=True)
        return 1
    if args.device == "cuda":
        print(f"RESULT cuda=1 gpu={torch.cuda.get_device_name(0).replace(' ', '_')}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    t_all = time.perf_counter()
    from medadapt.r1_tokenizer import tiny_r1_model

    model = str(tiny_r1_model(work / "model", tokenizer_dir(args.tokenizer), hidden=args.hidden, layers=args.layers,
                              heads=max(2, args.hidden // 64), kv_heads=max(1, args.hidden // 256),
                              dtype="bfloat16" if args.device == "cuda" else "float32"))
    msft_run = None
    for name in which:
        t0 = time.perf_counter()
        try:
            if name == "qlora":
                line = check_qlora(model, work, args.device, args.steps)
            elif name == "seed_cpt":
                line = check_seed_cpt(model, work, args.device, args.steps)
            elif name == "msft":
                line, msft_run = check_msft(model, work, args.device, args.steps)
            elif name == "delta":
                line = check_delta(model, msft_run, args.device, min(args.new_tokens, 32))
            elif name == "decode":
                line = check_decode(model, args.device, args.new_tokens, max(4, args.new_tokens // 4))
            elif name == "packing":
                line = check_packing(model, args.device, args.steps, 128 if args.small else 1024)
            else:
                line = check_lancedb(model, work, args.device)
        except Exception as e:  # noqa: BLE001 - report it and go on to the next check
            traceback.print_exc()
            line = failure(name, e)
        print(f"{line} {name}_check_s={time.perf_counter() - t0:.1f}", flush=True)
    print(f"RESULT gpu_check_wall_s={time.perf_counter() - t_all:.1f} device={args.device}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
