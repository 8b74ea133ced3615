"""Cost of the Training tab's 2-second poll: ``JobManager.poll`` on the active run and ``list_runs`` over many runs.

Run: ``python bench/jobs_poll.py [--runs 200] [--lines 2000]``. Builds synthetic run dirs (status.json + log.jsonl)
in a temp dir, then times a cold ``list_runs`` (every log parsed) against warm ones (logs cached by size/mtime) and
one ``poll`` of a growing log. Ends with one ``RESULT`` line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medadapt.config import load_config  # noqa: E402
from medadapt.jobs.runner import JobManager  # noqa: E402


def make_runs(root: Path, runs: int, lines: int) -> None:
    for i in range(runs):
        run = root / "offline" / f"sft-20260101-{i:06d}"
        run.mkdir(parents=True)
        with open(run / "log.jsonl", "w") as f:
            for s in range(1, lines + 1):
                f.write(json.dumps({"step": s, "total_steps": lines, "loss": 2.0 / s, "lr": 1e-4, "tokens_per_s": 900.0,
                                    "elapsed_s": s * 0.5, "eta_s": (lines - s) * 0.5, "time": 1.7e9 + s}) + "\n")
        (run / "status.json").write_text(json.dumps({"status": "finished", "job": "sft", "steps": lines,
                                                     "final_loss": 0.1, "wall_s": lines * 0.5}))


def timed(fn, repeat: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--lines", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_runs(Path(tmp), args.runs, args.lines)
        jobs = JobManager(load_config("offline", {"paths": {"runs_dir": tmp}}))
        cold = timed(jobs.list_runs)
        warm = timed(jobs.list_runs, 5)
        active = sorted((Path(tmp) / "offline").iterdir())[-1]
        jobs.poll(active)
        with open(active / "log.jsonl", "a") as f:  # a new line arrives between two polls
            f.write(json.dumps({"step": args.lines + 1, "loss": 0.01}) + "\n")
        grow = timed(lambda: jobs.poll(active))
        still = timed(lambda: jobs.poll(active), 20)
    print(f"list_runs over {args.runs} runs x {args.lines} log lines: cold {cold * 1e3:.0f} ms, warm {warm * 1e3:.1f} ms "
          f"({cold / warm:.1f}x)")
    print(f"poll of one active run: after a new log line {grow * 1e3:.1f} ms, unchanged log {still * 1e3:.2f} ms")
    print(f"RESULT runs={args.runs} lines={args.lines} list_cold_ms={cold * 1e3:.0f} list_warm_ms={warm * 1e3:.1f} "
          f"warm_speedup={cold / warm:.1f} poll_grow_ms={grow * 1e3:.1f} poll_same_ms={still * 1e3:.2f}")


if __name__ == "__main__":
    main()
