"""The index's command line::

    python -m medadapt.retrieval build [--profile offline] [--limit N] [--rebuild]
    python -m medadapt.retrieval status | query "question" [--mode hybrid] [--k 5]
    python -m medadapt.retrieval publish USER/medadapt-index [--private]   (then set rag.index_repo / MEDADAPT_INDEX_REPO)
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from medadapt.retrieval.rag import (MODES, IndexMismatchError, IndexNotBuiltError, Retriever, build_index,
                                    failure_message, index_path, index_status, source_report)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medadapt.retrieval",
                                description="Build, inspect, query or publish the retrieval index.")
    p.add_argument("--profile", default=None, help="offline | reference | auto | path to a profile YAML")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="embed the corpus into the LanceDB table (resumable)")
    b.add_argument("--limit", type=int, default=None, help="only the first N snippets (quick builds)")
    b.add_argument("--rebuild", action="store_true", help="drop the table and start over")
    b.add_argument("--output_dir", default=None, help="report as a job: status.json and log.jsonl in this run dir")
    st = sub.add_parser("status", help="print the index status")
    q = sub.add_parser("query", help="retrieve snippets for a question")
    q.add_argument("question")
    q.add_argument("--k", type=int, default=None)
    q.add_argument("--mode", choices=MODES, default=None)
    pub = sub.add_parser("publish", help="push the built index to a Hub dataset repo (needs HF_TOKEN)")
    pub.add_argument("repo", help="dataset repo id, e.g. USER/medadapt-index")
    pub.add_argument("--private", action="store_true")
    for s in (b, st, q, pub):
        s.add_argument("--profile", default=argparse.SUPPRESS, help="as above")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medadapt.config import ConfigError, load_config
    from medadapt.data import DataNotFoundError
    from medadapt.retrieval.index_pull import PublishError
    from medadapt.jobs.lock import JobLockError

    try:
        cfg = load_config(args.profile)
        if args.cmd == "status":
            for key, value in index_status(cfg).items():
                print(f"{key}: {value}")
        elif args.cmd == "publish":
            from medadapt.retrieval.index_pull import publish_index

            url = publish_index(cfg, args.repo, args.private)
            print(f"published {cfg.rag.table} to {url}; point MEDADAPT_INDEX_REPO={args.repo} (rag.index_repo) at it")
        elif args.cmd == "build":
            from tqdm import tqdm

            bar = tqdm(unit="snippet", desc=f"embedding into {cfg.rag.table}")

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            start = time.perf_counter()
            if args.output_dir:
                from medadapt.retrieval.index_job import run_index_job

                rows = run_index_job(cfg, Path(args.output_dir), args.limit, args.rebuild, progress)
            else:
                rows = build_index(cfg, progress, args.limit, rebuild=args.rebuild)
            bar.close()
            print(f"{rows} rows in {cfg.rag.table} at {index_path(cfg)} ({time.perf_counter() - start:.1f} s)")
            failed = source_report(cfg).get("failed") or {}
            if failed:
                print(f"warning: {failure_message(failed)}", file=sys.stderr)
        else:
            start = time.perf_counter()
            retriever = Retriever.open(cfg)
            hits = retriever.retrieve(args.question, args.k, args.mode)
            print(f"{len(hits)} snippets in {time.perf_counter() - start:.2f} s (incl. loading the embedder)")
            for i, s in enumerate(hits, 1):
                print(f"[{i}] {s.score:.4f} {s.id} ({s.source}): {s.content[:160]}")
    except (IndexNotBuiltError, IndexMismatchError, ConfigError, DataNotFoundError, JobLockError, PublishError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0
