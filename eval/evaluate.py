"""Run the evaluation: retrieve once for RAG variants, score every variant on the same items, build the results dict.

The results dict (written as JSON by :mod:`eval.run`) is the contract with the Benchmarks tab, see
:func:`new_results`. Heavy imports (torch, peft, the engine, the retriever) happen inside functions.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from medadapt.config import AppConfig, to_dict
from medadapt.data.benchmarks import BenchItem, benchmark, item_ids
from medadapt.prompts import fit_to_budget
from eval.prompting import continuations, item_messages, loglik_prompt
from eval.calibration import CONTENT_FREE, CONTENT_FREE_FILL, content_free_items, content_free_snippets, label_space
from eval.scoring import letter_prior, option_probs, prior_spread
from eval.views import LOGLIK_VIEWS, TEXT_NORM_UNIT, cot_view, loglik_row_views
from eval.variants import Variant, activate, load_for_variants, model_folder, set_threads

SCHEMA = 1
Progress = Callable[..., None]  # progress(done=, total=, variant=, benchmark=)


class StopRequested(RuntimeError):
    """The run was asked to stop (``STOP`` file or SIGTERM); results so far are kept."""


def new_results(cfg: AppConfig, mode: str, samples: dict[str, list[BenchItem]], variants: list[Variant],
                protocol: Any = None) -> dict:
    """The skeleton of a results file: run metadata, the items (without PubMedQA abstracts) and empty variants;
    ``protocol`` (:class:`eval.study.StudyProtocol`): the study's run, its views, settings and item sources."""
    views = list(LOGLIK_VIEWS) if mode == "loglik" else [cot_view(cfg.eval.think_budget)]
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": cfg.profile,
        "mode": mode,
        "protocol": protocol.name if protocol else "project",
        "views": list(protocol.views) if protocol else views,
        "text_norm_unit": TEXT_NORM_UNIT,
        "model": {"name_or_path": cfg.model.name_or_path, "display_name": cfg.model.display_name,
                  "dtype": cfg.model.dtype},
        "config": {"eval": to_dict(cfg.eval), "rag": to_dict(cfg.rag),
                   **({"study": protocol.settings} if protocol else {})},
        "tasks": {name: (protocol.tasks if protocol else {}).get(name) or benchmark(name).source for name in samples},
        "item_ids": item_ids(samples),
        "items": {name: [{"id": it.id, "question": it.question, "options": it.options, "answer": it.answer,
                          "subject": it.subject} for it in items] for name, items in samples.items()},
        "variants": {v.name: {"adapter": v.adapter, "rag": v.rag, "adapter_meta": v.meta,
                              **({"status": "skipped", "reason": v.skipped} if v.skipped else {"status": "pending"}),
                              "predictions": {}, "timing": {}} for v in variants},
        "retrieval": {},
    }


def retrieve_all(cfg: AppConfig, samples: dict[str, list[BenchItem]], k: int,
                 query: Callable[[str, BenchItem], str] | None = None, mode: str | None = None
                 ) -> dict[str, dict[str, list]]:
    """``{benchmark: {item id: [Snippet, ...]}}`` for every item (raises the retriever's IndexNotBuiltError); the
    query is the item's question unless ``query(benchmark, item)`` says otherwise (the study: its whole prompt)."""
    from medadapt.retrieval.rag import Retriever

    retriever = Retriever.open(cfg)
    ask = query or (lambda _name, it: it.question)

    def hits(name: str, it: BenchItem) -> list:
        if query is None and per_option_retrieval(cfg, it):  # one query per option, fused (issue 35)
            return retriever.retrieve_options(it.question, it.options, mode=mode)
        return retriever.retrieve(ask(name, it), k, mode)

    return {name: {it.id: list(hits(name, it)) for it in items} for name, items in samples.items()}


def per_option_retrieval(cfg: AppConfig, item: BenchItem) -> bool:
    """Whether RAG retrieves per option for ``item``: an option question whose options are content (not a fixed
    label set such as PubMedQA's yes/no/maybe) and ``rag.option_queries`` other than ``question``."""
    from eval.calibration import keeps_options

    return cfg.rag.option_queries != "question" and len(item.options) > 1 and not keeps_options(item)


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


ENGINES = ("local", "openai")  # --engine: the in-process engine, or an OpenAI-compatible server (vLLM)


class EngineRowError(RuntimeError):
    """A generation failed on the engine's side (e.g. the model server) twice; no answer is recorded for it."""


def eval_engine(cfg: AppConfig, kind: str = "local"):
    """The engine a cot run generates with: ``local`` (:class:`medadapt.serve.engine.Engine` on the base model folder) or
    ``openai`` (:class:`medadapt.serve.remote.OpenAIEngine`: the server Compare's remote backend uses, configured by the
    same ``MEDADAPT_OPENAI_*`` variables; adapters are served as models, loaded at run time when it lacks them)."""
    if kind not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {kind!r}")
    if kind == "openai":
        from medadapt.serve.remote import OpenAIEngine

        return OpenAIEngine.from_config(cfg)
    from medadapt.serve.engine import Engine

    m = cfg.model
    return Engine(model_folder(cfg), m.dtype, m.reasoning_template, trust_remote_code=m.trust_remote_code,
                  max_context=m.max_context)


def engine_record(engine, kind: str) -> dict:
    """What generated a run's answers, for its results file."""
    if kind == "openai":
        return {"kind": kind, "base_url": engine.base_url, "model": engine.model}
    return {"kind": kind}


def _generator(cfg: AppConfig, variants: list[Variant], engine_kind: str = "local"):
    """``(generate(prompts, variant) -> row states, opens_think, count_tokens, engine record)`` on the chosen engine,
    adapters loaded by name (a folder the engine already serves is reused); decoding as ``cfg.eval`` says (R1 on the
    reference profile: temperature 0.6, top-p 0.95, 4,096 tokens). A row the engine failed (a server error) is asked
    again once, then the run stops with :class:`EngineRowError`: a failure is never scored as an answer."""
    from pathlib import Path

    from medadapt.serve.api import BASE, GenSettings

    ec = cfg.eval
    engine = eval_engine(cfg, engine_kind)
    names: dict[str, str] = {}
    for v in variants:
        if v.adapter and not v.skipped:
            served = {Path(p).resolve(): n for n, p in engine.adapters.items()}
            names[v.name] = served.get(Path(v.adapter).resolve()) or v.peft_name
            if not engine.has_adapter(names[v.name]):
                engine.load_adapter(names[v.name], v.adapter)
    settings = GenSettings(max_new_tokens=ec.max_new_tokens, temperature=ec.temperature, top_p=ec.top_p, seed=ec.seed,
                          repetition_penalty=ec.repetition_penalty, think_budget=ec.think_budget)

    def run(prompts: list, v: Variant, should_stop: Callable[[], bool]) -> list:
        generation = engine.start([(p, names.get(v.name, BASE) if v.adapter else BASE) for p in prompts], settings)
        final: list = []
        try:
            for final in generation:
                if should_stop():  # checked every step, so a stop does not wait for the whole batch
                    raise StopRequested(f"stopped during {v.name}")
        finally:
            generation.close()
        return final

    def gen(prompts: list, v: Variant, should_stop: Callable[[], bool] = lambda: False) -> list:
        final = run(prompts, v, should_stop)
        failed = [i for i, st in enumerate(final) if st.finish_reason == "error"]
        if failed:
            again = run([prompts[i] for i in failed], v, should_stop)
            for i, st in zip(failed, again):
                if st.finish_reason == "error":
                    raise EngineRowError(f"{v.name}: the engine failed twice on a row: {st.error}")
                final[i] = st
        return final

    return gen, engine.prompt_opens_think(), engine.count_tokens, engine_record(engine, engine_kind)


def _cot_variant(cfg, gen, opens_think, count, variant, samples, snippets, progress, should_stop,
                 protocol=None) -> tuple[dict, dict]:
    """Generate and read every item; ``protocol`` (the study's) poses and reads them its way instead."""
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
            if protocol:
                prompts = [protocol.prompt(name, it, [f"{s.title}. {s.content}" for s in snippets[name][it.id]]
                                           if variant.rag else None) for it in chunk]
            else:
                prompts = [item_messages(it, fit_to_budget(snippets[name][it.id], count, cfg.rag.context_tokens)
                                         if variant.rag else None, cfg.model.system_prompt) for it in chunk]
            for it, row in zip(chunk, gen(prompts, variant, should_stop)):
                if protocol:
                    views = protocol.read(name, row.text, it, False)  # a raw prompt opens no <think>
                    view = views[protocol.views[0]]
                    how = view["filter"]
                else:
                    letter, how = spec.read_answer(row.text, it, opens_think)
                    view = {"pred": letter, "correct": letter == it.answer, "invalid": letter is None}
                    views = {view_name: view}
                rows.append({"id": it.id, **{k: view[k] for k in ("pred", "correct", "invalid")}, "views": views,
                             "filter": how, "raw": row.text, "budget_closed": row.budget_closed})
            progress(done=done + len(rows), total=total, variant=variant.name, benchmark=name)
        preds[name] = rows
        done += len(items)
        timing[name] = round(time.perf_counter() - t0, 2)
    return preds, timing


def evaluate(cfg: AppConfig, variants: list[Variant], samples: dict[str, list[BenchItem]], mode: str,
             progress: Progress = lambda **_: None, should_stop: Callable[[], bool] = lambda: False,
             on_variant: Callable[[dict], None] = lambda _: None, protocol: Any = None,
             engine: str = "local") -> dict:
    """Score every non-skipped variant on ``samples``; ``on_variant(results)`` after each (for partial saves).
    ``protocol``: the study's (:class:`eval.study.StudyProtocol`, a cot run); ``engine``: what generates (cot)."""
    if mode not in ("loglik", "cot"):
        raise ValueError(f"unknown mode {mode!r}; use loglik or cot")
    if mode == "loglik" and (protocol or engine != "local"):
        raise ValueError("log-likelihood scoring runs in process on the project's prompts: the study protocol and "
                         "--engine openai generate (mode cot)")
    results = new_results(cfg, mode, samples, variants, protocol)
    snippets: dict = {name: {} for name in samples}
    if any(v.rag and not v.skipped for v in variants):
        k = protocol.rag_k if protocol else cfg.rag.top_k
        try:
            t0 = time.perf_counter()
            snippets = (retrieve_all(cfg, samples, k, protocol.query, "dense") if protocol
                        else retrieve_all(cfg, samples, k))
            results["retrieval"] = {"k": k, "wall_s": round(time.perf_counter() - t0, 2),
                                    "option_queries": None if protocol else cfg.rag.option_queries,
                                    "option_top_k": None if protocol else cfg.rag.option_top_k, "snippets": {
                name: {i: [{"id": s.id, "title": s.title, "score": round(float(s.score), 4),
                            **({"option": s.option} if getattr(s, "option", "") else {})} for s in ss]
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
        gen, opens_think, count, results["engine"] = _generator(cfg, todo, engine)
    results["load_s"] = round(time.perf_counter() - t_load, 2)
    for v in todo:
        entry = results["variants"][v.name]
        entry["status"] = "running"
        t0 = time.perf_counter()
        if mode == "loglik":
            preds, timing, entry["calibration"] = _loglik_variant(cfg, model, tok, v, samples, snippets, progress,
                                                                  should_stop)
        else:
            preds, timing = _cot_variant(cfg, gen, opens_think, count, v, samples, snippets, progress, should_stop,
                                         protocol)
        wall = time.perf_counter() - t0
        n = sum(len(p) for p in preds.values())
        entry.update(status="ok", predictions=preds, timing={"wall_s": round(wall, 2), "per_benchmark_s": timing,
                                                              "items": n, "items_per_s": round(n / wall, 3)})
        on_variant(results)
    return results
