"""lm-evaluation-harness as a second scoring backend: ``python -m eval run --backend lm-eval``.

lm-eval runs as a library on the project's seeded items: each benchmark's registered task (its definition's ``lmeval_task``: its
prompt, choices and metrics from lm-eval's own task YAML) gets the items in its dataset's schema through
``custom_dataset`` (no download), and ``simple_evaluate`` scores them zero-shot with ``HFLM`` (the base folder, the
variant's PEFT adapter through ``peft=``) or, with a GPU and vllm installed, its ``VLLM`` model (the adapter as a
LoRA request). Its per-sample log-likelihoods become the project's results format, so the Benchmarks tab lists the
file (``lmeval-<time>.json``) like any run and ``python -m eval merge`` puts it beside a project run of the same items:

- variants are named ``<variant>@lm-eval``; RAG variants are skipped (lm-eval's prompts carry no snippets);
- ``letter`` = lm-eval's ``acc`` (argmax log-likelihood of its choices: the letters, PubMedQA's yes/no/maybe);
- ``text_norm`` = lm-eval's ``acc_norm`` where the choices are option texts (PubMedQA; per character of the choice);
- each row keeps lm-eval's log-likelihoods (``logprobs``) and metrics (``lm_eval``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from medadapt.config import AppConfig
from medadapt.data.benchmarks import BenchItem, benchmark
from eval.variants import Variant, model_folder, set_threads

SUFFIX = "@lm-eval"
VIEWS = ("letter", "text_norm")
METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
           {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


def lm_doc(item: BenchItem) -> dict[str, Any]:
    """The item as a row of lm-eval's dataset for its task (the fields its ``doc_to_text``/``doc_to_target`` read)."""
    texts = list(item.options.values())
    gold = list(item.options).index(item.answer)
    if item.benchmark == "medmcqa":
        doc = {"question": item.question, "cop": gold, **{f"op{k.lower()}": v for k, v in item.options.items()}}
    elif item.benchmark == "medqa":
        doc = {"sent1": item.question, "label": gold, **{f"ending{i}": t for i, t in enumerate(texts)}}
    elif item.benchmark == "mmlu_medical":
        doc = {"question": item.question, "choices": texts, "answer": gold, "subject": item.subject}
    elif item.benchmark == "pubmedqa":
        doc = {"QUESTION": item.question, "CONTEXTS": [item.context], "final_decision": item.answer_text}
    else:
        raise ValueError(f"no lm-eval task for benchmark {item.benchmark!r}")
    return {**doc, "_medadapt_id": item.id}


def task_specs(items: list[BenchItem], manager: Any) -> dict[str, dict[str, Any]]:
    """``{lm-eval task name: task config}``: the registered task, its data replaced by ``items``, zero-shot."""
    import datasets
    from lm_eval.tasks._yaml_loader import load_yaml

    by_task: dict[str, list[BenchItem]] = {}
    for it in items:
        by_task.setdefault(benchmark(it.benchmark).task(it), []).append(it)
    specs = {}
    for name, its in by_task.items():
        entry = manager.task_index[name]
        cfg = dict(load_yaml(entry.yaml_path, resolve_func=True)) if entry.yaml_path else dict(entry.cfg)
        if "include" in cfg:  # a template the index has already merged into entry.cfg
            cfg = {**entry.cfg, **{k: v for k, v in cfg.items() if k != "include"}}
        rows = [lm_doc(it) for it in its]
        cfg.update(task=name, dataset_path=None, dataset_name=None, dataset_kwargs=None,
                   custom_dataset=lambda _rows=rows, **_: datasets.DatasetDict(
                       {"test": datasets.Dataset.from_list(_rows)}),
                   training_split=None, validation_split=None, fewshot_split=None, test_split="test",
                   num_fewshot=0, metric_list=METRICS)
        for key in ("fewshot_config", "tag", "group"):
            cfg.pop(key, None)
        specs[name] = cfg
    return specs


def make_lm(cfg: AppConfig, adapter: str | None, batch_size: int) -> tuple[Any, str]:
    """``(lm, kind)``: lm-eval's vLLM model on a GPU when vllm is installed, else its HFLM; the adapter attached."""
    import importlib.util

    import torch

    path = model_folder(cfg)
    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        from lm_eval.models.vllm_causallms import VLLM

        kw: dict[str, Any] = {"lora_local_path": adapter} if adapter else {}
        return VLLM(pretrained=path, dtype=cfg.model.dtype, max_model_len=cfg.model.max_context,
                    trust_remote_code=cfg.model.trust_remote_code, batch_size="auto", **kw), "vllm"
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=path, peft=adapter, dtype=cfg.model.dtype, batch_size=batch_size,
                device="cuda" if torch.cuda.is_available() else "cpu", max_length=cfg.model.max_context,
                trust_remote_code=cfg.model.trust_remote_code), "hf"


def run_tasks(lm: Any, specs: dict[str, dict[str, Any]], manager: Any, seed: int) -> dict[str, list[dict]]:
    """lm-eval's logged samples per task, each with ``_medadapt_id`` in its doc."""
    from lm_eval import simple_evaluate

    out = simple_evaluate(model=lm, tasks=list(specs.values()), num_fewshot=0, log_samples=True,
                          task_manager=manager, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                          torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR")
    return out["samples"]


def sample_row(item: BenchItem, sample: dict) -> dict[str, Any]:
    """One prediction row (the project's format) from an lm-eval sample of ``item``."""
    from eval.scoring import choose, norm_lengths, option_probs

    letters = list(item.options)
    lls = [float(r[0]) for r in sample["filtered_resps"]]
    pick = letters[choose(lls)]
    views = {"letter": {"pred": pick, "correct": bool(sample["acc"]), "invalid": False}}
    logprobs = {"letter": [round(x, 4) for x in lls]}
    if benchmark(item.benchmark).choice == "text":  # choices are the option texts: acc_norm is the text_norm view
        norm = letters[choose(lls, norm_lengths(list(item.options.values())))]
        views["text_norm"] = {"pred": norm, "correct": bool(sample["acc_norm"]), "invalid": False}
        logprobs["text"] = logprobs["letter"]
    probs = option_probs(lls)
    return {"id": item.id, **views["letter"], "views": views, "logprobs": logprobs,
            "lm_eval": {k: sample[k] for k in ("acc", "acc_norm") if k in sample},
            "raw": "  ".join(f"{k}: {p:.2f}" for k, p in zip(letters, probs))}


def evaluate_lmeval(cfg: AppConfig, variants: list[Variant], samples: dict[str, list[BenchItem]],
                    progress: Callable[..., None] = lambda **_: None, should_stop: Callable[[], bool] = lambda: False,
                    on_variant: Callable[[dict], None] = lambda _: None) -> dict:
    """Score every non-RAG variant with lm-eval on ``samples``; the results dict of :func:`eval.evaluate.evaluate`."""
    import gc

    import lm_eval
    from lm_eval.tasks import TaskManager

    from eval.evaluate import StopRequested, new_results, seen_in_training

    for v in variants:
        if v.rag and not v.skipped:
            v.skipped = "lm-eval backend: its prompts carry no retrieved snippets"
    renamed = [Variant(v.name + SUFFIX, v.adapter, v.rag, v.skipped, v.meta) for v in variants]
    results = new_results(cfg, "loglik", samples, renamed)
    manager = TaskManager(verbosity="ERROR")
    specs = {name: task_specs(items, manager) for name, items in samples.items()}
    results.update(views=list(VIEWS), backend="lm-eval", lm_eval={
        "version": lm_eval.__version__, "tasks": {b: sorted(s) for b, s in specs.items()}, "num_fewshot": 0})
    results["model"]["display_name"] += " · lm-eval"
    set_threads(cfg)
    total = sum(len(v) for v in samples.values())
    for v, named in zip(variants, renamed):
        if v.skipped:
            continue
        entry = results["variants"][named.name]
        entry["status"] = "running"
        if v.adapter:
            entry["seen_in_training"] = seen_in_training(cfg, v, samples)
        t0 = time.perf_counter()
        lm, kind = make_lm(cfg, v.adapter, cfg.eval.batch_size)
        results["lm_eval"]["model"] = kind
        preds, timing, done = {}, {}, 0
        for bench, items in samples.items():
            if should_stop():
                raise StopRequested(f"stopped during {named.name}/{bench}")
            tb = time.perf_counter()
            by_id = {it.id: it for it in items}
            logged = run_tasks(lm, specs[bench], manager, cfg.eval.seed)
            rows = {s["doc"]["_medadapt_id"]: sample_row(by_id[s["doc"]["_medadapt_id"]], s)
                    for task in specs[bench] for s in logged[task]}
            preds[bench] = [rows[it.id] for it in items]
            done += len(items)
            timing[bench] = round(time.perf_counter() - tb, 2)
            progress(done=done, total=total, variant=named.name, benchmark=bench)
        wall = time.perf_counter() - t0
        n = sum(len(p) for p in preds.values())
        entry.update(status="ok", predictions=preds, timing={"wall_s": round(wall, 2), "per_benchmark_s": timing,
                                                              "items": n, "items_per_s": round(n / wall, 3)})
        del lm
        gc.collect()
        on_variant(results)
    return results
