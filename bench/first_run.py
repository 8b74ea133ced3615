"""Out of the box: time from ``python app.py`` on a fresh machine until RAG answers and until all four columns do.

Starts ``python app.py`` (offline profile, the first-run setup on) as a subprocess with empty runs, index and
results dirs, then asks one question through the app's own API (gradio_client, ``/compare``, 16 new tokens, the
least the app allows) until every column answers or ``--timeout`` passes. A probe makes every column that is
ready generate, on the same CPU cores the setup trains on, so the probes slow what they measure:
``--probe on-change`` (default) reads the setup's state file (``<runs>/offline/setup.json``) every second and asks
only while a column it has not seen answer may have become ready (from the start until Base answers, and after
each setup step ends), every ``--every`` seconds until that column answers; ``--probe every`` asks every
``--every`` seconds from start to end (what the earlier figures used). Either way a column counts as ready when
``/compare`` returns its answer. The converted model in the cache dir is reused (converting the packaged GGUF takes
~20 s once per machine); nothing else is.

    python bench/first_run.py [--runs-dir DIR] [--timeout 1500] [--every 10] [--probe on-change|every]

``--runs-dir`` keeps the trained adapters (default: a temp dir, removed). With a shipped release (the offline
profile's ``assets/shipped/offline``) the setup copies its index and trains nothing; the bench also checks that the
shipped results file names the shipped adapters by checksum (``python -m medadapt.release check``) and prints the
CPU and its vector flags. Last line:
``RESULT rag_ready_s=<s> all_ready_s=<s> columns=<k>/4 checksums=<ok|mismatch|none> avx512=<0|1> native_bf16=<0|1>``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from medadapt.jobs.rundir import read_json, running_pids  # noqa: E402
from medadapt.setup_chain import STATE_FILE, STEP_ENDED, VARIANT  # noqa: E402
from medadapt.ui.compare_controller import compare_data  # noqa: E402
from medadapt.variants import VARIANTS  # noqa: E402
from tests.net import free_port  # noqa: E402

QUESTION = "Which vitamin deficiency causes megaloblastic anemia with neurological symptoms?"


def answered(out: tuple) -> set[str]:
    """Columns whose stats line reports generated tokens (the column really answered)."""
    return {v for i, v in enumerate(VARIANTS) if "tokens" in str(out[i * 4 + 2])}


def finished_steps(runs: Path) -> set[str]:
    """The Compare columns whose setup step has ended (ready, failed or stopped), from the setup's state file."""
    steps = (read_json(runs / "offline" / STATE_FILE) or {}).get("steps", {})
    return {VARIANT[s] for s, rec in steps.items() if s in VARIANT and (rec or {}).get("status") in
            STEP_ENDED}


def shipped_checksums() -> str:
    """``ok`` when the shipped results file names the shipped adapters by their checksums, ``none`` without a
    release, else ``mismatch`` (the problems printed)."""
    from medadapt.config import load_config
    from medadapt.release import check
    from medadapt.shipped import manifest

    cfg = load_config("offline")
    if not manifest(cfg):
        return "none"
    problems = check(cfg)
    for line in problems:
        print(f"checksum: {line}")
    return "mismatch" if problems else "ok"


def cpu_line() -> tuple[str, int, int]:
    """(a line naming the CPU and its vector extensions, AVX-512 present, native bf16)."""
    from medadapt.precision import cpu_bf16

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    avx512 = any(f.startswith("avx512") for f in flags)
    vec = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    return f"CPU: {name}, {os.cpu_count()} cores; vector flags: {vec or 'none'}", int(avx512), int(cpu_bf16())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", default=None, help="where runs and the index go (kept); default a temp dir")
    p.add_argument("--timeout", type=float, default=1500)
    p.add_argument("--every", type=float, default=10.0)
    p.add_argument("--probe", choices=("on-change", "every"), default="on-change",
                   help="ask only while a column may have become ready (default), or every --every seconds")
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
    next_probe = 0.0
    try:
        while time.time() - t0 < args.timeout and len(ready) < 4:
            if app.poll() is not None:
                print(f"app exited with code {app.returncode}; see {tmp / 'app.log'}")
                break
            # a column may be ready: Base not seen yet, or a setup step ended whose column has not answered yet
            due = args.probe == "every" or "base" not in ready or bool(finished_steps(tmp / "runs") - set(ready))
            if not due or time.time() < next_probe:
                time.sleep(1.0)
                continue
            next_probe = time.time() + args.every
            try:
                client = client or Client(f"http://127.0.0.1:{port}/", verbose=False)
                out = client.predict(*compare_data(QUESTION, max_new_tokens=16, top_k=3), api_name="/compare")
            except Exception as e:  # not up yet
                if client is not None:
                    print(f"{time.time() - t0:7.1f} s  probe failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            now = time.time() - t0
            for v in answered(out) - set(ready):
                ready[v] = now
            states = {v: ("ready" if v in ready else str(out[i * 4])[:70].replace("\n", " "))
                      for i, v in enumerate(VARIANTS)}
            print(f"{now:7.1f} s  " + " | ".join(f"{v}: {s}" for v, s in states.items()), flush=True)
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
    checks, cpu = shipped_checksums(), cpu_line()
    print(cpu[0])
    print(f"RESULT rag_ready_s={rag} all_ready_s={full} columns={len(ready)}/4 checksums={checks} "
          f"avx512={cpu[1]} native_bf16={cpu[2]}")
    return 0 if len(ready) == 4 else 1


if __name__ == "__main__":
    sys.exit(main())
