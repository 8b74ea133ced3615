"""Open questions answered as open questions: how often a variant's answer to a question asked without options
restates the question or names an option letter that was never offered (issue 37's failure: "The answer is A
58-year-old woman has fatigue, pallor and a low MCV").

Prompts are held out: benchmark questions outside the evaluated samples and outside every training row, that read as
open questions once their options are dropped (MedQA vignettes whose last sentence "Which of the following is the
most likely …?" becomes "What is the most likely …?"; MedMCQA questions without an explanation, so never a training
row, that do not name their options). A seeded shuffle splits them into ``validation`` (for choosing recipe
settings) and ``test`` (the reported figure); neither touches an evaluated item.

Each prompt is posed exactly as the Compare tab poses a question (``build_messages``, no snippets) and decoded with
the profile's Compare settings (``cfg.generation``: the offline profile samples at temperature 0.2 with a thinking
budget), one seeded sample per prompt. An answer is the text after the reasoning; it

- **restates** the question when at least half of its words (the "The answer is" lead aside) lie in runs of
  :data:`RUN_WORDS` or more consecutive question words and it adds fewer than two content words of its own;
- **names a letter** when it commits to an option letter (``The answer is B.``, ``Answer: (C)``, a leading ``A.``)
  though no option was offered;
- is **unfinished** when the reasoning never closed (no answer at all; counted apart).

    python -m eval.open_answers --variants base,sft,msft --split test [--n 100] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medadapt.config import AppConfig

RUN_WORDS = 5  # a run of this many consecutive question words copied into the answer counts as restating
SPLITS = ("validation", "test")
SPLIT_SEED = 4737
LEAD = re.compile(r"^\W*(?:the\s+)?(?:final\s+)?(?:answer|diagnosis)\s*(?:is|:)\s*", re.IGNORECASE)
# an option letter committed to: "The answer is B.", "Answer: (C)", "option D", "A." opening the answer; never the
# article of "The answer is A 58-year-old …" (that answer is a restatement)
LETTER = re.compile(r"(?:\b(?:answer|option|choice)\b\s*(?:is|would be|:)?\s*(?:option|choice)?\s*[:\-]?\s*"
                    r"\(?\**([A-E])\**\)?(?=\s*(?:[.):,;]|$))|^\W*\(?([A-E])[.):](?:\s|$))",
                    re.IGNORECASE | re.MULTILINE)
STOPWORDS = frozenset("""a an the of in on at to for and or but is are was were be been being with by from as that this
these those which what who whom whose it its their his her he she they them than then so such not no yes most more
likely answer final would should could will may might can do does did has have had there here into over under""".split())
WHICH = re.compile(r"\bWhich of the following (is|are|was|were|would|will|should|could|best|most)\b")


@dataclass(frozen=True)
class OpenPrompt:
    id: str  # "<benchmark>/<item id>"
    question: str


# ---------------------------------------------------------------- classification (pure)

def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower())


def restates(answer: str, question: str) -> bool:
    """Whether ``answer`` repeats ``question`` instead of answering it (see the module doc)."""
    a, q = words(LEAD.sub("", answer.strip())), words(question)
    if not a or len(q) < RUN_WORDS:
        return False
    grams = {tuple(q[i:i + RUN_WORDS]) for i in range(len(q) - RUN_WORDS + 1)}
    covered = [False] * len(a)
    for i in range(len(a) - RUN_WORDS + 1):
        if tuple(a[i:i + RUN_WORDS]) in grams:
            covered[i:i + RUN_WORDS] = [True] * RUN_WORDS
    qset = set(q)
    new = [w for w, c in zip(a, covered) if not c and w not in STOPWORDS and w not in qset]
    return sum(covered) >= len(a) / 2 and len(new) < 2


def names_letter(answer: str) -> str | None:
    """The option letter ``answer`` commits to (none was offered), or None."""
    m = LETTER.search(answer)
    return (m.group(1) or m.group(2)).upper() if m else None


def classify(raw: str, question: str, opened: bool = False) -> dict[str, Any]:
    """``{"answer", "restates", "letter", "unfinished", "failed"}`` for one generated output."""
    from medadapt.reasoning import CLOSE, split_reasoning

    parts = split_reasoning(raw, opened)
    answer = parts.answer.rsplit(CLOSE, 1)[-1].strip()
    unfinished = parts.truncated or not answer
    again = restates(answer, question) if answer else False
    letter = None if again or not answer else names_letter(answer)
    return {"answer": answer, "restates": again, "letter": letter, "unfinished": unfinished,
            "failed": again or letter is not None}


# ---------------------------------------------------------------- held-out prompts

def open_form(item: Any) -> str | None:
    """An option item's question as an open question, or None when it needs its options."""
    from medadapt.data.sft import stands_alone

    q = " ".join(item.question.split())
    if item.benchmark == "medqa":
        last = max(q.rfind(". "), q.rfind("? "))
        head, tail = (q[:last + 2], q[last + 2:]) if last >= 0 else ("", q)
        if not WHICH.match(tail):
            return None
        tail = WHICH.sub(lambda m: "What " + m.group(1), tail, count=1)
        q = head + tail
        return q if "following" not in q.lower() else None
    if item.benchmark == "medmcqa":
        return q if stands_alone(q) else None
    return None


def open_prompts(cfg: AppConfig, split: str = "test", n: int = 100) -> list[OpenPrompt]:
    """``n`` held-out open prompts of ``split`` (half MedQA, half MedMCQA): never an evaluated item (any seeded
    sample the config evaluates) nor a question inside an offline training row (every local SFT source)."""
    from medadapt.data import data_file, read_jsonl
    from medadapt.data.benchmarks import evaluated_items, load_benchmark
    from medadapt.data.sft import LOCAL_SOURCES, check_disjoint, load_local_rows

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    evaluated = {b: {str(i.id) for i in items} for b, items in evaluated_items(cfg).items()}
    no_exp = {str(r["id"]) for r in read_jsonl(data_file(cfg, "medmcqa", "dev.json")) if not (r.get("exp") or "").strip()}
    rows = load_local_rows(cfg, LOCAL_SOURCES)
    out: list[OpenPrompt] = []
    for bench, share in (("medqa", n // 2), ("medmcqa", n - n // 2)):
        pool = [it for it in load_benchmark(cfg, bench) if str(it.id) not in evaluated.get(bench, set())
                and (bench != "medmcqa" or str(it.id) in no_exp)]
        pool = [(it, q) for it, q in ((it, open_form(it)) for it in pool) if q]
        pool.sort(key=lambda p: str(p[0].id))
        random.Random(SPLIT_SEED).shuffle(pool)
        half = len(pool) // 2
        mine = pool[:half] if split == "validation" else pool[half:]
        taken = 0
        for it, q in mine:
            if taken == share:
                break
            if not check_disjoint(rows, [it]):
                out.append(OpenPrompt(f"{bench}/{it.id}", q))
                taken += 1
    return out


# ---------------------------------------------------------------- running variants

def answer_open(cfg: AppConfig, variant_specs: Sequence[str], prompts: Sequence[OpenPrompt],
                batch_size: int = 25, progress=None) -> dict[str, Any]:
    """Generate every variant's answer to every prompt on the app's engine with Compare's decoding settings and
    classify them; returns the results dict (``summary`` per variant, ``rows`` per variant)."""
    from eval.stats import mcnemar_exact, wilson_interval
    from eval.variants import model_folder, resolve_variants
    from medadapt.serve.engine import Engine
    from medadapt.serve.api import BASE, GenSettings
    from medadapt.prompts import build_messages

    variants = [v for v in resolve_variants(cfg, list(variant_specs))]
    missing = [f"{v.name}: {v.skipped}" for v in variants if v.skipped]
    if missing:
        raise ValueError("variants without an adapter: " + "; ".join(missing))
    m, g = cfg.model, cfg.generation
    engine = Engine(model_folder(cfg), m.dtype, m.reasoning_template, trust_remote_code=m.trust_remote_code,
                    max_context=m.max_context)
    for v in variants:
        if v.adapter:
            engine.load_adapter(v.peft_name, v.adapter)
    settings = GenSettings(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, seed=g.seed,
                           repetition_penalty=g.repetition_penalty, think_budget=g.think_budget)
    opened = engine.prompt_opens_think()
    msgs = [build_messages(p.question, system_role=m.system_prompt) for p in prompts]
    rows: dict[str, list[dict]] = {}
    timing: dict[str, float] = {}
    for v in variants:
        t0, out = time.perf_counter(), []
        for start in range(0, len(prompts), batch_size):
            chunk = msgs[start:start + batch_size]
            texts = engine.generate_batch(chunk, [v.peft_name if v.adapter else BASE] * len(chunk), settings)
            for p, raw in zip(prompts[start:start + batch_size], texts):
                out.append({"id": p.id, "question": p.question, "raw": raw, **classify(raw, p.question, opened)})
            if progress:
                progress(v.name, len(out), len(prompts))
        rows[v.name], timing[v.name] = out, round(time.perf_counter() - t0, 1)
    summary: dict[str, dict] = {}
    base = rows.get("base")
    for name, rs in rows.items():
        n = len(rs)
        k = sum(r["failed"] for r in rs)
        lo, hi = wilson_interval(k, n)
        entry = {"n": n, "failed": k, "share": k / n if n else 0.0, "ci_low": lo, "ci_high": hi,
                 "restates": sum(r["restates"] for r in rs), "letter": sum(r["letter"] is not None for r in rs),
                 "unfinished": sum(r["unfinished"] for r in rs), "wall_s": timing[name]}
        if base is not None and name != "base":
            entry["vs_base"] = mcnemar_exact([not r["failed"] for r in rs], [not r["failed"] for r in base])
        summary[name] = entry
    return {"kind": "open_answers", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "profile": cfg.profile,
            "decoding": asdict(settings), "run_words": RUN_WORDS, "n_prompts": len(prompts),
            "variants": {v.name: {"adapter": v.adapter, "adapter_meta": v.meta} for v in variants},
            "summary": summary, "rows": rows}


def summary_lines(results: dict[str, Any]) -> list[str]:
    out = []
    for name, s in results["summary"].items():
        vs = s.get("vs_base")
        out.append(f"{name}: {100 * s['share']:.1f}% [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}] restate or "
                   f"unoffered letter ({s['restates']} restate, {s['letter']} letter; {s['unfinished']} unfinished) "
                   f"of {s['n']}" + (f"; vs base p = {vs['p']:.3g}" if vs else ""))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.open_answers", description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="base,sft,msft", help="as python -m eval run (NAME=ADAPTER_DIR works)")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--n", type=int, default=100, help="prompts (half MedQA, half MedMCQA)")
    p.add_argument("--profile", default=None)
    p.add_argument("--batch_size", type=int, default=25)
    p.add_argument("--out", help="write the results JSON here")
    args = p.parse_args(argv)
    from medadapt.config import load_config

    cfg = load_config(args.profile)
    prompts = open_prompts(cfg, args.split, args.n)
    res = answer_open(cfg, [s for s in args.variants.split(",") if s.strip()], prompts, args.batch_size,
                      lambda v, done, total: print(json.dumps({"variant": v, "done": done, "total": total}),
                                                   flush=True))
    res["split"] = args.split
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1), encoding="utf-8")
    print("\n".join(summary_lines(res)))
    worst = max((s["share"] for n, s in res["summary"].items() if n != "base"), default=0.0)
    print(f"RESULT open_failed_max={100 * worst:.1f} " + " ".join(
        f"{n}_open_failed={100 * s['share']:.1f}" for n, s in res["summary"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
