"""Load test: N concurrent gradio_client users x M questions against the app on loopback.

Run: ``python bench/load.py [--users 8] [--questions 5] [--model tiny|offline] [--max-new-tokens 16]``

``tiny`` builds a 2-layer random model with the SmolLM2 tokenizer (fast, tests the serving path, not the model);
``offline`` uses the real SmolLM2. Every request must come back answered (four columns rendered, none lost);
latency p50/p95 is per request, queueing included. Last line: ``RESULT answered=<ok>/<total> p50_s=<x> p95_s=<x>``.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    "What is the first-line treatment for anaphylaxis?",
    "Which vitamin deficiency causes megaloblastic anemia with neurological signs?",
    "What is the mechanism of action of metformin?",
    "Most common cause of community-acquired pneumonia in adults?",
    "What does a patent foramen ovale allow?",
]


def ask_data(question: str, max_new_tokens: int = 16, defaults=None) -> list:
    """One Compare event's data: top-3 snippets, the default adapters, ``max_new_tokens``, the other generation
    settings ``defaults``' (``GenSettings()``: greedy, no penalty, no thinking budget)."""
    from medadapt.ui.compare_controller import compare_data

    return compare_data(question, defaults, max_new_tokens=max_new_tokens, top_k=3)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--questions", type=int, default=5)
    p.add_argument("--model", choices=["tiny", "offline"], default="tiny")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=600, help="seconds one request may take before it counts as lost")
    return p


def tiny_model(out: Path) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from medadapt.config import load_config
    from medadapt.models import base_model_path

    tok = AutoTokenizer.from_pretrained(base_model_path(load_config("offline")))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_demo(model: str, workdir: Path, concurrency: int) -> tuple[object, dict]:
    """The app's demo as the benches serve it: the offline profile (``tiny``: :func:`tiny_model`) with its runs and
    results under ``workdir``, the engine loaded before the clock starts, queued with ``concurrency`` workers; and
    the profile's ``launch`` options."""
    from medadapt.config import load_config
    from medadapt.state import AppState
    from medadapt.ui.common import launch_options
    from medadapt.ui.interface import build_demo

    over = {"paths": {"runs_dir": str(workdir / "runs"), "results_dir": str(workdir / "results")}}
    if model == "tiny":
        over["model"] = {"name_or_path": tiny_model(workdir / "tiny"), "display_name": "tiny-random"}
    state = AppState.create(load_config("offline", over))
    state.pipeline.engine  # load before the clock starts
    demo = build_demo(state)
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo, launch_options(state.cfg, demo)


def start_app(model: str, tmp: Path) -> tuple[str, object]:
    demo, options = bench_demo(model, tmp, 1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **options)
    return f"http://127.0.0.1:{port}/", demo


def user(url: str, n_questions: int, max_new: int, timeout: float, uid: int,
         strict: bool = False) -> list[tuple[bool, float, list[str]]]:
    """One gradio_client user asking ``n_questions`` in turn: ``(answered, seconds, the four answers)`` each.

    Answered: every column carries the disclaimer and the first column its token count; ``strict`` (a real model
    with its adapters) also wants every column's token count and no column's warning.
    """
    from gradio_client import Client

    from medadapt.config import GenSettings, load_config
    from medadapt.pipeline import DISCLAIMER

    profile = load_config("offline").generation  # greedy, with the page's repetition penalty and thinking budget
    page = GenSettings(repetition_penalty=profile.repetition_penalty, think_budget=profile.think_budget)
    client = Client(url, verbose=False)
    out = []
    for i in range(n_questions):
        q = QUESTIONS[(uid + i) % len(QUESTIONS)]
        t0 = time.perf_counter()
        try:
            res = client.submit(*ask_data(q, max_new, page), api_name="/compare").result(timeout=timeout)
            answers = [res[k * 4] for k in range(4)]
            counted = range(4) if strict else range(1)
            ok = (all(DISCLAIMER in a for a in answers) and all("tokens" in res[k * 4 + 2] for k in counted)
                  and not (strict and any("⚠️" in a for a in answers)))
            if not ok:
                print(f"user {uid} q{i}: not answered: {[a[:120] for a in answers]}", file=sys.stderr)
        except Exception as e:  # a lost or failed request counts as not answered
            print(f"user {uid} q{i}: {type(e).__name__}: {e}", file=sys.stderr)
            ok, answers = False, []
        out.append((ok, time.perf_counter() - t0, answers))
        print(f"  user {uid} q{i}: {'ok' if ok else 'FAILED'} in {out[-1][1]:.1f}s", flush=True)
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url, demo = start_app(args.model, Path(tmp))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.users) as pool:
            futures = [pool.submit(user, url, args.questions, args.max_new_tokens, args.timeout, u)
                       for u in range(args.users)]
            results = [r for f in futures for r in f.result()]
        wall = time.perf_counter() - t0
        demo.close()
    ok = sum(r[0] for r in results)
    lat = [r[1] for r in results]
    print(f"users={args.users} questions/user={args.questions} model={args.model} wall={wall:.1f}s")
    print(f"answered {ok}/{len(results)}; latency p50 {percentile(lat, 0.5):.2f}s p95 {percentile(lat, 0.95):.2f}s "
          f"max {max(lat):.2f}s; throughput {len(results) / wall:.2f} req/s")
    print(f"RESULT answered={ok}/{len(results)} p50_s={percentile(lat, 0.5):.2f} p95_s={percentile(lat, 0.95):.2f}")


if __name__ == "__main__":
    main()
