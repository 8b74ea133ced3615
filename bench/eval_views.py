"""Cost of the scoring views: letter scoring alone vs every loglik view, without and with circular evaluation.

Run: ``python bench/eval_views.py [--n 25] [--batch_size 8] [--dtype bfloat16] [--rounds 2]``

On the same items (``n`` per benchmark, the offline SmolLM2, chat prompts) it times

- (a) letter scoring alone (:func:`eval.loglik.score_requests`, one row per item: the baseline);
- (b) the non-circular views as a run computes them (:func:`eval.loglik.score_branches` on one branch per item,
  letters and option texts from one pass over the prompt, plus the 24 content-free copies per benchmark as one
  shared-prefix row): letter, content-free and batch calibration, text_norm, text_sum;
- (c) every loglik view (what ``python -m eval run --mode loglik`` computes): (b) with each item under every cyclic
  rotation of its options in the same row, the rotations sharing the prompt's longest common token prefix;
- the content-free rows alone (a fixed cost per benchmark and run), so the ratios at the eval's n = 200 per benchmark
  follow from the measured per-item costs;

alternating the three over ``rounds`` so machine load hits them alike, and checks that (c)'s rotation-0 letter scores
equal (a)'s. Each scoring is timed twice: wall time, and the process's CPU time (``time.process_time``), which on a
shared box with ``--threads 1`` measures the work itself, not the other jobs' load; the ratios use the CPU time. Last line: ``RESULT views=<n> extra_cost_ratio=<c/a> circular_cost_ratio=<c/a> noncircular_cost_ratio=
<b/a> ...`` (``extra_cost_ratio``: all loglik views over letter only, as the issue defines it; the goal on the
non-circular views is ``noncircular_cost_ratio``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=25, help="items per benchmark (default %(default)s)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; 1 is steadier on a "
                   "shared box, where spinning OpenMP threads inflate every time)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from medadapt.config import load_config
    from medadapt.data.benchmarks import evaluated_items
    from medadapt.models import load_model, load_tokenizer
    from eval.evaluate import content_free_request, loglik_requests
    from eval.loglik import encode, score_branches, score_requests
    from eval.prompting import continuations, loglik_prompt
    from eval.variants import model_folder
    from eval.views import LOGLIK_VIEWS

    cfg = load_config("offline")
    path = model_folder(cfg)
    tok, model = load_tokenizer(path), load_model(path, args.dtype, device="cpu")
    render = lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    samples = evaluated_items(cfg, n=args.n)
    items = [it for v in samples.values() for it in v]
    free = [content_free_request(cfg, tok, v[0], rag=False) for v in samples.values()]
    letter = [encode(tok, loglik_prompt(it, "chat", render), continuations(it, "letter"), False, 2048) for it in items]
    plain = free + loglik_requests(cfg, tok, items, lambda it: None, circular=False)
    circ = free + loglik_requests(cfg, tok, items, lambda it: None, circular=True)
    prompt = sum(len(r.context) for r in letter)

    def tokens(reqs) -> int:
        return sum(len(r.prefix) + sum(len(b.suffix) + sum(len(c) - 1 for cs in b.targets.values() for c in cs)
                                       for b in r.branches) for r in reqs)

    shared = sum(len(r.prefix) for r in circ[len(free):])
    print(f"{len(items)} items (+{sum(len(r.branches) for r in free)} content-free copies), {prompt} prompt tokens; "
          f"row tokens: letter {prompt}, non-circular views {tokens(plain)}, all views {tokens(circ)} "
          f"(the rotations share {shared} prefix tokens = {100 * shared / prompt:.0f}% of the prompts); dtype "
          f"{args.dtype}, {torch.get_num_threads()} threads", flush=True)
    times: dict[str, list[float]] = {"letter": [], "views": [], "circular": [], "content_free": []}
    walls: dict[str, list[float]] = {k: [] for k in times}
    out = {}
    names = list(times)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "letter":
                out[name] = score_requests(model, letter, args.batch_size, tok.pad_token_id)
            elif name == "content_free":
                out[name] = score_branches(model, free, args.batch_size, tok.pad_token_id)
            else:
                out[name] = score_branches(model, plain if name == "views" else circ, args.batch_size,
                                           tok.pad_token_id)
            times[name].append(time.process_time() - c0)
            walls[name].append(time.perf_counter() - t0)
            print(f"round {r + 1} {name}: {times[name][-1]:.1f} s CPU, {walls[name][-1]:.1f} s wall", flush=True)
    diff = max(abs(x - y) for s, m in zip(out["letter"], out["circular"][len(free):]) for x, y in zip(s, m[0]["letter"]))
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    wall = {k: sum(v) / len(v) for k, v in walls.items()}
    ta = mean["letter"]
    print(f"CPU time: letter only {ta:.1f} s ({len(items) / ta:.2f} items/s); non-circular views {mean['views']:.1f} s; "
          f"all views with circular {mean['circular']:.1f} s; wall: {wall['letter']:.1f} / {wall['views']:.1f} / "
          f"{wall['circular']:.1f} s (ratios {wall['views'] / wall['letter']:.2f} / {wall['circular'] / wall['letter']:.2f}"
          f"); max |letter logprob difference| {diff:.1e}")
    # a run's cost = the content-free rows once per benchmark + a per-item part: the ratios at the eval's n = 200
    n_bench = len(samples)
    per_item = {k: (mean[k] - mean["content_free"]) / len(items) for k in ("views", "circular")}
    at200 = {k: (mean["content_free"] + per_item[k] * 200 * n_bench) / (ta / len(items) * 200 * n_bench)
             for k in per_item}
    print(f"content-free rows (24 per benchmark, once per run): {mean['content_free']:.1f} s CPU; per item: letter "
          f"{ta / len(items):.2f} s, non-circular views {per_item['views']:.2f} s, all views {per_item['circular']:.2f}"
          f" s; at n = 200 per benchmark: non-circular {at200['views']:.2f}x, all views {at200['circular']:.2f}x")
    print(f"RESULT views={len(LOGLIK_VIEWS)} extra_cost_ratio={mean['circular'] / ta:.2f} "
          f"circular_cost_ratio={mean['circular'] / ta:.2f} noncircular_cost_ratio={mean['views'] / ta:.2f} "
          f"noncircular_cost_ratio_n200={at200['views']:.2f} circular_cost_ratio_n200={at200['circular']:.2f} "
          f"letter_s={ta:.1f} views_s={mean['views']:.1f} circular_s={mean['circular']:.1f} items={len(items)} "
          f"shared_prefix_share={shared / prompt:.2f} max_abs_diff={diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
