"""Run the evaluation: retrieve once for RAG variants, score every variant on the same items, build the results dict.

The results dict (written as JSON by :mod:`eval.run`) is the contract with the Benchmarks tab, see
:func:`new_results`. Heavy imports (torch, peft, the engine, the retriever) happen inside functions.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone

from medadapt.config import AppConfig, to_dict
from medadapt.data.benchmarks import BenchItem, benchmark, item_ids
from medadapt.prompts import fit_to_budget
from eval.prompting import continuations, item_messages, loglik_prompt
from eval.calibration import (CONTENT_FREE, CONTENT_FREE_FILL, content_free_items, content_free_snippets, label_space,
                              letter_prior, prior_spread)
from eval.scoring import option_probs
from eval.views import LOGLIK_VIEWS, TEXT_NORM_UNIT, cot_view, loglik_row_views
from eval.variants import Variant, activate, load_for_variants, model_folder, set_threads

SCHEMA = 1
Progress = Callable[..., None]  # progress(done=, total=, variant=, benchmark=)


class StopRequested(RuntimeError):
    """The run was asked to stop (``STOP`` file or SIGTERM); results so far are kept."""


def new_results(cfg: AppConfig, mode: str, samples: dict[str, list[BenchItem]], variants: list[Variant]) -> dict:
    """The skeleton of a results file: run metadata, the items (without PubMedQA abstracts) and empty variants."""
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": cfg.profile,
        "mode": mode,
        "views": list(LOGLIK_VIEWS) if mode == "loglik" else [cot_view(cfg.eval.think_budget)],
        "text_norm_unit": TEXT_NORM_UNIT,
        "model": {"name_or_path": cfg.model.name_or_path, "display_name": cfg.model.display_name,
                  "dtype": cfg.model.dtype},
        "config": {"eval": to_dict(cfg.eval), "rag": to_dict(cfg.rag)},
        "tasks": {name: benchmark(name).source for name in samples},
        "item_ids": item_ids(samples),
        "items": {name: [{"id": it.id, "question": it.question, "options": it.options, "answer": it.answer,
                          "subject": it.subject} for it in items] for name, items in samples.items()},
        "variants": {v.name: {"adapter": v.adapter, "rag": v.rag, "adapter_meta": v.meta,
                              **({"status": "skipped", "reason": v.skipped} if v.skipped else {"status": "pending"}),
                              "predictions": {}, "timing": {}} for v in variants},
        "retrieval": {},
    }


def retrieve_all(cfg: AppConfig, samples: dict[str, list[BenchItem]], k: int) -> dict[str, dict[str, list]]:
    """``{benchmark: {item id: [Snippet, ...]}}`` for every item (raises the retriever's IndexNotBuiltError)."""
    from medadapt.rag import Retriever

    retriever = Retriever.open(cfg)
    return {name: {it.id: list(retriever.retrieve(it.question, k)) for it in items} for name, items in samples.items()}


def seen_in_training(cfg: AppConfig, variant: Variant, samples: dict[str, list[BenchItem]]) -> list[str]:
    """``benchmark/id`` of every evaluated item the variant's adapter was trained on (see ``trained_overlap``)."""
    from medadapt.data.sft import trained_overlap

    data = variant.meta.get("data")
    if not isinstance(data, dict):
        return []
    return sorted({f"{o.benchmark}/{o.item_id}" for o in trained_overlap(cfg, data, samples)})


def loglik_requests(cfg, tok, items: list[BenchItem], snippets_of: Callable[[BenchItem], list | None],
                    circular: bool = True) -> list:
    """One :class:`eval.loglik.BranchRequest` per item: its prompt under every cyclic rotation of its options
    (rotation 0 also scores the option texts), sharing the prompt's longest common token prefix (the system text,
    snippets, abstract and question come before the options in every prompt style)."""
    from eval.circular import rotate
    from eval.loglik import encode_branches

    ec = cfg.eval
    render = lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # noqa: E731
    reqs = []
    for it in items:
        snips = snippets_of(it)
        k = len(it.options) if circular else 1
        contexts, targets = [], []
        for r in range(k):
            options, answer = rotate(it.options, it.answer, r)
            rot = replace(it, options=options, answer=answer)
            contexts.append(loglik_prompt(rot, ec.prompt_style, render, snips, cfg.model.system_prompt))
            targets.append({"letter": continuations(rot, "letter", ec.prompt_style)} if r else
                           {t: continuations(it, t, ec.prompt_style) for t in ("letter", "text")})
        reqs.append(encode_branches(tok, contexts, targets, ec.prompt_style == "plain", cfg.model.max_context))
    return reqs


def content_free_request(cfg, tok, item: BenchItem, rag: bool):
    """The content-free copies of a benchmark's first item as one request of branches (they share the template)."""
    from eval.loglik import encode_branches

    ec = cfg.eval
    render = lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # noqa: E731
    free = content_free_items(item)
    contexts = [loglik_prompt(cf, ec.prompt_style, render, content_free_snippets(cf.question, cfg.rag.top_k)
                              if rag else None, cfg.model.system_prompt) for cf in free]
    targets = [{"letter": continuations(cf, "letter", ec.prompt_style)} for cf in free]
    return encode_branches(tok, contexts, targets, ec.prompt_style == "plain", cfg.model.max_context)


def _loglik_variant(cfg, model, tok, variant, samples, snippets, progress, should_stop) -> tuple[dict, dict, dict]:
    """Every item in every loglik view (one row per item: its rotations share the prompt's prefix), plus the
    variant's content-free and batch priors."""
    from eval.loglik import score_branches

    ec = cfg.eval
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    preds, timing, priors = {}, {}, {}
    total = sum(len(v) for v in samples.values())
    done = 0
    for name, items in samples.items():
        t0 = time.perf_counter()

        def snippets_of(it: BenchItem, _name=name):
            return fit_to_budget(snippets[_name][it.id], count, cfg.rag.context_tokens) if variant.rag else None

        reqs = [content_free_request(cfg, tok, items[0], variant.rag)] + loglik_requests(cfg, tok, items, snippets_of)

        def on_batch(rows_done: int, rows_total: int, _base=done, _n=len(items), _name=name) -> None:
            if should_stop():
                raise StopRequested(f"stopped during {variant.name}/{_name}")
            progress(done=_base + round(_n * rows_done / rows_total), total=total, variant=variant.name,
                     benchmark=_name)

        with activate(model, variant):
            scores = score_branches(model, reqs, ec.batch_size, tok.pad_token_id, on_batch)
        free = [br["letter"] for br in scores[0]]
        cf_prior = letter_prior(free)
        item_lps = [{"letter": s[0]["letter"], "text": s[0]["text"], "rotations": [b["letter"] for b in s[1:]]}
                    for s in scores[1:]]
        batch = letter_prior([x["letter"] for x in item_lps])
        letters = list(items[0].options)
        priors[name] = {"letters": letters, "prior": [round(p, 4) for p in cf_prior],
                        **{k: [round(x, 4) for x in v] for k, v in prior_spread(free).items()},
                        "copies": len(free), "content_free": list(CONTENT_FREE), "fill": list(CONTENT_FREE_FILL),
                        "label_space": label_space(items[0]), "batch_prior": [round(p, 4) for p in batch]}
        rows = []
        for it, req, lps in zip(items, reqs[1:], item_lps):
            letters = list(it.options)
            views = loglik_row_views(lps, it.options, it.answer, cf_prior, batch)
            probs = option_probs(lps["letter"])
            rows.append({"id": it.id, **views["letter"], "views": views,
                         "prompt_tokens": len(req.prefix) + len(req.branches[0].suffix),
                         "logprobs": {t: [round(x, 4) for x in v] if t != "rotations" else
                                      [[round(x, 4) for x in r] for r in v] for t, v in lps.items()},
                         "raw": "  ".join(f"{k}: {p:.2f}" for k, p in zip(letters, probs))})
        preds[name] = rows
        done += len(items)
        timing[name] = round(time.perf_counter() - t0, 2)
    return preds, timing, priors


def _generator(cfg: AppConfig, variants: list[Variant]):
    """``(generate(messages_list, variant) -> texts, opens_think, count_tokens)`` on the app's engine, adapters loaded
    by name; decoding as ``cfg.eval`` says (R1 on the reference profile: temperature 0.6, top-p 0.95, 4,096 tokens)."""
    from medadapt.engine import BASE, Engine, GenSettings

    ec, m = cfg.eval, cfg.model
    engine = Engine(model_folder(cfg), m.dtype, m.reasoning_template, trust_remote_code=m.trust_remote_code,
                    max_context=m.max_context)
    for v in variants:
        if v.adapter and not v.skipped and not engine.has_adapter(v.peft_name):
            engine.load_adapter(v.peft_name, v.adapter)
    settings = GenSettings(max_new_tokens=ec.max_new_tokens, temperature=ec.temperature, top_p=ec.top_p, seed=ec.seed,
                          repetition_penalty=ec.repetition_penalty, think_budget=ec.think_budget)

    def gen(msgs: list, v: Variant, should_stop: Callable[[], bool] = lambda: False) -> list:
        final: list = []
        for final in engine.stream([(m, v.peft_name if v.adapter else BASE) for m in msgs], settings):
            if should_stop():  # checked every decode step, so a stop does not wait for the whole batch
                raise StopRequested(f"stopped during {v.name}")
        return final

    return gen, engine.prompt_opens_think(), engine.count_tokens


def _cot_variant(cfg, gen, opens_think, count, variant, samples, snippets, progress, should_stop) -> tuple[dict, dict]:
    preds, timing = {}, {}
    total = sum(len(v) for v in samples.values())
    done = 0
    bs = max(1, cfg.eval.batch_size)
    view_name = cot_view(cfg.eval.think_budget)
    for name, items in samples.items():
        t0 = time.perf_counter()
        spec = benchmark(name)
        rows = []
        for b in range(0, len(items), bs):
            if should_stop():
                raise StopRequested(f"stopped during {variant.name}/{name}")
            chunk = items[b:b + bs]
            msgs = [item_messages(it, fit_to_budget(snippets[name][it.id], count, cfg.rag.context_tokens)
                                  if variant.rag else None, cfg.model.system_prompt) for it in chunk]
            for it, row in zip(chunk, gen(msgs, variant, should_stop)):
                letter, how = spec.read_answer(row.text, it, opens_think)
                view = {"pred": letter, "correct": letter == it.answer, "invalid": letter is None}
                rows.append({"id": it.id, **view, "views": {view_name: view}, "filter": how, "raw": row.text,
                             "budget_closed": row.budget_closed})
            progress(done=done + len(rows), total=total, variant=variant.name, benchmark=name)
        preds[name] = rows
        done += len(items)
        timing[name] = round(time.perf_counter() - t0, 2)
    return preds, timing


def evaluate(cfg: AppConfig, variants: list[Variant], samples: dict[str, list[BenchItem]], mode: str,
             progress: Progress = lambda **_: None, should_stop: Callable[[], bool] = lambda: False,
             on_variant: Callable[[dict], None] = lambda _: None) -> dict:
    """Score every non-skipped variant on ``samples``; ``on_variant(results)`` after each (for partial saves)."""
    if mode not in ("loglik", "cot"):
        raise ValueError(f"unknown mode {mode!r}; use loglik or cot")
    results = new_results(cfg, mode, samples, variants)
    snippets: dict = {name: {} for name in samples}
    if any(v.rag and not v.skipped for v in variants):
        try:
            t0 = time.perf_counter()
            snippets = retrieve_all(cfg, samples, cfg.rag.top_k)
            results["retrieval"] = {"k": cfg.rag.top_k, "wall_s": round(time.perf_counter() - t0, 2), "snippets": {
                name: {i: [{"id": s.id, "title": s.title, "score": round(float(s.score), 4)} for s in ss]
                       for i, ss in per.items()} for name, per in snippets.items()}}
        except Exception as e:  # noqa: BLE001 — IndexNotBuiltError, missing rag module, ...: skip RAG variants only
            for v in variants:
                if v.rag and not v.skipped:
                    v.skipped = f"retrieval unavailable: {type(e).__name__}: {e}"
                    results["variants"][v.name].update(status="skipped", reason=v.skipped)
    todo = [v for v in variants if not v.skipped]
    for v in todo:
        if v.adapter:
            results["variants"][v.name]["seen_in_training"] = seen_in_training(cfg, v, samples)
    if not todo:
        return results
    t_load = time.perf_counter()
    if mode == "loglik":
        set_threads(cfg)
        model, tok = load_for_variants(cfg, todo)
    else:
        gen, opens_think, count = _generator(cfg, todo)
    results["load_s"] = round(time.perf_counter() - t_load, 2)
    for v in todo:
        entry = results["variants"][v.name]
        entry["status"] = "running"
        t0 = time.perf_counter()
        if mode == "loglik":
            preds, timing, entry["calibration"] = _loglik_variant(cfg, model, tok, v, samples, snippets, progress,
                                                                  should_stop)
        else:
            preds, timing = _cot_variant(cfg, gen, opens_think, count, v, samples, snippets, progress, should_stop)
        wall = time.perf_counter() - t0
        n = sum(len(p) for p in preds.values())
        entry.update(status="ok", predictions=preds, timing={"wall_s": round(wall, 2), "per_benchmark_s": timing,
                                                              "items": n, "items_per_s": round(n / wall, 3)})
        on_variant(results)
    return results
