"""The RAG index ready in seconds: ship the built LanceDB table, or build it fast on an AVX2-only CPU? Measures both.

1. **Ship**: install the shipped table into an empty index dir (:func:`medadapt.retrieval.index_pull.install_table`, what the
   first-run setup does), open the retriever (the embedder loads) and answer one query: ``ship_ready_s``.
2. **Build**: embed a sample of the profile's corpus with the index build's own embedder (:class:`Embedder`:
   length-sorted batches, the dtype ``pick_dtype`` chooses: float32 where the CPU has no native bfloat16), then the
   same sample with the embedder's linear layers quantized to int8 (``torch.ao.quantization.quantize_dynamic``:
   fbgemm's AVX2 kernels, an embedding runtime made for CPUs in PyTorch itself) and in arrival order without the
   length sort; each timed ``--rounds`` times alternating, extrapolated to the corpus's snippets
   (``build_*_s``; the full-text index after the embedding takes about a second more). int8 is also checked for
   what it changes: the cosine of its vectors to float32's.

    python bench/index_ready.py [--table-dir assets/shipped/offline/index] [--sample 256] [--rounds 2]

Last line: ``RESULT ship_ready_s=<s> build_fp32_s=<s> build_int8_s=<s> build_unsorted_s=<s> int8_cos_min=<c>
snippets=<n> table_mb=<mb> cpu_bf16=<0|1> avx512=<0|1> choice=<ship|build>``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cpu_flags() -> tuple[str, set[str]]:
    name, flags = "?", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name == "?":
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    return name, flags


def rate(encode, texts: list[str]) -> float:
    t0 = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="offline")
    p.add_argument("--table-dir", help="a folder holding the profile's table (default: the shipped release's)")
    p.add_argument("--sample", type=int, default=256, help="snippets embedded per timing")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    import numpy as np
    import torch

    from medadapt.config import load_config
    from medadapt.data.corpus import iter_corpus
    from medadapt.retrieval.index_pull import install_table
    from medadapt.precision import cpu_bf16
    from medadapt.retrieval.rag import Retriever
    from medadapt.retrieval.index import Embedder, load_embedder, unique_docs
    from medadapt.shipped import shipped_index

    name, flags = cpu_flags()
    avx512 = any(f.startswith("avx512") for f in flags)
    print(f"CPU: {name}; avx2={'avx2' in flags} avx512={avx512} amx={'amx_tile' in flags} "
          f"native bf16={cpu_bf16()}; torch threads {torch.get_num_threads()}")
    cfg = load_config(args.profile)
    src = Path(args.table_dir) if args.table_dir else shipped_index(cfg)
    if src is None:
        print("no shipped index: pass --table-dir (a built index dir)")
        return 2
    table = src / f"{cfg.rag.table}.lance"
    table_mb = sum(f.stat().st_size for f in table.rglob("*") if f.is_file()) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        cfg.paths.index_dir = tmp
        t0 = time.perf_counter()
        install_table(cfg, table)
        copied = time.perf_counter() - t0
        hits = Retriever.open(cfg).retrieve("Which vitamin deficiency causes megaloblastic anemia?")
        ship_s = time.perf_counter() - t0
        rows = Retriever.open(cfg).table.count_rows()
    print(f"ship: table {table_mb:.1f} MB copied in {copied:.2f} s; retriever open + first query {ship_s:.2f} s "
          f"({len(hits)} snippets); {rows:,} rows")

    docs = unique_docs(iter_corpus(cfg))
    texts = [d.contents for d in docs[:: max(1, len(docs) // args.sample)]][: args.sample]
    fp32 = load_embedder(cfg)
    int8 = Embedder(cfg.rag.embedder, "float32", cfg.rag.embed_threads)
    int8.model = torch.ao.quantization.quantize_dynamic(int8.model, {torch.nn.Linear}, dtype=torch.qint8)

    def unsorted(texts: list[str]):  # the same batches in arrival order (no length sort)
        size = 16
        return [fp32.model.encode(texts[i:i + size], batch_size=size, convert_to_tensor=True) for i in
                range(0, len(texts), size)]

    fp32.encode(texts[:16]), int8.encode(texts[:16])  # warm up
    rates: dict[str, list[float]] = {"fp32": [], "int8": [], "unsorted": []}
    for _ in range(args.rounds):
        rates["fp32"].append(rate(fp32.encode, texts))
        rates["int8"].append(rate(int8.encode, texts))
        rates["unsorted"].append(rate(unsorted, texts))
    cos = (fp32.encode(texts) * int8.encode(texts)).sum(1)
    est = {k: len(docs) / (sum(v) / len(v)) for k, v in rates.items()}
    for k, v in rates.items():
        print(f"build {k:8s}: {', '.join(f'{r:.1f}' for r in v)} snippets/s over {len(texts)} -> "
              f"{est[k]:.0f} s for {len(docs):,} snippets")
    print(f"int8 vs fp32 vectors: cosine min {cos.min():.4f}, mean {cos.mean():.4f} (fp32 dtype: {fp32.dtype})")
    choice = "ship" if ship_s < min(est.values()) else "build"
    print(f"RESULT ship_ready_s={ship_s:.1f} build_fp32_s={est['fp32']:.0f} build_int8_s={est['int8']:.0f} "
          f"build_unsorted_s={est['unsorted']:.0f} int8_cos_min={float(np.min(cos)):.4f} snippets={len(docs)} "
          f"table_mb={table_mb:.1f} cpu_bf16={int(cpu_bf16())} avx512={int(avx512)} choice={choice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
