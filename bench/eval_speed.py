"""Log-likelihood scoring speed: batched (length-sorted, left-padded, logits_to_keep) vs one item at a time.

Run: ``python bench/eval_speed.py [--n 200] [--single 40] [--batch_size 8] [--dtype float32]``

Scores ``n`` items per benchmark (4 benchmarks: 800 items at n=200) with the offline SmolLM2 and the chat prompt,
letter target (the eval's default), batched; then the first ``--single`` of them one item per forward (0 = all) and
extrapolates per item. Checks both give the same log-probabilities. Last line: ``RESULT batch_speedup=<x> ...``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="items per benchmark (default %(default)s)")
    p.add_argument("--single", type=int, default=40, help="items timed one at a time (0 = all; default %(default)s)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--target", default="letter", choices=["letter", "text"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch

    from medadapt.config import load_config
    from medadapt.data.benchmarks import evaluated_items
    from medadapt.models import load_model, load_tokenizer
    from eval.loglik import build_rows, encode, score_requests
    from eval.prompting import continuations, loglik_prompt
    from eval.variants import model_folder

    cfg = load_config("offline")
    path = model_folder(cfg)
    tok, model = load_tokenizer(path), load_model(path, args.dtype, device="cpu")
    render = lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    items = [it for v in evaluated_items(cfg, n=args.n).values() for it in v]
    reqs = [encode(tok, loglik_prompt(it, "chat", render), continuations(it, args.target), False, 2048) for it in items]
    tokens = sum(len(r.inputs) for r in build_rows(reqs))
    print(f"{len(items)} items, {len(build_rows(reqs))} rows, {tokens} input tokens, dtype {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    batched = score_requests(model, reqs, args.batch_size, tok.pad_token_id)
    t_batched = time.perf_counter() - t0
    # one at a time on a spread subset (every k-th item, so all benchmarks and lengths are represented)
    k = max(1, len(reqs) // args.single) if args.single else 1
    subset = list(range(0, len(reqs), k))[: args.single or None]
    t0 = time.perf_counter()
    single = score_requests(model, [reqs[i] for i in subset], 1, tok.pad_token_id)
    t_single = time.perf_counter() - t0
    diff = max(abs(a - b) for i, s in zip(subset, single) for a, b in zip(batched[i], s))
    sub_tokens = sum(len(r.inputs) for r in build_rows([reqs[i] for i in subset]))
    per_b = t_batched / len(reqs)
    per_s = t_single / len(subset) * (tokens / len(reqs)) / (sub_tokens / len(subset))  # length-adjusted
    print(f"batched (bs={args.batch_size}): {t_batched:.1f} s for {len(reqs)} items = {per_b * 1000:.0f} ms/item, "
          f"{tokens / t_batched:.0f} tokens/s")
    print(f"one at a time: {t_single:.1f} s for {len(subset)} items ({sub_tokens} tokens) = "
          f"{t_single / len(subset) * 1000:.0f} ms/item; length-adjusted to the full set {per_s * 1000:.0f} ms/item, "
          f"so {per_s * len(reqs):.0f} s for all {len(reqs)} items (extrapolated)")
    print(f"max |logprob difference| batched vs single: {diff:.2e}")
    print(f"RESULT batch_speedup={per_s / per_b:.2f} batched_items_per_s={1 / per_b:.2f} "
          f"single_items_per_s={1 / per_s:.2f} items={len(reqs)} max_abs_diff={diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
