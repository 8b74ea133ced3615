"""Cost of the scoring views: letter scoring alone vs every loglik view, without and with circular evaluation.

Run: ``python bench/eval_views.py [--n 25] [--batch_size 8] [--dtype bfloat16] [--rounds 2]``

On the same items (``n`` per benchmark, the offline SmolLM2, chat prompts) it times

- (a) letter scoring alone (:func:`eval.loglik.score_requests`, one row per item: the baseline);
- (b) the non-circular views as a run computes them (:func:`eval.loglik.score_branches` on one branch per item,
  letters and option texts from one pass over the prompt, plus the 24 content-free copies per benchmark as one
  shared-prefix row): letter, content-free and batch calibration, text_norm, text_sum;
- (c) every loglik view (what ``python -m eval run --mode loglik`` computes): (b) with each item under every cyclic
  rotation of its options in the same row, the rotations sharing the prompt's longest common token prefix;

alternating the three over ``rounds`` so machine load hits them alike, and checks that (c)'s rotation-0 letter scores
equal (a)'s. Last line: ``RESULT views=<n> extra_cost_ratio=<c/a> circular_cost_ratio=<c/a> noncircular_cost_ratio=
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
    times: dict[str, list[float]] = {"letter": [], "views": [], "circular": []}
    out = {}
    names = list(times)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            t0 = time.perf_counter()
            if name == "letter":
                out[name] = score_requests(model, letter, args.batch_size, tok.pad_token_id)
            else:
                out[name] = score_branches(model, plain if name == "views" else circ, args.batch_size,
                                           tok.pad_token_id)
            times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    diff = max(abs(x - y) for s, m in zip(out["letter"], out["circular"][len(free):]) for x, y in zip(s, m[0]["letter"]))
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    ta = mean["letter"]
    print(f"letter only: {ta:.1f} s ({len(items) / ta:.2f} items/s); non-circular views: {mean['views']:.1f} s; "
          f"all views with circular: {mean['circular']:.1f} s; max |letter logprob difference| {diff:.1e}")
    print(f"RESULT views={len(LOGLIK_VIEWS)} extra_cost_ratio={mean['circular'] / ta:.2f} "
          f"circular_cost_ratio={mean['circular'] / ta:.2f} noncircular_cost_ratio={mean['views'] / ta:.2f} "
          f"letter_s={ta:.1f} views_s={mean['views']:.1f} circular_s={mean['circular']:.1f} items={len(items)} "
          f"shared_prefix_share={shared / prompt:.2f} max_abs_diff={diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
