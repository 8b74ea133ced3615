"""Choose RAG's query form and snippet count on VALIDATION items (never on the evaluated ones), judged under the
circular and debiased views: the views a letter prior cannot raise.

    python scripts/validation_ids.py --per 30 --out /tmp/val_ids.json
    python scripts/choose_retrieval.py --ids /tmp/val_ids.json --out /tmp/choose_retrieval.json

Each grid point (``form:k``: ``question:3`` = today's one query of the bare question, top 3; ``question+option:2`` =
one query per option, 2 snippets each, fused) is a RAG loglik run on the option benchmarks' validation items (PubMedQA's
options are a label set: it keeps the question's own retrieval), next to base on the same items. The point with the
highest mean of circular and debiased accuracy wins (ties: the earlier, simpler point); every point is printed with
its 95% CI and its paired difference from base, so a choice inside the noise is visible as such. Last line:
``RESULT option_queries=<form> option_top_k=<k> circular=<acc> debiased=<acc> n=<items>``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OPTION_BENCHMARKS = ("medmcqa", "medqa", "mmlu_medical")
GRID = "question:3,question+option:2,question+option:1,option:1"
JUDGED = ("circular", "debiased")


def point_overrides(form: str, k: int) -> dict:
    """The rag settings of one grid point (``question``: one query, ``top_k`` snippets)."""
    return {"option_queries": form, **({"top_k": k} if form == "question" else {"option_top_k": k})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ids", required=True, help="an --ids file of validation items (scripts/validation_ids.py)")
    p.add_argument("--grid", default=GRID, help="comma list of form:k (default %(default)s)")
    p.add_argument("--dtype", default="float32", help="float32 is the fast one on CPUs without native bf16")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: model.num_threads)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from medadapt.config import load_config
    from medadapt.data.benchmarks import evaluated_items, select_ids
    from eval.decompose import gain
    from eval.evaluate import evaluate
    from eval.report import ALL, add_summaries
    from eval.variants import resolve_variants

    saved = json.loads(Path(args.ids).read_text(encoding="utf-8"))["item_ids"]
    model = {"dtype": args.dtype, **({"num_threads": args.threads} if args.threads else {})}
    base_cfg = load_config("offline", {"model": model})
    evaluated = {b: {it.id for it in items} for b, items in evaluated_items(base_cfg).items()}
    ids = {b: v for b, v in saved.items() if b in OPTION_BENCHMARKS}
    clash = {b: sorted(set(v) & evaluated.get(b, set())) for b, v in ids.items()}
    if any(clash.values()):
        raise SystemExit(f"error: {args.ids} holds evaluated items: {clash}")
    report: dict = {"ids": args.ids, "points": []}
    base_res = None
    for spec in args.grid.split(","):
        form, k = spec.split(":")
        cfg = load_config("offline", {"model": model, "rag": point_overrides(form, int(k)),
                                      "eval": {"mode": "loglik"}})
        samples = select_ids(cfg, ids)
        names = ["rag"] if base_res else ["base", "rag"]
        res = add_summaries(evaluate(cfg, resolve_variants(cfg, names), samples, "loglik"))
        if res["variants"]["rag"].get("status") != "ok":
            raise SystemExit(f"error: RAG did not run: {res['variants']['rag'].get('reason')}")
        if base_res is None:
            base_res = res
        else:
            res["variants"]["base"] = base_res["variants"]["base"]
        point = {"form": form, "k": int(k), "views": {}}
        for view in JUDGED + ("letter",):
            s = res["summary_by_view"][view]["rag"][ALL]
            g = gain(res, "base", "rag", view)
            point["views"][view] = {"acc": s["acc"], "ci": [s["ci_low"], s["ci_high"]], "n": s["n"],
                                    "vs_base": g["diff"], "vs_base_ci": [g["ci_low"], g["ci_high"]], "p": g["p"]}
        point["score"] = sum(point["views"][v]["acc"] for v in JUDGED) / len(JUDGED)
        report["points"].append(point)
        print(f"{spec}: " + "; ".join(f"{v} {100 * x['acc']:.1f} [{100 * x['ci'][0]:.1f}, {100 * x['ci'][1]:.1f}] "
                                      f"(vs base {100 * x['vs_base']:+.1f}, p = {x['p']:.2g})"
                                      for v, x in point["views"].items()), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf-8")
    best = max(report["points"], key=lambda x: x["score"])  # max keeps the first of equal scores
    report["chosen"] = {"form": best["form"], "k": best["k"]}
    Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf-8")
    n = best["views"]["circular"]["n"]
    print(f"RESULT option_queries={best['form']} option_top_k={best['k']} "
          f"circular={best['views']['circular']['acc']:.3f} debiased={best['views']['debiased']['acc']:.3f} n={n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
