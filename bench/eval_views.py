"""Cost of the extra scoring views: every loglik view in one pass over each prompt vs letter scoring alone.

Run: ``python bench/eval_views.py [--n 25] [--batch_size 8] [--dtype bfloat16] [--rounds 2]``

On the same items (``n`` per benchmark, the offline SmolLM2, chat prompts) it times (a) today's letter scoring
(:func:`eval.loglik.score_requests`, one row per item) and (b) what a loglik run now computes
(:func:`eval.loglik.score_multi`: letters and option texts from one pass over each prompt, plus the three
content-free prompts per benchmark that calibration needs), alternating the two over ``rounds`` so machine load hits
both alike, and checks (b)'s letter scores equal (a)'s. Last line: ``RESULT views=3 extra_cost_ratio=<b/a> ...``.
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch

    from medadapt.config import load_config
    from medadapt.data.benchmarks import evaluated_items
    from medadapt.models import load_model, load_tokenizer
    from eval.calibration import content_free_items
    from eval.loglik import encode, encode_multi, score_multi, score_requests
    from eval.prompting import continuations, loglik_prompt
    from eval.variants import model_folder
    from eval.views import LOGLIK_VIEWS

    cfg = load_config("offline")
    path = model_folder(cfg)
    tok, model = load_tokenizer(path), load_model(path, args.dtype, device="cpu")
    render = lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    samples = evaluated_items(cfg, n=args.n)
    items = [it for v in samples.values() for it in v]
    free = [cf for v in samples.values() for cf in content_free_items(v[0])]
    letter = [encode(tok, loglik_prompt(it, "chat", render), continuations(it, "letter"), False, 2048) for it in items]
    multi = [encode_multi(tok, loglik_prompt(it, "chat", render), {t: continuations(it, t) for t in ("letter", "text")},
                          False, 2048) for it in free + items]
    text_tokens = sum(len(c) for r in multi for c in r.targets["text"])
    print(f"{len(items)} items (+{len(free)} content-free), {sum(len(r.context) for r in letter)} prompt tokens, "
          f"{text_tokens} option-text tokens, dtype {args.dtype}, {torch.get_num_threads()} threads")
    t_letter, t_views = [], []
    for r in range(args.rounds):
        for name in (("letter", "views") if r % 2 == 0 else ("views", "letter")):
            t0 = time.perf_counter()
            if name == "letter":
                a = score_requests(model, letter, args.batch_size, tok.pad_token_id)
                t_letter.append(time.perf_counter() - t0)
            else:
                b = score_multi(model, multi, args.batch_size, tok.pad_token_id)
                t_views.append(time.perf_counter() - t0)
            print(f"round {r + 1} {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    diff = max(abs(x - y) for s, m in zip(a, b[len(free):]) for x, y in zip(s, m["letter"]))
    ta, tb = sum(t_letter) / len(t_letter), sum(t_views) / len(t_views)
    print(f"letter only: {ta:.1f} s ({len(items) / ta:.2f} items/s); all loglik views: {tb:.1f} s "
          f"({len(items) / tb:.2f} items/s); max |letter logprob difference| {diff:.1e}")
    print(f"RESULT views={len(LOGLIK_VIEWS)} extra_cost_ratio={tb / ta:.2f} letter_s={ta:.1f} views_s={tb:.1f} "
          f"items={len(items)} max_abs_diff={diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
