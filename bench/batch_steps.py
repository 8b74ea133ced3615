"""Continuous batching in the engine alone: the real offline model, N users x 4 rows (base, base, SFT, MSFT) started
together, every row decoding ``--max-new-tokens`` (EOS off); seconds per decode step and the throughput against
the users one after another.

Run: ``nice -n 15 python bench/batch_steps.py [--users 1,2,4,8] [--max-new-tokens 32] [--runs-dir DIR]``.
Last line: ``RESULT rows=<4N> step_s_1user=<s> step_s_<N>users=<s> throughput_ratio=<N*t1/tN>``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTION = [{"role": "user", "content": "What is the mechanism of action of metformin in type 2 diabetes?"}]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", default="1,2,4,8")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--runs-dir", default=None, help="runs dir holding the sft/msft adapters")
    return p


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    from medadapt.config import load_config
    from medadapt.serve.engine import Engine
    from medadapt.serve.api import BASE, GenSettings

    cfg = load_config("offline", {"paths": {"runs_dir": args.runs_dir}} if args.runs_dir else None)
    engine = Engine.from_config(cfg)
    engine.eos_ids = set()  # every row decodes max_new_tokens
    names = [BASE, BASE] + [k for k in ("sft", "msft") if engine.has_adapter(k)]
    settings = GenSettings(max_new_tokens=args.max_new_tokens)
    list(engine.stream([(QUESTION, n) for n in names], GenSettings(max_new_tokens=4)))  # warm-up
    wall: dict[int, float] = {}
    for users in [int(u) for u in args.users.split(",")]:
        steps = engine._batcher.steps
        t0 = time.perf_counter()
        list(engine.stream([(QUESTION, n) for n in names] * users, settings))
        wall[users] = time.perf_counter() - t0
        per_step = wall[users] / max(1, engine._batcher.steps - steps)
        print(f"users={users} rows={len(names) * users} wall={wall[users]:.2f}s step={per_step:.3f}s "
              f"load={os.getloadavg()[0]:.1f}", flush=True)
    n = max(wall)
    one = wall.get(1, float("nan"))
    print(f"RESULT rows={len(names) * n} step_s_1user={one / args.max_new_tokens:.3f} "
          f"step_s_{n}users={wall[n] / args.max_new_tokens:.3f} throughput_ratio={n * one / wall[n]:.2f}")


if __name__ == "__main__":
    main()
