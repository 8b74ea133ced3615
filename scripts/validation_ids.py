"""Write an ``--ids`` file of validation items: benchmark items outside the evaluated sample AND outside every
offline training row, for choosing a recipe without touching the evaluated items.

    python scripts/validation_ids.py --per 50 --out /tmp/val_ids.json
    python -m eval run --variants base,sft --ids /tmp/val_ids.json --mode loglik --profile offline

MedMCQA: dev rows without an explanation (rows with one are SFT rows); PubMedQA: official test items (the other
500 are SFT rows); MedQA and MMLU: no offline training row comes from them, but a question can still sit inside a
training row of another benchmark (the disjointness check's text match), so such items are skipped too. Seeded,
so the file is reproducible.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medadapt.config import load_config  # noqa: E402
from medadapt.data import data_file, read_jsonl  # noqa: E402
from medadapt.data.benchmarks import evaluated_items, load_benchmark, pubmedqa_test_ids  # noqa: E402
from medadapt.data.sft import check_disjoint, load_local_rows  # noqa: E402


def validation_ids(per: int, seed: int) -> dict[str, list[str]]:
    cfg = load_config("offline")
    evaluated = {b: {str(i.id) for i in items} for b, items in evaluated_items(cfg).items()}
    no_exp = {str(r["id"]) for r in read_jsonl(data_file(cfg, "medmcqa", "dev.json")) if not (r.get("exp") or "").strip()}
    pubmed_test = {str(i) for i in pubmedqa_test_ids(cfg)}
    keep = {"medmcqa": no_exp.__contains__, "pubmedqa": pubmed_test.__contains__}
    rows = load_local_rows(cfg)
    rng = random.Random(seed)
    out = {}
    for bench, ids in evaluated.items():
        pool = [i for i in load_benchmark(cfg, bench)
                if str(i.id) not in ids and keep.get(bench, lambda _: True)(str(i.id))]
        rng.shuffle(pool)
        chosen: list[str] = []
        for item in pool:  # one at a time: check_disjoint names one item per row, and a question can also sit
            if len(chosen) == per:  # inside another benchmark's training row
                break
            if not check_disjoint(rows, [item]):
                chosen.append(str(item.id))
        out[bench] = chosen
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per", type=int, default=50, help="items per benchmark")
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    ids = validation_ids(args.per, args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"item_ids": ids}, f)
    print(", ".join(f"{b}: {len(v)}" for b, v in ids.items()), "->", args.out)


if __name__ == "__main__":
    main()
