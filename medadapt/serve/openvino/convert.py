"""``python -m medadapt.serve.openvino.convert --model HF_DIR --out DIR --precision int8``: the CPU engine's graph of a model.

Runs in the engine's venv (:func:`medadapt.serve.cpu_engine.ensure_graph` starts it and shows its ``STAGE`` lines in the
Compare columns): traces :mod:`medadapt.serve.openvino.graph`, compresses the weights with NNCF and saves the OpenVINO IR (the
server compiles it on its first start and keeps the compiled blob in OpenVINO's model cache).
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from medadapt.serve.openvino.graph import PRECISIONS, GraphError, export

    p = argparse.ArgumentParser(prog="python -m medadapt.serve.openvino.convert", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--precision", default="int8", choices=PRECISIONS)
    p.add_argument("--group-size", type=int, default=128, help="int4 weights: values per scale")
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    def stage(text: str) -> None:
        print(f"STAGE {text} ({time.perf_counter() - t0:.0f} s so far)", flush=True)

    try:
        export(args.model, args.out, args.precision, args.group_size, log=stage)
    except GraphError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stage("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
