"""``python -m medadapt setup [--train]``: the first-run setup (index, SFT, MSFT) from the shell, with progress bars.

The same chain the app starts by itself (:mod:`medadapt.setup_chain`): what is already there is skipped, an
interrupted step continues from its checkpoint. Exit codes: 0 all ready, 1 a step failed, 2 another process runs
the setup, 130 interrupted (the running job is asked to checkpoint and stop; run the command again to continue).
"""
from __future__ import annotations

import argparse
import logging
import sys


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medadapt", description="MedAdapt command line")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="build the RAG index and train the SFT and MSFT adapters the profile lacks")
    s.add_argument("--profile", default=None, help="offline | reference | auto | path to a profile YAML")
    s.add_argument("--train", action="store_true",
                   help="train SFT and MSFT here even where the profile ships adapters or lists published models "
                        "(as MEDADAPT_SETUP_TRAIN=1 does for the app)")
    return p


def setup(profile: str | None, train: bool = False) -> int:
    from tqdm import tqdm

    from medadapt.config import ConfigError, load_config
    from medadapt.jobs.runner import JobManager
    from medadapt.setup_chain import (HOW, STEP_ENDED, STEP_TITLES, STEP_UNFINISHED, SetupBusyError, SetupChain,
                                      doing, train_requested, what_to_do)

    try:
        cfg = load_config(profile)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(cfg.describe())
    jobs = JobManager(cfg)
    chain = SetupChain(cfg, jobs, train=train or train_requested())
    bars: dict[str, tqdm] = {}

    def on_update(step: str, rec) -> None:
        bar = bars.get(step)
        if bar is None:
            bar = bars[step] = tqdm(desc=STEP_TITLES[step], unit="snippet" if step == "index" else "step",
                                    dynamic_ncols=True)
        if rec.total_steps:
            bar.total = rec.total_steps
        bar.update(max(0, rec.step - bar.n))
        if rec.stage:
            bar.set_postfix_str(rec.stage)
        if rec.status in STEP_ENDED:
            bar.set_postfix_str(rec.status)
            bar.close()

    try:
        state = chain.run(on_update)
    except SetupBusyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        running = jobs.running()
        if running is not None:
            jobs.stop()
            print(f"\ninterrupted: asked {running.name} to save a checkpoint and stop; run the same command again to "
                  "continue", file=sys.stderr)
        return 130
    for bar in bars.values():
        bar.close()
    failed = {s: r for s, r in state.steps.items() if r.status in STEP_UNFINISHED}
    for step, rec in state.steps.items():
        where = f" ({rec.run_dir})" if rec.run_dir else ""
        how = f", {HOW[rec.how]}" if rec.how in HOW and rec.status not in STEP_UNFINISHED else ""
        print(f"{STEP_TITLES[step]}: {rec.status}{how}{where}")
    for step, rec in failed.items():
        print(f"error: {doing(step, rec)} {rec.status}: {rec.error or 'stopped by request'}\n  {what_to_do(step)}",
              file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return setup(args.profile, args.train)


if __name__ == "__main__":
    sys.exit(main())
