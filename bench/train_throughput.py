"""Continual-pretraining throughput: packed blocks vs one padded example per snippet (the seed's setup).

Same snippets (MedRAG textbook chunks from the data dir), same model, same LoRA, same number of optimizer steps and
rows per batch. Unpacked batches are padded to their longest row. Reports useful (non-pad) tokens per second and the
non-pad fraction of every batch; the last line is ``RESULT tokens_speedup=<x> nonpad=<fraction>``.

Run: ``python bench/train_throughput.py [--tiny] [--steps 6] [--batch 4] [--max_length 512]``
(default model: the offline SmolLM2-135M-Instruct; ``--tiny``: a 2-layer random Llama with its tokenizer).

``--ddp``: instead, the real CPT trainer (``python -m trainers.cpt``) in one process and under ``accelerate launch``
with 2 processes (configs/accelerate/ddp.yaml; gloo on CPU), the same global batch (``--batch`` rows per step: one
process with all of them, each of the two with half) and ``--steps`` optimizer steps; tokens/s is the trainer's own
(``log.jsonl``: input tokens of all ranks / training seconds). On a 2-core machine the point is correctness (the same
steps and loss), not speed. Last line: ``RESULT ddp_tokens_ratio=<2 processes / 1> tokens_per_s_1p=…
tokens_per_s_2p=…``.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny random model instead of SmolLM2-135M")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per mode (after 1 warm-up step)")
    p.add_argument("--batch", type=int, default=4, help="rows per batch (packed blocks or snippets)")
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddp", action="store_true", help="1 process vs accelerate launch with 2 processes (the trainer)")
    return p


def trainer_tokens_per_s(model: str, processes: int, steps: int, batch: int, max_length: int, out: Path) -> dict:
    """Run the CPT trainer; its last log line's tokens/s and loss, and the run's wall time."""
    import json
    import subprocess

    from medadapt.config import REPO_ROOT
    from medadapt.jobs.launcher import Launcher

    launcher = Launcher("accelerate", processes) if processes > 1 else Launcher()
    plain = [sys.executable, "-m", "trainers.cpt", "--config", "configs/offline/cpt.yaml",
             "--output_dir", str(out), f"base_model={model}", f"max_steps={steps}",
             f"per_device_batch_size={batch // processes}", "gradient_accumulation_steps=1",
             f"max_length={max_length}", "eval_fraction=0", "save_steps=100000", "report_to=none",
             f"max_samples={batch * steps * 4}"]
    argv = launcher.wrap(plain)
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes))})
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{launcher.command(plain)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    last = [x for x in lines if x.get("tokens_per_s")][-1]
    print(f"{processes} process(es): {last['step']} steps, {last['tokens_per_s']:.0f} tokens/s, "
          f"loss {last['loss']:.4f}, wall {wall:.0f} s  ({launcher.command(plain)[:100]}…)")
    return {"tokens_per_s": last["tokens_per_s"], "loss": last["loss"], "steps": last["step"]}


def ddp_main(args) -> int:
    import tempfile

    from medadapt.config import load_config
    from medadapt.models import base_model_path

    path = base_model_path(load_config("offline"))
    tmp = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    if args.tiny:
        path = tiny_model(path, tmp / "tiny")
    one = trainer_tokens_per_s(path, 1, args.steps, args.batch, args.max_length, tmp / "one")
    two = trainer_tokens_per_s(path, 2, args.steps, args.batch, args.max_length, tmp / "two")
    print(f"RESULT ddp_tokens_ratio={two['tokens_per_s'] / one['tokens_per_s']:.2f} "
          f"tokens_per_s_1p={one['tokens_per_s']:.0f} tokens_per_s_2p={two['tokens_per_s']:.0f} "
          f"steps={one['steps']}/{two['steps']} loss_1p={one['loss']:.4f} loss_2p={two['loss']:.4f}")
    return 0


def tiny_model(path: str, out: Path) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def lora_model(path: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def step(model, opt, batch: dict) -> float:
    """Seconds for one forward + backward + optimizer step."""
    start = time.perf_counter()
    model(**batch).loss.backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.ddp:
        return ddp_main(args)
    import tempfile

    import torch

    from medadapt.config import load_config
    from medadapt.data.corpus import iter_corpus
    from medadapt.models import base_model_path, load_tokenizer
    from trainers.formatting import PadCollator, cpt_examples

    torch.manual_seed(args.seed)
    cfg = load_config("offline")
    path = base_model_path(cfg)
    if args.tiny:
        path = tiny_model(path, Path(tempfile.mkdtemp(prefix="tiny-llama-")))
    tok = load_tokenizer(path)
    texts = [d.contents for d in iter_corpus(cfg)]
    random.Random(args.seed).shuffle(texts)
    n_rows = args.batch * (args.steps + 1)
    collate = PadCollator(tok.pad_token_id)
    # the same snippets feed both modes: as many as the packed mode needs for its blocks
    packed_rows = cpt_examples(tok, texts[: n_rows * 4], args.max_length, packing=True)[:n_rows]
    used = texts[: n_rows * 4]
    unpacked_rows = cpt_examples(tok, used, args.max_length, packing=False)
    unpacked_batches = [collate(unpacked_rows[i:i + args.batch]) for i in range(0, n_rows, args.batch)]
    packed_batches = [collate(packed_rows[i:i + args.batch]) for i in range(0, n_rows, args.batch)]
    print(f"model {path}; {len(used)} snippets; {args.steps} steps x {args.batch} rows; max_length {args.max_length}")

    # the two modes alternate step by step, so load from other processes hits both alike; step 0 is a warm-up
    modes = {"unpacked": (unpacked_batches, *lora_model(path)), "packed": (packed_batches, *lora_model(path))}
    secs = {m: 0.0 for m in modes}
    useful = {m: 0 for m in modes}
    total = {m: 0 for m in modes}
    for i in range(args.steps + 1):
        order = list(modes) if i % 2 else list(modes)[::-1]  # alternate which mode goes first
        for m in order:
            batches, model, opt = modes[m]
            t = step(model, opt, batches[i])
            if i:
                secs[m] += t
                useful[m] += int(batches[i]["attention_mask"].sum())
                total[m] += batches[i]["attention_mask"].numel()
    results = {}
    for m in modes:
        results[m] = (useful[m] / secs[m], useful[m] / total[m])
        print(f"{m:9s} {useful[m]:7d} useful tokens / {total[m]:7d} in {secs[m]:7.2f} s: "
              f"{results[m][0]:8.1f} tok/s, non-pad {results[m][1]:.3f}")
    speedup = results["packed"][0] / results["unpacked"][0]
    print(f"packed vs unpacked useful tokens/s: {speedup:.2f}x (unpacked non-pad {results['unpacked'][1]:.3f})")
    print(f"RESULT tokens_speedup={speedup:.2f} nonpad={results['packed'][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
