"""Log-likelihood scoring speed: batched (length-sorted, left-padded, logits_to_keep) vs one item at a time.

Run: ``python bench/eval_speed.py [--n 200] [--single 40] [--batch_size 8] [--dtype float32] [--lmeval 200]
[--threads T] [--only all|batch|lmeval]``

Scores ``n`` items per benchmark (4 benchmarks: 800 items at n=200) with the offline SmolLM2 and the chat prompt,
letter target (the eval's default), batched; then the first ``--single`` of them one item per forward (0 = all) and
extrapolates per item. Checks both give the same log-probabilities.

Side by side with lm-evaluation-harness (``--lmeval N``, 0 = skip): the project's batched scorer and lm-eval's HFLM
score the same ``N`` MedMCQA items on the same prompt (``plain`` = lm-eval's ``medmcqa`` prompt, letter choices), the
same model, dtype, batch size and torch threads (``--threads``, default ``model.num_threads``); lm-eval's time is its
``simple_evaluate`` on a loaded model (tokenizing, its request grouping, the forwards, its metrics).
Last line: ``RESULT batch_speedup=<x> ... lmeval_ratio=<project items/s / lm-eval items/s> ...``.
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
    p.add_argument("--lmeval", type=int, default=200, help="MedMCQA items for the lm-eval side by side (0 = skip)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: model.num_threads)")
    p.add_argument("--only", default="all", choices=["all", "batch", "lmeval"], help="which comparison to run")
    return p


def lmeval_side_by_side(cfg, model, tok, n: int, batch_size: int, dtype: str) -> dict[str, float]:
    """Project batched scorer vs lm-eval HFLM on the same ``n`` MedMCQA items and prompts; items/s each."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from medadapt.data.benchmarks import evaluated_items
    from eval.lmeval import run_tasks, task_specs
    from eval.loglik import encode, score_requests
    from eval.prompting import continuations, plain_prompt

    items = evaluated_items(cfg, ["medmcqa"], n=n)["medmcqa"]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=cfg.model.max_context, device="cpu")
    manager = TaskManager()

    def project(its):
        reqs = [encode(tok, plain_prompt(it), continuations(it, "letter", "plain"), True, cfg.model.max_context)
                for it in its]
        return score_requests(model, reqs, batch_size, tok.pad_token_id)

    def harness(its):
        specs = task_specs(its, manager)
        return specs, run_tasks(lm, specs, manager, cfg.eval.seed)

    warm = items[:batch_size]  # one untimed batch each (first-call allocations), then the timed runs
    project(warm)
    harness(warm)
    t0 = time.perf_counter()
    mine = project(items)
    t_mine = time.perf_counter() - t0
    t0 = time.perf_counter()
    specs, logged = harness(items)
    t_lm = time.perf_counter() - t0
    by_id = {s["doc"]["_medadapt_id"]: [float(r[0]) for r in s["filtered_resps"]] for t in specs for s in logged[t]}
    diff = max(abs(a - b) for it, m in zip(items, mine) for a, b in zip(by_id[it.id], m))
    print(f"lm-eval side by side on {len(items)} MedMCQA items ({dtype}, bs={batch_size}): project {t_mine:.1f} s "
          f"({len(items) / t_mine:.2f} items/s), lm-eval HFLM {t_lm:.1f} s ({len(items) / t_lm:.2f} items/s); "
          f"max |logprob difference| {diff:.1e}")
    return {"project": len(items) / t_mine, "lmeval": len(items) / t_lm, "diff": diff, "n": len(items)}


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
    torch.set_num_threads(args.threads or cfg.model.num_threads or torch.get_num_threads())
    path = model_folder(cfg)
    tok, model = load_tokenizer(path), load_model(path, args.dtype, device="cpu")
    side = {}
    if args.lmeval and args.only in ("all", "lmeval"):
        side = lmeval_side_by_side(cfg, model, tok, args.lmeval, args.batch_size, args.dtype)
    lm_keys = (f" lmeval_ratio={side['project'] / side['lmeval']:.2f} project_items_per_s={side['project']:.2f} "
               f"lmeval_items_per_s={side['lmeval']:.2f} lmeval_items={side['n']} "
               f"lmeval_max_abs_diff={side['diff']:.1e} threads={torch.get_num_threads()}") if side else ""
    if args.only == "lmeval":
        print("RESULT" + lm_keys)
        return 0
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
          f"single_items_per_s={1 / per_s:.2f} items={len(reqs)} max_abs_diff={diff:.1e}" + lm_keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
