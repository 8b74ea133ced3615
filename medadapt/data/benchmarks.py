"""The benchmarks, each defined once: a :class:`Benchmark` in :data:`DEFINITIONS` holds everything the app knows
about one benchmark, as an lm-eval task YAML does: its loaders (:mod:`medadapt.data.benchmark_items`), option letters
and choice kind, how the eval samples it, its prompt heading and lm-eval's default prompt, its lm-eval task, the
answer filter, its label and source, and the original study's reported accuracy on it. The loaders, both scoring
modes (:mod:`eval.prompting`, :mod:`eval.evaluate`, :mod:`eval.lmeval`), the trainers' exclusion
(:mod:`medadapt.data.sft`) and the Benchmarks tab read it from here; adding a benchmark is one entry here plus its
loaders. Also: the seeded samples the evaluation uses (and the trainers exclude).

The offline profile reads the data dir (``cfg.paths.data_dir``) when there is one; the reference profile, and the
offline one without a data dir, read the Hub (``AppConfig.hub_data``).
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medadapt.config import AppConfig
from medadapt.data import load_hub
from medadapt.data.benchmark_items import (LETTERS, MEDMCQA_HUB, MEDQA_HUB, MMLU_HUB, PUBMEDQA_CHOICES, PUBMEDQA_HUB,
                                           BenchItem, medmcqa_hub, medmcqa_local, medqa_hub, medqa_local, mmlu_hub,
                                           mmlu_local, pubmedqa_hub, pubmedqa_local, pubmedqa_test_ids)
from medadapt.reasoning import extract_answer

# What differs between the original study's reported numbers (``Benchmark.paper``) and a run of this project (shown
# with the paper's bars, which are off by default): every one of these changes accuracy on its own.
PAPER_SETUP: dict[str, str] = {
    "model": "DeepSeek-R1-Distill-Qwen-1.5B and its merged SFT/MSFT models (fp16, vLLM)",
    "items and split": "the study's own 200 samples per benchmark (another seed; not these items)",
    "prompt": "raw prompt strings without the chat template, generated at temperature 0.01, up to 4,096 tokens",
    "parser": "the study's answer parser, which also read letters inside the chain of thought",
}


class UnknownBenchmarkError(ValueError):
    """A benchmark name that is not one of :data:`BENCHMARKS`."""


def benchmark(name: str) -> Benchmark:
    """The definition of benchmark ``name`` (:class:`UnknownBenchmarkError` for any other name)."""
    if name not in DEFINITIONS:
        raise UnknownBenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return DEFINITIONS[name]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its items come from, how the eval samples, prompts, reads and labels them.

    ``letters``: its option letters in order (``choices``: their texts when every item has the same, PubMedQA's
    yes/no/maybe); ``stratify``: the :class:`BenchItem` attribute a sample is spread over (None: simple random
    sample); ``context_label``: the prompt heading of ``item.context``; ``eval_ids``: the ids the evaluation may
    sample (None: every item); ``breakdown``: per-subject accuracy is meaningful. ``prompt``: lm-eval's default
    zero-shot prompt (its task's ``doc_to_text``; fields of :meth:`prompt_fields`), ``lmeval_task``: that task
    (``{subject}`` filled in), ``choice``: lm-eval's ``doc_to_choice`` (``letter``: the option letters, ``text``: the
    option texts); ``paper``: the original study's reported accuracy (%) per variant (generative, its own parser).
    """

    name: str
    label: str  # in tables, charts and dropdowns
    source: str  # what the items are (shown in the tab and written into results files)
    hub: tuple[str, str | None, str]  # the Hub dataset: (repo, config, split)
    load_local: Callable[[AppConfig], list[BenchItem]]  # from the data dir
    load_hub: Callable[[], list[BenchItem]]
    prompt: str
    lmeval_task: str
    letters: str = LETTERS
    choices: dict[str, str] | None = None
    choice: str = "letter"  # letter | text
    stratify: str | None = None
    context_label: str = ""
    eval_ids: Callable[[AppConfig], list[str]] | None = None
    breakdown: bool = False
    paper: dict[str, float] = field(default_factory=dict, hash=False)

    def load(self, cfg: AppConfig) -> list[BenchItem]:
        """Every item (the data dir, or the Hub when ``cfg.hub_data``), in file order."""
        return self.load_hub() if cfg.hub_data else self.load_local(cfg)

    def sample(self, cfg: AppConfig, n: int, seed: int) -> list[BenchItem]:
        """The seeded sample of ``n`` items the evaluation scores (see :func:`sample_items`)."""
        items = self.load(cfg)
        if self.eval_ids is not None:
            allowed = set(self.eval_ids(cfg))
            items = [it for it in items if it.id in allowed]
        return sample_items(items, n, seed, self.stratify)

    def read_answer(self, text: str, item: BenchItem, opened: bool = False) -> tuple[str | None, str]:
        """The answer filter for a generated ``text``: :func:`medadapt.reasoning.extract_answer` on the options."""
        return extract_answer(text, item.options, opened)

    def posed(self, item: BenchItem) -> dict[str, object]:
        """How Compare, the evaluation and ``prompt: app`` training pose ``item``: the
        ``medadapt.prompts.build_messages`` arguments (question, options, the context under :attr:`context_label`)."""
        return {"question": item.question, "options": item.options, "context": item.context or None,
                "context_label": self.context_label}

    def prompt_fields(self, item: BenchItem) -> dict[str, str]:
        """What :attr:`prompt` may name: ``question`` (``stem``: stripped), ``options`` (one ``A. text`` line each),
        ``subject`` (spaced), ``context`` and its ``context_label``."""
        return {"question": item.question, "stem": item.question.strip(),
                "options": "".join(f"{k}. {v}\n" for k, v in item.options.items()),
                "subject": item.subject.replace("_", " "), "context": item.context,
                "context_label": self.context_label}

    def plain_prompt(self, item: BenchItem) -> str:
        """lm-eval's default zero-shot prompt of ``item``."""
        return self.prompt.format(**self.prompt_fields(item))

    def task(self, item: BenchItem) -> str:
        """The lm-eval task that scores ``item``."""
        return self.lmeval_task.format(subject=item.subject)


DEFINITIONS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("medmcqa", "MedMCQA", "MedMCQA dev (= Hub validation), 4 options",
              MEDMCQA_HUB, medmcqa_local, medmcqa_hub,
              prompt="Question: {question}\nChoices:\n{options}Answer:", lmeval_task="medmcqa", breakdown=True,
              paper={"base": 30.5, "rag": 29.0, "sft": 30.5, "msft": 23.0}),
    Benchmark("medqa", "MedQA", "MedQA-USMLE test, 4 options", MEDQA_HUB,
              medqa_local, medqa_hub, prompt="Question: {question}\n{options}Answer:", lmeval_task="medqa_4options",
              paper={"base": 22.5, "rag": 21.5, "sft": 25.5, "msft": 28.0}),
    Benchmark("mmlu_medical", "MMLU-med", "MMLU test, six medical subjects, 4 options", MMLU_HUB,
              mmlu_local, mmlu_hub, prompt="The following are multiple choice questions (with answers) about "
                                           "{subject}.\n\n{stem}\n{options}Answer:",
              lmeval_task="mmlu_{subject}", stratify="subject", breakdown=True,
              paper={"base": 34.0, "rag": 30.5, "sft": 28.5, "msft": 29.0}),
    Benchmark("pubmedqa", "PubMedQA", "PubMedQA PQA-L official test split, yes/no/maybe",
              PUBMEDQA_HUB, pubmedqa_local, pubmedqa_hub,
              prompt="{context_label}: {context}\nQuestion: {question}\nAnswer:", lmeval_task="pubmedqa",
              letters="ABC", choices=PUBMEDQA_CHOICES, choice="text", context_label="Abstract",
              eval_ids=pubmedqa_test_ids, paper={"base": 38.0, "rag": 56.5, "sft": 36.0, "msft": 41.5}),
)}
BENCHMARKS = tuple(DEFINITIONS)


def posed(item: BenchItem) -> dict[str, object]:
    """The ``build_messages`` arguments of ``item`` (:meth:`Benchmark.posed` of its benchmark)."""
    return benchmark(item.benchmark).posed(item)


def hub_rows(name: str, config: str | None = None) -> Any:
    """The rows of benchmark ``name``'s Hub dataset (``config`` overrides the definition's, e.g. an MMLU subject)."""
    repo, default_config, split = benchmark(name).hub
    return load_hub(repo, config or default_config, split)


def task_label(name: str) -> str:
    """A benchmark's display label (an unknown name as it is)."""
    spec = DEFINITIONS.get(name)
    return spec.label if spec else name


def has_breakdown(name: str) -> bool:
    """Whether a per-subject breakdown of benchmark ``name`` is meaningful (MedMCQA, MMLU-med)."""
    spec = DEFINITIONS.get(name)
    return bool(spec and spec.breakdown)


def load_benchmark(cfg: AppConfig, name: str) -> list[BenchItem]:
    """Every item of benchmark ``name`` (the data dir, or the Hub when ``cfg.hub_data``), in file order."""
    return benchmark(name).load(cfg)


# ---------------------------------------------------------------- sampling

def sample_items(items: list[BenchItem], n: int, seed: int, stratify_by: str | None = None) -> list[BenchItem]:
    """A seeded sample of ``n`` items (all when ``n <= 0`` or ``n >= len``), in a stable order.

    The sample is the first ``n`` of a seeded ordering, so a smaller ``n`` (same seed) is a prefix of a larger one and
    runs at different sizes share items. With ``stratify_by`` (an attribute such as ``subject``) each group is
    shuffled and the ordering takes one item from each group in turn (groups sorted by name), so the sample is spread
    evenly (counts differ by at most one until a small group runs out).
    """
    if n <= 0:
        n = len(items)
    rng = random.Random(seed)
    if not stratify_by:
        order = list(items)
        rng.shuffle(order)
        return order[:n]
    groups: dict[str, list[BenchItem]] = defaultdict(list)
    for it in items:
        groups[getattr(it, stratify_by)].append(it)
    queues = []
    for name in sorted(groups):
        g = list(groups[name])
        rng.shuffle(g)
        queues.append(g)
    out: list[BenchItem] = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out[:n]


def evaluated_items(cfg: AppConfig, benchmarks: list[str] | None = None, n: int | None = None,
                    seed: int | None = None) -> dict[str, list[BenchItem]]:
    """The seeded samples the evaluation uses: ``cfg.eval.n`` per benchmark with ``cfg.eval.seed`` (overridable).

    PubMedQA is sampled from the official 500 test ids only (its ``eval_ids``). Trainers exclude these items.
    """
    n = cfg.eval.n if n is None else n
    seed = cfg.eval.seed if seed is None else seed
    return {name: benchmark(name).sample(cfg, n, seed) for name in benchmarks or cfg.eval.benchmarks}


def item_ids(samples: dict[str, list[BenchItem]]) -> dict[str, list[str]]:
    """``{benchmark: [id, ...]}``: what a results file stores so every variant and later run sees the same items."""
    return {name: [it.id for it in items] for name, items in samples.items()}


def select_ids(cfg: AppConfig, ids: dict[str, list[str]]) -> dict[str, list[BenchItem]]:
    """The items named by a saved ``item_ids`` mapping, in that order (KeyError names a missing id)."""
    out = {}
    for name, wanted in ids.items():
        by_id = {it.id: it for it in load_benchmark(cfg, name)}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise KeyError(f"{name}: {len(missing)} saved id(s) not in the data, e.g. {missing[0]!r}")
        out[name] = [by_id[i] for i in wanted]
    return out
