"""``python -m medadapt.data prepare statpearls``: build a data set the Hub does not redistribute.

    python -m medadapt.data prepare statpearls [--archive PATH] [--out DIR] [--profile P]

``--archive``: NCBI's ``statpearls_NBK430685.tar.gz`` or its unpacked folder (downloaded from NCBI when omitted);
``--out``: default ``<data_dir>/statpearls`` (use ``local:statpearls`` in ``rag.corpus``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medadapt.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare", help="build a data set locally")
    prep.add_argument("dataset", choices=["statpearls"])
    prep.add_argument("--archive", default=None, help="the NCBI StatPearls .tar.gz or its folder (default: download)")
    prep.add_argument("--out", default=None, help="output folder (default: <data_dir>/statpearls)")
    prep.add_argument("--profile", default=None, help="profile whose data dir receives the output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medadapt.config import ConfigError, load_config
    from medadapt.data import statpearls

    try:
        cfg = load_config(args.profile or "offline")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        out_dir = Path(args.out).expanduser()
    elif cfg.paths.data_dir:
        out_dir = cfg.paths.resolve("data_dir") / "statpearls"
    else:
        print("error: no data dir is configured; pass --out DIR or set MEDADAPT_DATA_DIR", file=sys.stderr)
        return 2
    try:
        archive = (Path(args.archive).expanduser() if args.archive else
                   statpearls.download(statpearls.ARCHIVE_URL, cfg.paths.resolve("cache_dir") / "downloads"))
        if not archive.exists():
            print(f"error: {archive} does not exist", file=sys.stderr)
            return 2
        out, n, failed = statpearls.prepare(archive, out_dir)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in failed:
        print(f"skipped {line}", file=sys.stderr)
    print(f"{n} snippets in {out} ({len(failed)} articles skipped); corpus name: local:{out_dir.name}")
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
