"""Out of the box: time from ``python app.py`` on a fresh machine until RAG answers and until all four columns do.

Starts ``python app.py`` (offline profile, the first-run setup on) as a subprocess with empty runs, index and
results dirs, then asks one question through the app's own API (gradio_client, ``/compare``, 4 new tokens so the
probes cost little) every ``--every`` seconds until every column answers or ``--timeout`` passes. The converted
model in the cache dir is reused (converting the packaged GGUF takes ~20 s once per machine); nothing else is.

    python bench/first_run.py [--runs-dir DIR] [--timeout 1500] [--every 10]

``--runs-dir`` keeps the trained adapters (default: a temp dir, removed). Last line:
``RESULT rag_ready_s=<s> all_ready_s=<s> columns=<k>/4``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from medadapt.rundir import running_pids  # noqa: E402
from medadapt.variants import VARIANTS  # noqa: E402

QUESTION = "Which vitamin deficiency causes megaloblastic anemia with neurological symptoms?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answered(out: tuple) -> set[str]:
    """Columns whose stats line reports generated tokens (the column really answered)."""
    return {v for i, v in enumerate(VARIANTS) if "tokens" in str(out[i * 4 + 2])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", default=None, help="where runs and the index go (kept); default a temp dir")
    p.add_argument("--timeout", type=float, default=1500)
    p.add_argument("--every", type=float, default=10.0)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `kill` still stops the app and its jobs (finally)
    from gradio_client import Client

    tmp = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="medadapt-first-run-"))
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, MEDADAPT_PROFILE="offline", MEDADAPT_RUNS_DIR=str(tmp / "runs"),
               MEDADAPT_INDEX_DIR=str(tmp / "index"), MEDADAPT_RESULTS_DIR=str(tmp / "results"), PYTHONUNBUFFERED="1")
    env.pop("MEDADAPT_SETUP", None)
    log = open(tmp / "app.log", "w")
    t0 = time.time()
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=REPO, env=env, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    ready: dict[str, float] = {}
    client = None
    try:
        while time.time() - t0 < args.timeout and len(ready) < 4:
            if app.poll() is not None:
                print(f"app exited with code {app.returncode}; see {tmp / 'app.log'}")
                break
            try:
                client = client or Client(f"http://127.0.0.1:{port}/", verbose=False)
                out = client.predict(QUESTION, 16, 0.0, 1.0, 3, False, "", "", 1.0, api_name="/compare")
            except Exception as e:  # not up yet
                if client is not None:
                    print(f"{time.time() - t0:7.1f} s  probe failed: {type(e).__name__}: {str(e)[:120]}")
                time.sleep(args.every)
                continue
            now = time.time() - t0
            for v in answered(out) - set(ready):
                ready[v] = now
            states = {v: ("ready" if v in ready else str(out[i * 4])[:70].replace("\n", " "))
                      for i, v in enumerate(VARIANTS)}
            print(f"{now:7.1f} s  " + " | ".join(f"{v}: {s}" for v, s in states.items()), flush=True)
            if len(ready) < 4:
                time.sleep(args.every)
    finally:
        os.killpg(app.pid, 15)
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, 9)
        for job_pid in running_pids(tmp / "runs"):  # a setup job still running after the timeout
            try:
                os.killpg(job_pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        log.close()
        if not args.runs_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    for v in VARIANTS:
        print(f"{v}: {'%.0f s' % ready[v] if v in ready else 'not ready'}")
    rag = f"{ready['rag']:.0f}" if "rag" in ready else "nan"
    full = f"{max(ready.values()):.0f}" if len(ready) == 4 else "nan"
    print(f"RESULT rag_ready_s={rag} all_ready_s={full} columns={len(ready)}/4")
    return 0 if len(ready) == 4 else 1


if __name__ == "__main__":
    sys.exit(main())
