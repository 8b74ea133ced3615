"""Abuse bench: honest users' latency while one hostile client attacks the public app, one attack at a time.

Run: ``python bench/abuse.py [--users 4] [--questions 3] [--model offline|tiny] [--max-new-tokens 16]
[--hostile-workers 4] [--attacks disk,get_flood,big_bodies,bench_events,spoofed,held] [--costs]`` (``--attacks``
may add ``queue``, issue 17's flood)

Starts the real app in public mode on loopback in its own process (offline profile as ``app.py`` queues it, temp runs
dir, no built index, the repository's results files in its results dir; its temp dir is the bench's own, so any file
a visitor makes it write is seen). Then, in this process: ``--users`` honest users (each on its own 127.0.x.y
address, fresh for every phase) ask ``--questions`` questions one after another, first with no hostile client (the
baseline), then once during each attack, each attack a separate process on its own address(es):

- ``queue`` (issue 17's flood, not in the default list): 1 MB questions and cheap events under fresh session ids,
  one thread keeping a question in line;
- ``disk``: 5 MB multipart posts to ``/gradio_api/process_recording`` and ``/gradio_api/upload``, and joins whose data
  holds a file object with an http URL (to a listener of its own: any fetch is counted);
- ``get_flood``: keep-alive ``GET /config``, ``/`` and ``/gradio_api/info`` as fast as answered;
- ``big_bodies``: 60 MB bodies to ``/gradio_api/cancel`` and ``/gradio_api/reset`` (declared and streamed), 3 MB joins;
- ``bench_events``: the Benchmarks tab's events (a results file parsed, the results listed) as fast as accepted;
- ``spoofed``: Compare questions from 127.0.0.1, each "from" another address in ``X-Forwarded-For``;
- ``held``: up to 500 heartbeat streams held open from one address, refused ones retried.

``--costs`` first measures what each allowed route costs the app (its process's CPU per request), the figures
:mod:`medadapt.ui.routes` rations by. Goals (issue 32): every honest question answered; honest p95 within 1.5x of the
baseline p95 under every attack (the no-attack phase runs again before each attack, and its answers are pooled:
the box's load drifts); 0 MB temp-dir growth; app memory growth under 100 MB (from after the first no-attack phase).
Last line:
``RESULT honest_answered=<ok>/<total> honest_p95_ratio=<worst attack p95 / baseline p95> disk_growth_mb=<n>
rss_growth_mb=<n> hostile_rejected=<n>``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
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

from bench.load import QUESTIONS, ask_data, free_port, percentile  # noqa: E402
from bench.queue_client import QueueClient  # noqa: E402

ATTACKS = ("queue", "disk", "get_flood", "big_bodies", "bench_events", "spoofed", "held")
ISSUE_32 = ATTACKS[1:]  # the six attacks of issue 32 (the default); ``queue`` is issue 17's flood
MB_QUESTION = "What causes anemia? " * 52_429  # 1 MiB of text
HOSTILE = {a: f"127.0.0.{66 + i}" for i, a in enumerate(ATTACKS)} | {"spoofed": "127.0.0.1"}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--questions", type=int, default=3, help="questions per honest user per phase")
    p.add_argument("--model", choices=["tiny", "offline"], default="offline")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--hostile-workers", type=int, default=4)
    p.add_argument("--attacks", default=",".join(ISSUE_32), help=f"comma-separated, of {','.join(ATTACKS)}")
    p.add_argument("--costs", action="store_true", help="first measure each allowed route's cost")
    p.add_argument("--timeout", type=float, default=300, help="seconds one honest question may take")
    p.add_argument("--serve", nargs=2, metavar=("PORT", "WORKDIR"), help=argparse.SUPPRESS)
    p.add_argument("--hostile", nargs=4, metavar=("ATTACK", "URL", "FNS", "STOP_FILE"), help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------- the app (its own process)

def serve(port: int, workdir: Path, model: str) -> None:
    """The app as app.py runs it, in public mode, its temp dir under ``workdir``; blocks."""
    temp = workdir / "tmp"
    (temp / "gradio").mkdir(parents=True, exist_ok=True)
    os.environ.update(TMPDIR=str(temp), GRADIO_TEMP_DIR=str(temp / "gradio"), MEDADAPT_PUBLIC="1",
                      MEDADAPT_SETUP="off")
    tempfile.tempdir = None
    import app as entry
    from bench.load import bench_demo
    from medadapt.config import REPO_ROOT

    results = workdir / "results" / "offline"
    results.mkdir(parents=True, exist_ok=True)
    for f in (REPO_ROOT / "results" / "offline").glob("*.json"):  # the Benchmarks tab parses real 4 MB files
        shutil.copy(f, results / f.name)
    demo, options = bench_demo(model, workdir, entry.QUEUE_CONCURRENCY)
    demo.launch(server_name="127.0.0.1", server_port=port, quiet=True, **options)


def start_app(model: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(workdir / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, __file__, "--model", model, "--serve", str(port), str(workdir)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited: {(workdir / 'app.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/theme.css", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the app did not start in 600 s")


def fn_ids(url: str) -> dict[str, int]:
    """Event ids by API name, from the app's config."""
    config = _client("127.0.0.9").get(url + "/config").json()
    return {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024 ** 2


# ---------------------------------------------------------------- honest users

def honest_phase(url: str, fn: int, users: int, questions: int, max_new: int, subnet: int,
                 timeout: float) -> list[tuple[bool, float]]:
    from medadapt.pipeline import DISCLAIMER

    def user(u: int) -> list[tuple[bool, float]]:
        client = QueueClient(url, f"127.0.{subnet}.{11 + u}", timeout=timeout)
        out = []
        for i in range(questions):
            q = QUESTIONS[(u + i) % len(QUESTIONS)]
            try:
                r = client.call(fn, ask_data(q, max_new))
                ok = r.output is not None and DISCLAIMER in r.output[0] and "tokens" in r.output[2]
                if not ok:
                    print(f"  user {u} q{i}: {r.status} {r.error[:200]}", file=sys.stderr)
            except Exception as e:  # a lost request counts as not answered
                print(f"  user {u} q{i}: {type(e).__name__}: {e}", file=sys.stderr)
                ok, r = False, None
            out.append((ok, r.seconds if r else timeout))
        client.close()
        return out

    with ThreadPoolExecutor(users) as pool:
        return [r for rs in pool.map(user, range(users)) for r in rs]


# ---------------------------------------------------------------- hostile clients (their own process)

class Tally:
    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.lock = threading.Lock()

    def add(self, kind: str, code: object) -> None:
        with self.lock:
            self.counts[f"{kind}:{code}"] += 1


def _client(address: str, timeout: float = 30):
    import httpx

    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=timeout)


def _post(http, tally: Tally, kind: str, url: str, retry_cap: float = 0.0, **kw) -> None:
    """One request; a client that honours Retry-After waits (up to ``retry_cap``), the others go on at once."""
    import httpx

    try:
        r = http.post(url, **kw)
        tally.add(kind, r.status_code)
        if retry_cap and r.status_code in (429, 503):
            time.sleep(min(retry_cap, float(r.headers.get("retry-after", 1))))
    except httpx.HTTPError as e:
        tally.add(kind, type(e).__name__)


def attack_queue(url: str, fns: dict, stop: Path, workers: int, tally: Tally) -> None:
    big = {"data": ask_data(MB_QUESTION), "fn_index": fns["compare"], "trigger_id": None}
    cheap = {"data": [], "fn_index": fns["refresh_adapters"], "trigger_id": None}

    def worker(w: int) -> None:
        http, n = _client(HOSTILE["queue"]), 0
        while not stop.exists():
            body = big if w == 0 or n % 2 == 0 else cheap
            session = "hostile-0" if w == 0 else uuid.uuid4().hex[:12]
            _post(http, tally, "big" if body is big else "cheap", f"{url}/gradio_api/queue/join",
                  retry_cap=2.0 if w == 0 else 0.0, json={**body, "session_hash": session})
            n += 1
    _run(worker, workers)


def attack_disk(url: str, fns: dict, stop: Path, workers: int, tally: Tally) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    fetched = []

    class Listener(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            fetched.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\x89PNG\r\n\x1a\n" + b"0" * 1024)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    file_url = f"http://127.0.0.1:{server.server_address[1]}/x.png"
    boundary = "hostileboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"x.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + os.urandom(5 * 1024 * 1024) + f"\r\n--{boundary}--\r\n".encode()
    payload = {"path": file_url, "url": file_url, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}

    def worker(w: int) -> None:
        http, n = _client(HOSTILE["disk"]), 0
        while not stop.exists():
            if n % 3 == 2:
                _post(http, tally, "file-url-join", f"{url}/gradio_api/queue/join",
                      json={"data": ask_data(payload), "fn_index": fns["compare"],
                            "session_hash": uuid.uuid4().hex[:12], "trigger_id": None})
            else:
                route = ("process_recording", "upload")[n % 2]
                _post(http, tally, route, f"{url}/gradio_api/{route}", content=body,
                      headers={"content-type": f"multipart/form-data; boundary={boundary}"})
            n += 1
    _run(worker, workers)
    server.shutdown()
    tally.add("server-fetches-of-the-url", len(fetched))


def attack_get_flood(url: str, fns: dict, stop: Path, workers: int, tally: Tally) -> None:
    import httpx

    def worker(w: int) -> None:
        http, n = _client(HOSTILE["get_flood"]), 0  # keep-alive connection, as fast as answered
        while not stop.exists():
            route = ("/config", "/", "/gradio_api/info")[n % 3]
            try:
                tally.add(f"GET {route}", http.get(url + route).status_code)
            except httpx.HTTPError as e:
                tally.add(f"GET {route}", type(e).__name__)
            n += 1
    _run(worker, workers)


def attack_big_bodies(url: str, fns: dict, stop: Path, workers: int, tally: Tally) -> None:
    chunk = b" " * (1024 * 1024)

    def sixty_mb():
        for _ in range(60):
            if stop.exists():
                return
            yield chunk

    big_join = {"data": ask_data("x" * (3 * 1024 * 1024)), "fn_index": fns["compare"], "trigger_id": None}
    declared = b"[" + chunk * 60  # made once: the attacker's own copying is not what is measured

    def worker(w: int) -> None:
        http, n = _client(HOSTILE["big_bodies"], timeout=60), 0
        while not stop.exists():
            kind = n % 3
            if kind == 0:  # declared: 60 MB of JSON-ish padding
                _post(http, tally, "cancel-60MB-declared", f"{url}/gradio_api/cancel", content=declared,
                      headers={"content-type": "application/json"})
            elif kind == 1:  # streamed, no length
                _post(http, tally, "reset-60MB-streamed", f"{url}/gradio_api/reset", content=sixty_mb(),
                      headers={"content-type": "application/json"})
            else:
                _post(http, tally, "join-3MB", f"{url}/gradio_api/queue/join",
                      json={**big_join, "session_hash": uuid.uuid4().hex[:12]})
            n += 1
    _run(worker, workers)


def attack_bench_events(url: str, fns: dict, stop: Path, workers: int, tally: Tally) -> None:
    files = [f"offline/{p.name}" for p in sorted((Path(__file__).resolve().parent.parent / "results" /
                                                   "offline").glob("*.json"))]

    def worker(w: int) -> None:
        http, n = _client(HOSTILE["bench_events"]), 0
        session = f"hostile-bench-{w}"
        while not stop.exists():
            if n % 2:
                body = {"data": [files[n % len(files)], False], "fn_index": fns["on_file"]}
            else:
                body = {"data": [], "fn_index": fns["on_refresh"]}
            _post(http, tally, "on_file" if n % 2 else "on_refresh", f"{url}/gradio_api/queue/join",
                  json={**body, "session_hash": session, "trigger_id": None})  # never reads its results
            n += 1
    _run(worker, workers)


def attack_spoofed(url: str, fns: dict, stop: Path, workers: int, tally: Tally) -> None:
    question = {"data": ask_data(QUESTIONS[0]), "fn_index": fns["compare"], "trigger_id": None}

    def worker(w: int) -> None:
        http = _client(HOSTILE["spoofed"])
        while not stop.exists():
            fake = f"{random.randint(1, 223)}.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
            _post(http, tally, "question", f"{url}/gradio_api/queue/join", headers={"x-forwarded-for": fake},
                  json={**question, "session_hash": uuid.uuid4().hex[:12]})
    _run(worker, workers)


def attack_held(url: str, fns: dict, stop: Path, workers: int, tally: Tally) -> None:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    held: list[socket.socket] = []

    def open_one(i: int) -> None:
        try:
            s = socket.create_connection((host, int(port)), timeout=10, source_address=(HOSTILE["held"], 0))
            s.sendall(f"GET /gradio_api/heartbeat/held{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status = s.recv(64).split(b" ")[1].decode()
        except (OSError, IndexError) as e:
            tally.add("heartbeat", type(e).__name__)
            return
        tally.add("heartbeat", status)
        if status == "200":
            held.append(s)
        else:
            s.close()

    i = 0
    while not stop.exists():
        if len(held) < 500:
            open_one(i)
            i += 1
        else:
            time.sleep(0.5)
        if i % 50 == 0 and len(held) < 500:
            time.sleep(0.2)
    tally.add("held-at-the-end", len(held))
    for s in held:
        s.close()


def _run(worker, workers: int) -> None:
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def hostile(attack: str, url: str, fns: dict, stop: Path, workers: int) -> None:
    """One attack until ``stop`` exists, then its tallies as JSON. Niced: on loopback the attacker's own CPU shares
    the server's cores, which a remote attacker's does not; what is measured is what the server spends on it."""
    os.nice(10)
    tally, t0 = Tally(), time.perf_counter()
    globals()[f"attack_{attack}"](url, fns, stop, workers, tally)
    print(json.dumps({"statuses": dict(tally.counts), "seconds": time.perf_counter() - t0}))


# ---------------------------------------------------------------- route costs

def measure_costs(url: str, pid: int, fns: dict) -> dict[str, float]:
    """Milliseconds of the app process's CPU per request, for each allowed route (and a cheap and a Benchmarks event)."""
    import psutil

    proc, out = psutil.Process(pid), {}
    html = _client("127.0.0.8").get(url + "/").text
    asset = re.findall(r"/assets/[^\"']+\.js", html)[0]

    def cost(name: str, call, n: int = 20) -> None:
        call()
        t = proc.cpu_times()
        start = t.user + t.system
        for _ in range(n):
            call()
        t = proc.cpu_times()
        out[name] = 1000 * (t.user + t.system - start) / n

    for i, route in enumerate(("/", "/config", "/gradio_api/info", asset, "/theme.css",
                               "/static/fonts/Montserrat/Montserrat-Bold.woff2")):
        http = _client(f"127.0.5.{i + 1}")
        cost(f"GET {route if not route.startswith('/assets') else '/assets/<file>.js'}", lambda: http.get(url + route))
        if not route.startswith(("/assets", "/theme", "/static")):  # the same, rendered (no cached answer fits)
            fresh = iter(range(10**6))
            cost(f"GET {route} (rendered)", lambda: http.get(url + route, params={"n": next(fresh)}))
    http = _client("127.0.5.20")
    cost("POST /gradio_api/reset", lambda: http.post(url + "/gradio_api/reset", json={"event_id": "x"}))

    def heartbeat():
        with http.stream("GET", url + "/gradio_api/heartbeat/cost") as r:
            next(r.iter_lines())
    cost("GET /gradio_api/heartbeat (first line)", heartbeat)
    for name in ("refresh_adapters", "on_refresh"):
        client = QueueClient(url, f"127.0.5.{30 + len(out)}")
        cost(f"join + event stream: {name}", lambda: client.call(fns[name], []), n=8)
    return out


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]), args.model)
        return
    if args.hostile:
        attack, url, fns, stop = args.hostile
        hostile(attack, url, json.loads(fns), Path(stop), args.hostile_workers)
        return
    attacks = [a for a in args.attacks.split(",") if a]
    assert set(attacks) <= set(ATTACKS), f"unknown attacks: {set(attacks) - set(ATTACKS)}"
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, url = start_app(args.model, workdir)
        app = psutil.Process(proc.pid)
        try:
            fns = fn_ids(url)
            fn = fns["compare"]
            if args.costs:
                for name, ms in measure_costs(url, proc.pid, fns).items():
                    print(f"cost {name:45s} {ms:7.2f} ms CPU")
            probe = QueueClient(url, "127.0.0.10").call(fn, ask_data(QUESTIONS[0], args.max_new_tokens))  # not counted
            longest = QueueClient(url, "127.0.0.12").call(fn, ask_data("What causes anemia? " * 200,
                                                                       args.max_new_tokens))
            assert longest.output is not None, longest.error  # the engine's working set for the longest question
            # an honest user may ask (4,000 characters) is there before memory is measured
            columns = [v for k, v in enumerate(("base", "rag", "sft", "msft"))
                       if probe.output and "tokens" in probe.output[4 * k + 2]]
            phases: dict[str, list[tuple[bool, float]]] = {"none": []}
            tallies: dict[str, dict] = {}
            subnet = iter(range(1, 250))

            def baseline() -> None:  # before every attack: the box's load drifts (other jobs share its cores)
                t0 = time.perf_counter()
                phases["none"] += honest_phase(url, fn, args.users, args.questions, args.max_new_tokens, next(subnet),
                                               args.timeout)
                print(f"no attack: {time.perf_counter() - t0:.1f}s; load average {os.getloadavg()[0]:.1f}", flush=True)

            baseline()
            temp_mb, rss_mb = folder_mb(workdir / "tmp"), app.memory_info().rss / 1024 ** 2
            for i, attack in enumerate(attacks):
                if i:
                    baseline()
                k = next(subnet)
                stop = workdir / f"stop-{attack}"
                hostile_proc = subprocess.Popen(
                    [sys.executable, __file__, "--hostile-workers", str(args.hostile_workers),
                     "--hostile", attack, url, json.dumps(fns), str(stop)], stdout=subprocess.PIPE, text=True)
                time.sleep(3.0)  # the attack is under way before the honest users start
                t0 = time.perf_counter()
                phases[attack] = honest_phase(url, fn, args.users, args.questions, args.max_new_tokens, k,
                                              args.timeout)
                wall = time.perf_counter() - t0
                stop.touch()
                out = hostile_proc.communicate(timeout=300)[0].strip().splitlines()
                tallies[attack] = json.loads(out[-1]) if out else {"statuses": {}, "seconds": 0.0}
                print(f"{attack}: {wall:.1f}s; load average {os.getloadavg()[0]:.1f}; "
                      f"app RSS {app.memory_info().rss / 1024 ** 2:.0f} MB; "
                      f"hostile {json.dumps(tallies[attack]['statuses'], sort_keys=True)}", flush=True)
                time.sleep(2.0)  # what the attack left in the queue drains
            temp_growth = folder_mb(workdir / "tmp") - temp_mb
            rss_growth = app.memory_info().rss / 1024 ** 2 - rss_mb
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    def summary(results):
        lat = [r[1] for r in results]
        return sum(r[0] for r in results), len(results), percentile(lat, 0.5), percentile(lat, 0.95), max(lat)

    print(f"model={args.model} max_new_tokens={args.max_new_tokens} users={args.users} questions/user={args.questions};"
          f" columns generating: {', '.join(columns) or 'none'} (warm-up {probe.seconds:.2f}s)")
    base_p95 = summary(phases["none"])[3]
    print("| attack | honest answered | p50 | p95 | max | p95 / no attack | hostile requests | refused |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rejected, worst = 0, 0.0
    for name, results in phases.items():
        ok, n, p50, p95, top = summary(results)
        statuses = tallies.get(name, {}).get("statuses", {})
        sent = sum(v for k, v in statuses.items() if not k.startswith(("server-fetches", "held-at")))
        refused = sum(v for k, v in statuses.items() if re.search(r":(4\d\d|5\d\d)$", k))
        rejected += refused
        if name != "none":
            worst = max(worst, p95 / base_p95)
        print(f"| {name} | {ok}/{n} | {p50:.2f} s | {p95:.2f} s | {top:.2f} s | {p95 / base_p95:.2f} | "
              f"{sent if name != 'none' else '-'} | {refused if name != 'none' else '-'} |")
    answered = sum(r[0] for rs in phases.values() for r in rs)
    total = sum(len(rs) for rs in phases.values())
    print(f"temp dir growth {temp_growth:.1f} MB; app RSS growth {rss_growth:.1f} MB (from after the no-attack phase)")
    print(f"RESULT honest_answered={answered}/{total} honest_p95_ratio={worst:.2f} disk_growth_mb={temp_growth:.1f} "
          f"rss_growth_mb={rss_growth:.0f} hostile_rejected={rejected}")


if __name__ == "__main__":
    main()
