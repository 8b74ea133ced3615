"""Abuse bench: honest users' latency while one hostile client floods the public app with 1 MB questions.

Run: ``python bench/abuse.py [--users 4] [--questions 3] [--model offline|tiny] [--max-new-tokens 16]
[--hostile-workers 4]``

Starts the real app in public mode on loopback (offline profile, as ``bench/load.py`` does), then, in one process:

1. no hostile client: ``--users`` honest users (each on its own 127.0.0.x address) ask ``--questions`` normal
   questions one after another; their p95 latency (join to answer) is the baseline;
2. the same with a hostile client (a separate process on its own address, ``--hostile-workers`` threads) that never
   reads its results: one thread keeps a 1 MB question in line on its own session, retrying as soon as Retry-After
   allows (the most the limits let one address have); the others flood blindly, as fast as they are answered, with
   1 MB questions and cheap events under fresh session ids. Honest users use fresh addresses, so both phases start
   with a full ration.

Goal (issue 17): every honest question answered, honest p95 <= 2x the baseline p95. Last line:
``RESULT honest_answered=<ok>/<total> honest_p95_s=<s> hostile_rejected=<n> baseline_p95_s=<s> p95_ratio=<x>``
(phase 2, then phase 1's p95 and the ratio).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.load import QUESTIONS, percentile, start_app  # noqa: E402
from bench.queue_client import QueueClient, fn_index  # noqa: E402

HOSTILE_ADDRESS = "127.0.0.66"
MB_QUESTION = "What causes anemia? " * 52_429  # 1 MiB of text


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--questions", type=int, default=3, help="questions per honest user per phase")
    p.add_argument("--model", choices=["tiny", "offline"], default="offline")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--hostile-workers", type=int, default=4)
    p.add_argument("--timeout", type=float, default=300, help="seconds one honest question may take")
    p.add_argument("--hostile", nargs=4, metavar=("URL", "COMPARE_FN", "CHEAP_FN", "STOP_FILE"), help=argparse.SUPPRESS)
    return p


def honest_phase(url: str, fn: int, users: int, questions: int, max_new: int, first_address: int,
                 timeout: float) -> list[tuple[bool, float]]:
    from medadapt.pipeline import DISCLAIMER

    def user(u: int) -> list[tuple[bool, float]]:
        client = QueueClient(url, f"127.0.0.{first_address + u}", timeout=timeout)
        out = []
        for i in range(questions):
            q = QUESTIONS[(u + i) % len(QUESTIONS)]
            try:
                r = client.call(fn, [q, max_new, 0.0, 1.0, 3, False, "", "", 1.0, 0])
                ok = r.output is not None and DISCLAIMER in r.output[0] and "tokens" in r.output[2]
                if not ok:
                    print(f"user {u} q{i}: {r.status} {r.error[:200]}", file=sys.stderr)
            except Exception as e:  # a lost request counts as not answered
                print(f"user {u} q{i}: {type(e).__name__}: {e}", file=sys.stderr)
                ok, r = False, None
            out.append((ok, r.seconds if r else timeout))
        client.close()
        return out

    with ThreadPoolExecutor(users) as pool:
        return [r for rs in pool.map(user, range(users)) for r in rs]


def hostile(url: str, compare_fn: int, cheap_fn: int, stop_file: str, workers: int) -> None:
    """The hostile client (its own process): floods until ``stop_file`` exists, then prints its tallies as JSON."""
    import httpx

    big = json.dumps({"data": [MB_QUESTION, 16, 0.0, 1.0, 3, False, "", "", 1.0, 0], "fn_index": compare_fn,
                      "session_hash": "SESSION", "trigger_id": None}).encode()
    cheap = json.dumps({"data": [], "fn_index": cheap_fn, "session_hash": "SESSION", "trigger_id": None}).encode()
    statuses: Counter = Counter()
    lock = threading.Lock()
    started = time.perf_counter()

    def worker(w: int) -> None:
        """Worker 0 keeps one 1 MB question in line on its own session, waiting out each Retry-After (the most the
        limits allow); the others flood blindly: 1 MB questions and cheap events, each under a fresh session id."""
        http = httpx.Client(transport=httpx.HTTPTransport(local_address=HOSTILE_ADDRESS), timeout=60)
        n = 0
        if w > 0:
            time.sleep(1.0)  # worker 0 opens its session before the flood uses up the address's new-session ration
        while not os.path.exists(stop_file):
            kind = "big" if w == 0 or n % 2 == 0 else "cheap"
            session = f"hostile-{w}" if w == 0 else uuid.uuid4().hex[:12]
            body = (big if kind == "big" else cheap).replace(b"SESSION", session.encode(), 1)
            try:
                r = http.post(f"{url}/gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
                code, retry = r.status_code, float(r.headers.get("retry-after", 0))
            except httpx.HTTPError as e:
                code, retry = type(e).__name__, 1.0
            with lock:
                statuses[f"{kind}{'-paced' if w == 0 else ''}:{code}"] += 1
            if w == 0:
                time.sleep(min(retry, 2.0) if code != 200 else 0.5)
            n += 1
        http.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"statuses": dict(statuses), "seconds": time.perf_counter() - started}))


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if args.hostile:
        url, compare_fn, cheap_fn, stop_file = args.hostile
        hostile(url, int(compare_fn), int(cheap_fn), stop_file, args.hostile_workers)
        return
    os.environ["MEDADAPT_PUBLIC"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        url, demo = start_app(args.model, Path(tmp))
        url = url.rstrip("/")
        fn, cheap = fn_index(demo, "compare"), fn_index(demo, "refresh_adapters")
        probe = QueueClient(url, "127.0.0.10").call(fn, [QUESTIONS[0], args.max_new_tokens, 0.0, 1.0, 3, False, "", "",
                                                         1.0, 0])  # first-call costs, not counted
        columns = [v for k, v in enumerate(("base", "rag", "sft", "msft"))
                   if probe.output and "tokens" in probe.output[4 * k + 2]]
        t0 = time.perf_counter()
        base = honest_phase(url, fn, args.users, args.questions, args.max_new_tokens, 11, args.timeout)
        base_wall = time.perf_counter() - t0

        stop = Path(tmp) / "stop"
        proc = subprocess.Popen([sys.executable, __file__, "--hostile-workers", str(args.hostile_workers),
                                 "--hostile", url, str(fn), str(cheap), str(stop)], stdout=subprocess.PIPE, text=True)
        time.sleep(3.0)  # the flood is under way before the honest users start
        t0 = time.perf_counter()
        attacked = honest_phase(url, fn, args.users, args.questions, args.max_new_tokens, 21, args.timeout)
        attack_wall = time.perf_counter() - t0
        stop.touch()
        tally = json.loads(proc.communicate(timeout=120)[0].strip().splitlines()[-1])
        demo.close()

    def summary(results):
        ok = sum(r[0] for r in results)
        lat = [r[1] for r in results]
        return ok, len(results), percentile(lat, 0.5), percentile(lat, 0.95), max(lat)

    statuses = tally["statuses"]
    rejected = sum(n for k, n in statuses.items() if not k.endswith(":200"))
    sent = sum(statuses.values())
    b_ok, b_n, b_p50, b_p95, b_max = summary(base)
    a_ok, a_n, a_p50, a_p95, a_max = summary(attacked)
    print(f"model={args.model} max_new_tokens={args.max_new_tokens} users={args.users} questions/user={args.questions}; "
          f"columns generating: {', '.join(columns) or 'none'} (warm-up {probe.seconds:.2f}s)")
    print(f"no hostile:   answered {b_ok}/{b_n}; p50 {b_p50:.2f}s p95 {b_p95:.2f}s max {b_max:.2f}s; wall {base_wall:.1f}s")
    print(f"with hostile: answered {a_ok}/{a_n}; p50 {a_p50:.2f}s p95 {a_p95:.2f}s max {a_max:.2f}s; wall {attack_wall:.1f}s")
    print(f"hostile: {sent} joins in {tally['seconds']:.1f}s ({sent / tally['seconds']:.0f}/s), rejected {rejected}; "
          f"by kind:status {json.dumps(statuses, sort_keys=True)}")
    print(f"p95 ratio (hostile / none): {a_p95 / b_p95:.2f} (goal <= 2)")
    print(f"RESULT honest_answered={a_ok}/{a_n} honest_p95_s={a_p95:.2f} hostile_rejected={rejected} "
          f"baseline_p95_s={b_p95:.2f} p95_ratio={a_p95 / b_p95:.2f}")


if __name__ == "__main__":
    main()
