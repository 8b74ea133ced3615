"""Serving load: the whole app (``app.py``, real offline SmolLM2, its adapters and index) on loopback, N concurrent
gradio_client users x M questions each, in three modes:

- ``serial``: ``MEDADAPT_BATCHING=off`` — one question generates at a time (Compare concurrency 1), its four rows
  in the continuous batcher alone;
- ``batched``: continuous batching in the in-process engine (every user's rows in one running batch);
- ``remote``: ``MEDADAPT_ENGINE=openai`` against a vLLM CPU server (``scripts/vllm_server.sh``, its own venv) serving
  the same model and adapters;
- ``cpu``: ``MEDADAPT_ENGINE=openvino``: the CPU engine (``scripts/cpu_engine.sh``, int8; the app starts its server
  and converts the model once into the cache), every user's rows in its one running batch.

Run: ``nice -n 15 python bench/serve_load.py [--users 8] [--questions 3] [--max-new-tokens 64]
[--modes serial,batched,remote] [--runs-dir DIR]``. Greedy decoding; each mode gets a fresh app process. The answers
of ``batched`` are compared with ``serial`` (same question, same user: they must be equal). Last line:
``RESULT users=8 answered=<ok>/<total> p95_s_serial=<s> p95_s_batched=<s> p95_s_remote=<s> p95_s_cpu=<s>
throughput_ratio=<batched/serial>``.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.load import percentile, user  # noqa: E402  (the load test's users and p95)
from tests.net import free_port  # noqa: E402

MODES = ("serial", "batched", "remote", "cpu")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--questions", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--runs-dir", default=None, help="runs dir holding the sft/msft adapters (default: the profile's)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one request may take before it counts as lost")
    return p


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not up after {timeout} s")


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def run_mode(mode: str, args, tmp: Path, adapters: dict[str, Path]) -> dict:
    env = {"MEDADAPT_SETUP": "off", "MEDADAPT_PROFILE": "offline", "OMP_NUM_THREADS": os.environ.get(
        "OMP_NUM_THREADS", "2")}
    if args.runs_dir:
        env["MEDADAPT_RUNS_DIR"] = args.runs_dir
    server = None
    if mode == "serial":
        env["MEDADAPT_BATCHING"] = "off"
    elif mode == "cpu":
        env["MEDADAPT_ENGINE"] = "openvino"
    elif mode == "remote":
        from medadapt.config import load_config
        from medadapt.models import base_model_path

        vport = free_port()
        vlog = tmp / "vllm.log"
        server = spawn(["bash", "scripts/vllm_server.sh", "serve", base_model_path(load_config("offline")), str(vport)]
                       + [f"{k}={p}" for k, p in adapters.items()], {}, vlog)
        t0 = time.perf_counter()
        wait_http(f"http://127.0.0.1:{vport}/v1/models", server, vlog)
        print(f"vLLM server up in {time.perf_counter() - t0:.0f} s", flush=True)
        env.update(MEDADAPT_ENGINE="openai", MEDADAPT_OPENAI_BASE_URL=f"http://127.0.0.1:{vport}/v1")
    port = free_port()
    log = tmp / f"app-{mode}.log"
    app = spawn([sys.executable, "app.py", "--port", str(port)], env, log)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url, app, log)
        if mode == "cpu":  # the CPU engine's server starts in the background; its columns say "preparing" until then
            deadline = time.monotonic() + 3600
            while not user(url, 1, 16, args.timeout, 0, strict=True)[0][0]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cpu: the engine did not answer within an hour:\n{log.read_text()[-3000:]}")
                time.sleep(5)
        else:
            user(url, 1, 16, args.timeout, 0, strict=True)  # warm-up (first prompts, adapters, retrieval)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.users) as pool:
            futures = [pool.submit(user, url, args.questions, args.max_new_tokens, args.timeout, u, True)
                       for u in range(args.users)]
            results = [r for f in futures for r in f.result()]
        wall = time.perf_counter() - t0
    finally:
        stop(app)
        if server is not None:
            stop(server)
    ok = sum(r[0] for r in results)
    lat = [r[1] for r in results]
    out = {"ok": ok, "total": len(results), "wall": wall, "p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95),
           "throughput": len(results) / wall, "answers": [r[2] for r in results], "load": (load0, os.getloadavg()[0])}
    print(f"{mode}: answered {ok}/{len(results)} wall {wall:.1f}s p50 {out['p50']:.1f}s p95 {out['p95']:.1f}s "
          f"throughput {out['throughput']:.3f} req/s; load average {out['load'][0]:.1f} -> {out['load'][1]:.1f}",
          flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    from medadapt.adapters import resolve_adapter
    from medadapt.config import load_config

    cfg = load_config("offline", {"paths": {"runs_dir": args.runs_dir}} if args.runs_dir else None)
    adapters = {k: resolve_adapter(cfg, k) for k in ("sft", "msft")}
    adapters = {k: p for k, p in adapters.items() if p is not None}
    print(f"users={args.users} questions/user={args.questions} max_new_tokens={args.max_new_tokens} "
          f"adapters={sorted(adapters)} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}", flush=True)
    res: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            res[mode] = run_mode(mode, args, Path(tmp), adapters)
    if "serial" in res and "batched" in res:
        same = sum(a == b for a, b in zip(res["serial"]["answers"], res["batched"]["answers"]) if a and b)
        print(f"batched answers equal to serial: {same}/{len(res['serial']['answers'])}")
    ok = sum(r["ok"] for r in res.values())
    total = sum(r["total"] for r in res.values())
    p95 = " ".join(f"p95_s_{m}={res[m]['p95']:.1f}" if m in res else f"p95_s_{m}=nan" for m in MODES)
    ratio = res["batched"]["throughput"] / res["serial"]["throughput"] if {"serial", "batched"} <= set(res) else \
        float("nan")
    print(f"RESULT users={args.users} answered={ok}/{total} {p95} throughput_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
