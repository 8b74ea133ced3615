"""What an idle app costs the machine: CPU used by the app's server while nobody asks anything.

On a 2-core box the first-run setup trains next to the app, so every idle cycle of the server is taken from training.
Builds the real app (all tabs, offline profile, no model loaded, setup not started), launches it in this process
with the app's own launch options, and measures this process's CPU time over ``--seconds`` of idleness twice, in
alternating order: with gradio's own queue poll (every 1 ms when free) and with the app's
(:data:`medadapt.ui.common.QUEUE_IDLE_POLL_S`). After each switch one light event (``/refresh_adapters``) goes
through the queue, to check that it still serves.

    python bench/idle_cpu.py [--seconds 20] [--rounds 2]

Last line: ``RESULT idle_cpu_pct_gradio=<% of one core> idle_cpu_pct_app=<%> reduction=<x>``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GRADIO_POLL_S = 0.001  # gradio's Queue.sleep_when_free on Linux


def idle_cpu_pct(seconds: float) -> float:
    """This process's CPU time over ``seconds`` of wall time, in % of one core."""
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    return 100 * (time.process_time() - c0) / (time.monotonic() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    from gradio_client import Client

    from medadapt.config import load_config
    from medadapt.state import AppState
    from medadapt.ui.common import QUEUE_IDLE_POLL_S, launch_options
    from medadapt.ui.interface import build_demo

    cfg = load_config("offline")
    demo = build_demo(AppState.create(cfg))
    demo.queue(default_concurrency_limit=4, max_size=64)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True,  # gradio finds a free port
                **launch_options(cfg, demo))
    client = Client(demo.local_url, verbose=False)
    seen: dict[str, list[float]] = {"gradio": [], "app": []}
    try:
        for r in range(args.rounds):
            for arm in (("gradio", "app") if r % 2 == 0 else ("app", "gradio")):
                demo._queue.sleep_when_free = GRADIO_POLL_S if arm == "gradio" else QUEUE_IDLE_POLL_S
                client.predict(api_name="/refresh_adapters")  # the queue still serves
                time.sleep(1.0)
                seen[arm].append(idle_cpu_pct(args.seconds))
                print(f"round {r + 1} {arm:6s} poll {demo._queue.sleep_when_free * 1000:4.0f} ms: "
                      f"{seen[arm][-1]:5.1f}% of one core", flush=True)
    finally:
        demo.close()
    gradio, app = (sum(v) / len(v) for v in (seen["gradio"], seen["app"]))
    print(f"RESULT idle_cpu_pct_gradio={gradio:.1f} idle_cpu_pct_app={app:.1f} reduction={gradio / max(app, 1e-3):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
