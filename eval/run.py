"""Evaluation CLI: score variants on the four medical benchmarks and write a results JSON.

Run::

    python -m eval run --variants base,rag,sft,msft --n 200 --mode loglik [--benchmarks medqa,pubmedqa]
                       [--profile offline] [--out PATH] [--output_dir RUN_DIR] [--ids OLD_RESULTS.json]
    python -m eval summary results/offline/loglik-*.json
    python -m eval merge A.json B.json --out C.json
    python -m eval rescore RESULTS.json [--out NEW.json]   # every loglik view the stored log-probs allow (eval.rescore)
    python -m eval perplexity [--variants base,cpt=DIR,msft=DIR]  # CPT's held-out passages + a control (eval.perplexity)
    python -m eval run --backend lm-eval --variants base,sft --n 200    # lm-evaluation-harness scores (eval.lmeval)
    python -m eval run --protocol study --variants base,sft,msft     # the original study's protocol (eval.study)
    python -m eval run --mode cot --engine openai ...                  # generate through an OpenAI-compatible server

Results go to ``<results_dir>/<profile>/<mode>-<YYYYmmdd-HHMMSS>.json`` (rewritten after each variant, so a long run
keeps what it has). Progress lines ``{"done", "total", "variant", "benchmark", "elapsed_s", "eta_s"}`` go to stdout
as JSONL and, with ``--output_dir D``, to ``D/log.jsonl`` next to ``D/status.json`` (the run-dir contract,
:mod:`medadapt.jobs.rundir`); a ``D/STOP`` file or SIGTERM stops after the current batch.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from medadapt.jobs.rundir import RunDir, write_json_atomic

VARIANTS_DEFAULT = "base,rag,sft,msft"


def make_parser() -> argparse.ArgumentParser:
    from medadapt.data.benchmarks import BENCHMARKS

    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="evaluate variants and write a results JSON")
    r.add_argument("--variants", default=VARIANTS_DEFAULT,
                   help="comma list: base, rag, sft, msft, NAME=ADAPTER_DIR, any with +rag (default %(default)s)")
    r.add_argument("--mode", choices=["loglik", "cot"], help="scoring mode (default: the profile's eval.mode)")
    r.add_argument("--n", type=int, help="items per benchmark; 0 = all (default: eval.n)")
    r.add_argument("--seed", type=int, help="sampling seed (default: eval.seed)")
    r.add_argument("--benchmarks", help=f"comma list of {', '.join(BENCHMARKS)} (default: all)")
    r.add_argument("--ids", help="reuse the exact items of an earlier results JSON")
    r.add_argument("--batch_size", type=int, help="rows per forward / generations per batch (default: eval.batch_size)")
    r.add_argument("--max_new_tokens", type=int, help="cot: generation budget (default: eval.max_new_tokens)")
    r.add_argument("--temperature", type=float, help="cot: sampling temperature, 0 = greedy (default: eval.temperature)")
    r.add_argument("--top_p", type=float, help="cot: nucleus sampling (default: eval.top_p)")
    r.add_argument("--repetition_penalty", type=float, help="cot: 1 = off (default: eval.repetition_penalty)")
    r.add_argument("--think_budget", type=int, help="cot: tokens inside <think> before </think> is forced; > 0 "
                   "records the cot_budget view (default: eval.think_budget, 0 = off)")
    r.add_argument("--prompt_style", choices=["chat", "plain"], help="loglik prompt (default: eval.prompt_style)")
    r.add_argument("--profile", help="offline | reference | auto | a YAML path (default: MEDADAPT_PROFILE or auto)")
    r.add_argument("--model", help="base model override (Hub id or folder)")
    r.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="inference dtype (default: model.dtype)")
    r.add_argument("--out", help="results JSON path (default: <results_dir>/<profile>/<mode>-<timestamp>.json)")
    r.add_argument("--output_dir", help="run dir for log.jsonl and status.json (UI jobs)")
    r.add_argument("--backend", choices=["project", "lm-eval"], default="project",
                   help="project: this package's batched scorer; lm-eval: lm-evaluation-harness (HFLM with the PEFT "
                        "adapter, vLLM on a GPU) on the same items and its default prompts, loglik only")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: model.num_threads; 0: torch's default)")
    r.add_argument("--option_queries", choices=["question", "question+option", "option"],
                   help="RAG on option questions: one query (question) or one per option, fused (default: "
                        "rag.option_queries)")
    r.add_argument("--option_top_k", type=int, help="RAG: snippets per option query (default: rag.option_top_k)")
    r.add_argument("--protocol", choices=["project", "study"], default="project",
                   help="project: this package's prompts, sampling and parser; study: the original study's notebooks "
                        "(raw prompt, its items, temperature 0.01, 4,096 tokens, its parser; mode cot; eval.study)")
    r.add_argument("--mmlu_per_subject", type=int, help="--protocol study: rows per MMLU subject entry before the "
                   "final cut to --n (default: the study's 50)")
    r.add_argument("--engine", choices=["local", "openai"], default="local",
                   help="cot: generate in process (local) or through an OpenAI-compatible server such as vLLM "
                        "(openai: MEDADAPT_OPENAI_BASE_URL, adapters as models, as Compare's remote backend)")
    s = sub.add_parser("summary", help="print the accuracy table and paired tests of a results JSON")
    s.add_argument("files", nargs="+")
    m = sub.add_parser("merge", help="combine the variants and views of results files into one")
    m.add_argument("files", nargs="+", help="results JSONs; FILE:base,rag takes only those variants of FILE")
    m.add_argument("--out", required=True)
    rs = sub.add_parser("rescore", help="re-score every loglik view the stored log-probs allow (text_norm per "
                        "character, text_sum, batch calibration; circular and debiased where rotations were stored)")
    rs.add_argument("file")
    rs.add_argument("--out", help="write here (default: rewrite FILE in place)")
    pp = sub.add_parser("perplexity", help="per-token perplexity of base, CPT and MSFT on CPT's held-out corpus "
                        "passages and a general-text control (eval.perplexity)")
    pp.add_argument("--variants", help="comma list: base, cpt=DIR, msft=DIR (default: base, the newest MSFT run's "
                    "CPT stage, the newest MSFT adapter)")
    pp.add_argument("--general", type=int, default=120, help="general-text control passages (default %(default)s)")
    pp.add_argument("--max_tokens", type=int, default=256, help="tokens scored per passage (default %(default)s)")
    pp.add_argument("--batch_size", type=int, default=8)
    pp.add_argument("--profile", help="offline | reference | auto | a YAML path")
    pp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="inference dtype (default: model.dtype)")
    pp.add_argument("--out", help="default: <results_dir>/<profile>/perplexity-<timestamp>.json")
    return p


def cmd_perplexity(args: argparse.Namespace) -> int:
    from medadapt.config import load_config
    from eval.perplexity_run import default_variants, run_perplexity

    cfg = load_config(args.profile, {"model": {"dtype": args.dtype}} if args.dtype else None)
    specs = [s for s in (args.variants or "").split(",") if s.strip()] or default_variants(cfg)
    res = run_perplexity(cfg, specs, args.general, args.max_tokens, args.batch_size)
    out = Path(args.out) if args.out else default_out(cfg, "perplexity")
    write_json_atomic(out, res)
    for name, label in ((n, s["label"]) for n, s in res["sets"].items()):
        print(f"{label}: " + "; ".join(f"{v} {m[name]['ppl']:.2f} [{m[name]['ci'][0]:.2f}, {m[name]['ci'][1]:.2f}]"
                                       for v, m in res["models"].items() if name in m))
    for pair, per in res["paired"].items():
        print(f"{pair}: " + "; ".join(f"{n} x{x['ratio']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]"
                                      for n, x in per.items()))
    print(f"perplexity written to {out}", flush=True)
    return 0


class Progress:
    """Progress lines on stdout and, with a run dir, its ``log.jsonl`` + ``status.json`` (:class:`RunDir`)."""

    def __init__(self, output_dir: str | None, variants: list[str], per_variant: int):
        self.run = RunDir(output_dir).create() if output_dir else None
        self.start = time.time()
        self.variants, self.per_variant = variants, per_variant
        self.stop = False
        if self.run:
            self.run.write_status({"status": "running", "job": "eval", "pid": os.getpid(), "started": self.start})

    def write_status(self, **update) -> None:
        if self.run:
            self.run.update_status(**update)

    def should_stop(self) -> bool:
        return self.stop or bool(self.run and self.run.stop_requested())

    def progress(self, done: int, total: int, variant: str, benchmark: str) -> None:
        k = self.variants.index(variant) if variant in self.variants else 0
        g_done, g_total = k * self.per_variant + done, len(self.variants) * self.per_variant
        elapsed = time.time() - self.start
        eta = elapsed / g_done * (g_total - g_done) if g_done else None
        rec = {"done": done, "total": total, "variant": variant, "benchmark": benchmark, "step": g_done,
               "total_steps": g_total, "elapsed_s": round(elapsed, 1),
               "eta_s": round(eta, 1) if eta is not None else None, "time": round(time.time(), 3)}
        print(json.dumps(rec), flush=True)
        if self.run:
            self.run.log(rec)


def default_out(cfg, mode: str) -> Path:
    return cfg.paths.resolve("results_dir") / cfg.profile / f"{mode}-{datetime.now():%Y%m%d-%H%M%S}.json"


def cmd_run(args: argparse.Namespace) -> int:
    from medadapt.config import ConfigError, load_config
    from medadapt.data.benchmarks import evaluated_items, select_ids
    from eval.evaluate import StopRequested, evaluate
    from eval.report import add_summaries
    from eval.variants import resolve_variants

    overrides: dict = {"eval": {k: v for k, v in {
        "n": args.n, "seed": args.seed, "mode": args.mode, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "prompt_style": args.prompt_style, "temperature": args.temperature,
        "top_p": args.top_p, "repetition_penalty": args.repetition_penalty, "think_budget": args.think_budget,
        "benchmarks": args.benchmarks.split(",") if args.benchmarks else None}.items() if v is not None}}
    if args.model:
        overrides["model"] = {"name_or_path": args.model, "display_name": Path(args.model).name}
    if args.dtype:
        overrides.setdefault("model", {})["dtype"] = args.dtype
    if args.threads is not None:
        overrides.setdefault("model", {})["num_threads"] = args.threads
    for key in ("option_queries", "option_top_k"):
        if getattr(args, key, None) is not None:
            overrides.setdefault("rag", {})[key] = getattr(args, key)
    lmeval = args.backend == "lm-eval"
    if lmeval:
        if (args.mode or "loglik") != "loglik" or (args.prompt_style or "plain") != "plain":
            raise ConfigError("--backend lm-eval scores log-likelihoods on lm-eval's own prompts: "
                              "--mode loglik --prompt_style plain")
        overrides["eval"].update(mode="loglik", prompt_style="plain")
    study = args.protocol == "study"
    if study:
        from eval import study as study_protocol

        if lmeval or (args.mode or "cot") != "cot" or args.think_budget:
            raise ConfigError("--protocol study generates as the study did: mode cot, the project's backend, no "
                              "thinking budget")
        for key, value in {**study_protocol.DECODING, "mode": "cot", "seed": study_protocol.SEED,
                           "n": study_protocol.NUM_SAMPLES, "repetition_penalty": 1.0, "think_budget": 0}.items():
            overrides["eval"].setdefault(key, value)
    if args.engine != "local" and (lmeval or (args.mode or "") == "loglik"):
        raise ConfigError("--engine openai generates (mode cot); log-likelihoods are scored in process")
    cfg = load_config(args.profile, overrides)
    mode = cfg.eval.mode
    if args.engine != "local" and mode != "cot":
        raise ConfigError(f"--engine {args.engine} generates: use --mode cot (the profile's eval.mode is {mode})")
    variants = resolve_variants(cfg, [s for s in args.variants.split(",") if s.strip()])
    protocol = None
    saved = json.loads(Path(args.ids).read_text(encoding="utf-8")) if args.ids else None
    if saved is not None and saved.get("protocol") == "study":  # the study's items, whichever protocol runs now
        from eval.study import protocol_from_results

        from_file = protocol_from_results({**saved, "item_ids": {b: ids for b, ids in saved["item_ids"].items()
                                                                   if b in cfg.eval.benchmarks}})
        samples, protocol = from_file.samples(), from_file if study else None
    elif study:
        if saved is not None:
            raise ConfigError("--protocol study samples the study's own items: --ids takes a study run's file")
        per = args.mmlu_per_subject if args.mmlu_per_subject is not None else study_protocol.MMLU_PER_ENTRY
        protocol = study_protocol.StudyProtocol(
            study_protocol.study_items(cfg.eval.benchmarks, cfg.eval.n, cfg.eval.seed, per),
            cfg.eval.seed, cfg.eval.n, per)
        samples = protocol.samples()
    elif saved is not None:
        samples = select_ids(cfg, {b: ids for b, ids in saved["item_ids"].items() if b in cfg.eval.benchmarks})
    else:
        samples = evaluated_items(cfg)
    out = Path(args.out) if args.out else default_out(cfg, "lmeval" if lmeval else "study" if study else mode)
    todo = [v.name for v in variants if not v.skipped]
    if lmeval:
        from eval.lmeval import SUFFIX

        todo = [v.name + SUFFIX for v in variants if not v.skipped and not v.rag]
    run = Progress(args.output_dir, todo, sum(len(v) for v in samples.values()))
    for v in variants:
        if v.skipped:
            print(f"skipping variant {v.name}: {v.skipped}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: setattr(run, "stop", True))
    partial: dict = {}

    def save(results: dict) -> None:
        partial["results"] = results
        results["wall_s"] = round(time.time() - run.start, 2)
        add_summaries(results)
        write_json_atomic(out, results)

    try:
        if lmeval:
            from eval.lmeval import evaluate_lmeval

            results = evaluate_lmeval(cfg, variants, samples, run.progress, run.should_stop, save)
        else:
            results = evaluate(cfg, variants, samples, mode, run.progress, run.should_stop, save, protocol,
                               args.engine)
        save(results)
        for name, entry in results["variants"].items():
            if entry.get("seen_in_training"):
                print(f"warning: {len(entry['seen_in_training'])} evaluated items were in {name}'s training data "
                      f"(e.g. {entry['seen_in_training'][0]}); its accuracy on them is not a held-out score",
                      file=sys.stderr, flush=True)
    except StopRequested as e:
        if partial:
            for entry in partial["results"]["variants"].values():
                if entry.get("status") in ("running", "pending"):
                    entry.update(status="stopped", reason=str(e))
            save(partial["results"])
        run.write_status(status="stopped", ended=time.time(), error=str(e), results=str(out) if partial else None,
                         wall_s=round(time.time() - run.start, 2))
        print(f"stopped: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if partial:
            save(partial["results"])
        run.write_status(status="failed", ended=time.time(), error=f"{type(e).__name__}: {e}",
                         wall_s=round(time.time() - run.start, 2))
        raise
    run.write_status(status="finished", ended=time.time(), results=str(out), wall_s=round(time.time() - run.start, 2),
                     steps=run.per_variant * len(todo))
    print_summary(results)
    print(f"results written to {out}", flush=True)
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from eval.rescore import rescore_text_norm, rescore_views

    path = Path(args.file)
    results = json.loads(path.read_text(encoding="utf-8"))
    stats = rescore_text_norm(results)
    if not stats["rows"]:
        print(f"error: {path} has no rows with stored option-text log-probabilities", file=sys.stderr)
        return 2
    views = rescore_views(results)
    out = Path(args.out) if args.out else path
    write_json_atomic(out, results)
    print(f"text_norm re-scored per character on {stats['rows']} rows: {stats['changed']} predictions changed "
          f"{json.dumps(stats['by_variant'])}; views from the stored log-probs: {', '.join(views['views'])} "
          f"(predictions changed per view: {json.dumps(views['changed'])}); written to {out}")
    return 0


def print_summary(results: dict) -> None:
    from eval.report import paired_tests, summary_table

    header, rows = summary_table(results)
    print(f"\n{results['mode']} · {results['model']['display_name']} · {results['created']}")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(c) for c in r))
    for t in paired_tests(results):
        if t["benchmark"] == "average":
            print(f"McNemar {t['a']} vs {t['b']} (pooled, n={t['n']}): only-{t['a']}={t['only_a']} "
                  f"only-{t['b']}={t['only_b']} p={t['p']:.3g}")


def _same_run_setup(a: dict | None, b: dict) -> bool:
    return bool(a) and a.get("status") == b.get("status") == "ok" and \
        (a.get("adapter"), a.get("rag")) == (b.get("adapter"), b.get("rag"))


def _extend_variant(mine: dict, other: dict) -> None:
    """Add ``other``'s predictions on items ``mine`` lacks; wall times add up."""
    added = 0
    for b, rows in other.get("predictions", {}).items():
        have = {r["id"] for r in mine["predictions"].get(b, [])}
        new = [r for r in rows if r["id"] not in have]
        mine["predictions"].setdefault(b, []).extend(new)
        added += len(new)
    t, o = mine.setdefault("timing", {}), other.get("timing", {})
    if "wall_s" in t and "wall_s" in o and added:
        t["wall_s"] = round(t["wall_s"] + o["wall_s"], 2)
        t["items"] = sum(len(r) for r in mine["predictions"].values())
        t["items_per_s"] = round(t["items"] / t["wall_s"], 3)
        per = t.setdefault("per_benchmark_s", {})
        for b, sec in o.get("per_benchmark_s", {}).items():
            per[b] = round(per.get(b, 0) + sec, 2)


def normalize_views(results: dict) -> dict:
    """Give a generated view of every prediction row its own ``filter`` and ``raw``, so rows of different modes can
    share one row."""
    from eval.views import GENERATED_VIEWS, views_of

    for entry in results.get("variants", {}).values():
        for rows in entry.get("predictions", {}).values():
            for r in rows:
                views = r["views"]
                for name in GENERATED_VIEWS:
                    if name in views:
                        for key, empty in (("filter", ""), ("raw", ""), ("budget_closed", False)):
                            views[name].setdefault(key, r.get(key, empty))
    results["views"] = views_of(results)
    return results


def _add_views(mine: dict, other: dict, mine_run: str, other_run: str) -> None:
    """Put ``other``'s views (another run, same variant) into ``mine``'s rows of the same items."""
    for b, rows in other.get("predictions", {}).items():
        by_id = {r["id"]: r for r in mine["predictions"].setdefault(b, [])}
        for r in rows:
            if r["id"] in by_id:
                for view, v in r["views"].items():
                    by_id[r["id"]]["views"].setdefault(view, v)
            else:
                mine["predictions"][b].append(r)
    timing = mine.setdefault("timing_by_mode", {mine_run: mine.get("timing", {})})
    timing[other_run] = other.get("timing_by_mode", {}).get(other_run) or other.get("timing", {})


def merge_results(files: list[dict]) -> dict:
    """One results dict with every finished variant of ``files``.

    Items are the union (a smaller seeded sample is a prefix of a larger one, so runs at different ``--n`` overlap);
    each variant keeps its own predictions and the paired tests use the items both variants answered. The same
    variant (same adapter and retrieval) finished in two files is extended with the items it lacked (same mode) or
    gets the other file's scoring views on the same items (a cot run merged into a loglik run; a run under a
    thinking budget is another run than one without).
    """
    from eval.report import add_summaries
    from eval.views import results_run, views_of

    base = normalize_views(json.loads(json.dumps(files[0])))
    base_run = results_run(base)
    for other in files[1:]:
        other_run = results_run(other)
        other = normalize_views(json.loads(json.dumps(other)))
        for b, ids in other["item_ids"].items():  # union of items; paired tests use the common ones
            known = set(base["item_ids"].get(b, []))
            by_id = {it["id"]: it for it in other["items"][b]}
            extra = [i for i in ids if i not in known]
            base["item_ids"].setdefault(b, []).extend(extra)
            base["items"].setdefault(b, []).extend(by_id[i] for i in extra)
        for name, entry in other["variants"].items():
            mine = base["variants"].get(name)
            if _same_run_setup(mine, entry):
                if other_run == base_run:
                    _extend_variant(mine, entry)  # the same variant on more items (e.g. the rest of a larger --n)
                else:
                    _add_views(mine, entry, base_run, other_run)
            elif entry.get("status") == "ok" or mine is None:
                if other_run != base_run:
                    entry["timing_by_mode"] = {other_run: entry.get("timing", {})}
                    entry["timing"] = {}
                base["variants"][name] = entry
        for b, per in other.get("retrieval", {}).get("snippets", {}).items():
            base.setdefault("retrieval", {}).setdefault("snippets", {}).setdefault(b, {}).update(per)
        base["views"] = views_of({"views": base["views"] + other["views"]})
        configs = base.setdefault("config_by_run", {base_run: base.get("config", {})})
        for run, config in (other.get("config_by_run") or {other_run: other.get("config", {})}).items():
            configs.setdefault(run, config)  # e.g. the cot run's decoding and think budget next to the loglik run's
    base["merged_from"] = [f.get("created") for f in files]
    add_summaries(base)
    return base


def read_results_arg(arg: str) -> dict:
    """A results JSON named on the command line; ``PATH:v1,v2`` keeps only those variants."""
    path, _, only = arg.partition(":") if not Path(arg).exists() else (arg, "", "")
    res = json.loads(Path(path).read_text(encoding="utf-8"))
    if only:
        keep = only.split(",")
        missing = [v for v in keep if v not in res.get("variants", {})]
        if missing:
            raise SystemExit(f"error: {path} has no variant {', '.join(missing)}")
        res["variants"] = {k: v for k, v in res["variants"].items() if k in keep}
    return res


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "run":
        from medadapt.config import ConfigError
        from medadapt.data import DataNotFoundError
        from eval.study import StudyDataError
        from eval.variants import VariantSpecError

        from medadapt.config import load_config
        from medadapt.jobs.lock import JobLockError, hold_job_lock

        try:
            with hold_job_lock(load_config(args.profile), args.output_dir or "(shell)", "eval"):
                return cmd_run(args)
        except (ConfigError, DataNotFoundError, VariantSpecError, StudyDataError, KeyError, JobLockError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "rescore":
        return cmd_rescore(args)
    if args.command == "perplexity":
        from medadapt.config import ConfigError
        from eval.variants import VariantSpecError

        try:
            return cmd_perplexity(args)
        except (ConfigError, VariantSpecError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    loaded = [read_results_arg(f) for f in args.files]
    if args.command == "summary":
        for res in loaded:
            print_summary(res)
        return 0
    try:
        merged = merge_results(loaded)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json_atomic(Path(args.out), merged)
    print_summary(merged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
