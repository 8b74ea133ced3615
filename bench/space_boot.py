"""Space boot: the app deployed the way a Hugging Face Space deploys it, from a fresh venv, until it answers.

Builds the Space-shaped environment of ``tests/space_env.py`` (a fresh venv with only ``pip install -r
requirements.txt``, a copy of the repository, ``SPACE_ID`` set, an empty home, no data dir, ``HF_HUB_OFFLINE=1``
and a Hugging Face cache in the standard layout holding the model, the embedder and data slices, persistent
storage), starts ``python app.py`` and asks one question through the app's API until a column answers. With
``--all`` it also waits for the first-run setup (tiny trainer configs) and checks that all four columns answer.

    python bench/space_boot.py [--venv DIR] [--all] [--keep DIR]

``--venv`` reuses an existing venv (install_s is then 0). Resident memory is the peak of the app and its child
processes (the setup's jobs) sampled every second until the first answer (with ``--all``: until the end). Last line:
``RESULT install_s=<s> first_answer_s=<s> rss_mb=<mb>``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", default=None, help="reuse this venv instead of creating and installing a fresh one")
    p.add_argument("--all", action="store_true", help="also wait for the setup and all four columns")
    p.add_argument("--keep", default=None, help="build everything in this folder and keep it (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from medadapt.config import load_config
    from medadapt.models import base_model_path
    from tests.space_env import prepare, rss_mb

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="medadapt-space-"))
    root.mkdir(parents=True, exist_ok=True)
    data_dir = Path(os.environ.get("MEDADAPT_DATA_DIR") or REPO.parent / "shared" / "data")
    model_dir = Path(base_model_path(load_config("offline")))  # this machine's copy of the model, for the cache
    t0 = time.time()
    app, install_s = prepare(root, data_dir, model_dir, Path(args.venv) if args.venv else None)
    print(f"prepared in {time.time() - t0:.0f} s (install {install_s:.0f} s) at {root}", flush=True)
    app.start()
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            peak[0] = max(peak[0], rss_mb(app.proc.pid))

    threading.Thread(target=sample, daemon=True).start()
    try:
        first_s, client = app.first_answer(args.timeout)
        rss = peak[0] = max(peak[0], rss_mb(app.proc.pid))
        print(f"first answer after {first_s:.1f} s, peak rss {rss:.0f} MB", flush=True)
        print("banner:", app.banner(), flush=True)
        if args.all:
            state = app.wait_setup(args.timeout + 900)
            print(f"setup {state.get('status')} after {time.time() - app.started:.0f} s", flush=True)
            print("columns answering:", sorted(app.ask(client)), flush=True)
            rss = peak[0]
            print(f"peak rss until all four answered: {rss:.0f} MB", flush=True)
    finally:
        done.set()
        app.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"RESULT install_s={install_s:.0f} first_answer_s={first_s:.1f} rss_mb={rss:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
