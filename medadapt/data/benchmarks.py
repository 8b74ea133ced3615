"""The four benchmarks, each defined once (:class:`Benchmark` in :data:`DEFINITIONS`), their items
(:class:`BenchItem`) and the seeded samples the evaluation uses (and the trainers exclude).

- ``medmcqa``: MedMCQA dev (= Hub ``openlifescienceai/medmcqa`` validation), 4183 items. ``cop`` is 1-based in the
  data-dir file and 0-based on the Hub; both become a letter here.
- ``medqa``: MedQA-USMLE 4 options, test split (= Hub ``GBaker/MedQA-USMLE-4-options``), 1273 items.
- ``mmlu_medical``: six MMLU test subjects (= Hub ``cais/mmlu``), 1089 items; ``subject`` is the MMLU subject.
- ``pubmedqa``: PubMedQA PQA-L (= Hub ``qiaojin/PubMedQA`` pqa_labeled), 1000 items, options A=yes B=no C=maybe,
  the abstract in ``context``. The evaluation samples from the official 500-id test split only.

One definition holds what the rest of the app needs to know about a benchmark: its loaders, option letters, the
sample's stratify key, the prompt heading of ``context``, the answer filter for generated answers, its label and
source text (Benchmarks tab, results files) and whether a per-subject breakdown is meaningful. The data loaders,
both scoring modes (:mod:`eval.prompting`, :mod:`eval.evaluate`), the trainers' exclusion (:mod:`medadapt.data.sft`)
and the Benchmarks tab (:mod:`eval.benchmarks`) read it from here.

The offline profile reads the data dir (``cfg.paths.data_dir``) when there is one; the reference profile, and the
offline one without a data dir, read the Hub (``AppConfig.hub_data``).
"""
from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medadapt.config import AppConfig
from medadapt.data import data_file, load_hub, read_json, read_jsonl
from medadapt.reasoning import extract_answer

MMLU_SUBJECTS = (
    "anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics", "professional_medicine",
)
LETTERS = "ABCD"  # the option letters of the four-option benchmarks
# The official PQA-L test split: its 500 PMIDs (test_ground_truth.json of github.com/pubmedqa/pubmedqa, MIT licence),
# shipped with the project so no script dataset is needed (datasets 5.x refuses bigbio/pubmed_qa's loading script).
PUBMEDQA_TEST_IDS = Path(__file__).with_name("pubmedqa_test_ids.json")


class UnknownBenchmarkError(ValueError):
    """A benchmark name that is not one of :data:`BENCHMARKS`."""


@dataclass(frozen=True)
class BenchItem:
    benchmark: str
    id: str
    question: str
    options: dict[str, str] = field(hash=False)  # letter -> text ("A".."D"; PubMedQA: A=yes B=no C=maybe)
    answer: str  # the correct letter
    subject: str = ""
    context: str = ""  # PubMedQA: the abstract

    @property
    def answer_text(self) -> str:
        return self.options.get(self.answer, "")

    def posed(self) -> dict[str, object]:
        """How Compare, the evaluation and ``prompt: app`` training pose this item: the
        ``medadapt.prompts.build_messages`` arguments (question, options, the context under its benchmark's label)."""
        return {"question": self.question, "options": self.options, "context": self.context or None,
                "context_label": DEFINITIONS[self.benchmark].context_label}


def benchmark(name: str) -> Benchmark:
    """The definition of benchmark ``name`` (:class:`UnknownBenchmarkError` for any other name)."""
    if name not in DEFINITIONS:
        raise UnknownBenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return DEFINITIONS[name]


# ---------------------------------------------------------------- row -> item (shared by local and Hub paths)

def medmcqa_item(row: dict, one_based: bool) -> BenchItem:
    cop = int(row["cop"]) - (1 if one_based else 0)
    if not 0 <= cop < 4:
        raise ValueError(f"MedMCQA {row.get('id')}: cop {row['cop']} out of range")
    letters = DEFINITIONS["medmcqa"].letters
    options = {L: str(row[f"op{L.lower()}"]) for L in letters}
    return BenchItem("medmcqa", str(row["id"]), row["question"], options, letters[cop], row.get("subject_name") or "")


def medqa_item(row: dict, index: int) -> BenchItem:
    options = {L: str(row["options"][L]) for L in DEFINITIONS["medqa"].letters}
    return BenchItem("medqa", f"medqa-{index}", row["question"], options, row["answer_idx"], row.get("meta_info") or "")


def mmlu_item(subject: str, index: int, question: str, choices: list[str], answer: str) -> BenchItem:
    options = dict(zip(DEFINITIONS["mmlu_medical"].letters, (str(c) for c in choices)))
    return BenchItem("mmlu_medical", f"{subject}-{index}", question, options, answer, subject)


def pubmedqa_item(pmid: str, question: str, contexts: list[str], decision: str) -> BenchItem:
    choices = DEFINITIONS["pubmedqa"].choices
    answer = {v: k for k, v in choices.items()}[decision]
    return BenchItem("pubmedqa", str(pmid), question, dict(choices), answer, "", "\n".join(contexts))


# ---------------------------------------------------------------- loaders (data dir and Hub)

def hub_rows(name: str, config: str | None = None) -> Any:
    """The rows of benchmark ``name``'s Hub dataset (``config`` overrides the definition's, e.g. an MMLU subject)."""
    repo, default_config, split = benchmark(name).hub
    return load_hub(repo, config or default_config, split)


def _medmcqa_local(cfg: AppConfig) -> list[BenchItem]:
    return [medmcqa_item(r, one_based=True) for r in read_jsonl(data_file(cfg, "medmcqa", "dev.json"))]


def _medqa_local(cfg: AppConfig) -> list[BenchItem]:
    rows = read_jsonl(data_file(cfg, "medqa", "US_4_options_phrases_no_exclude_test.jsonl"))
    return [medqa_item(r, i) for i, r in enumerate(rows)]


def _mmlu_local(cfg: AppConfig) -> list[BenchItem]:
    items = []
    for subject in MMLU_SUBJECTS:
        with open(data_file(cfg, "mmlu_medical", f"{subject}_test.csv"), encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                items.append(mmlu_item(subject, i, row[0], row[1:5], row[5].strip()))
    return items


def _pubmedqa_local(cfg: AppConfig) -> list[BenchItem]:
    data = read_json(data_file(cfg, "pubmedqa", "ori_pqal.json"))
    return [pubmedqa_item(k, r["QUESTION"], r["CONTEXTS"], r["final_decision"]) for k, r in data.items()]


def _mmlu_hub() -> list[BenchItem]:
    letters = DEFINITIONS["mmlu_medical"].letters
    return [mmlu_item(subject, i, r["question"], r["choices"], letters[int(r["answer"])])
            for subject in MMLU_SUBJECTS for i, r in enumerate(hub_rows("mmlu_medical", subject))]


def pubmedqa_test_ids(cfg: AppConfig | None = None) -> list[str]:
    """The official 500-PMID PQA-L test split, from the id list shipped with the project (the same ids as the data
    dir's ``pubmedqa/test_ground_truth.json``); ``cfg`` is accepted for the loaders' common signature."""
    return [str(i) for i in read_json(PUBMEDQA_TEST_IDS)]


# ---------------------------------------------------------------- the definitions

@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its items come from, how the eval samples, prompts, reads and labels them.

    ``letters``: its option letters in order (``choices``: their texts when every item has the same, PubMedQA's
    yes/no/maybe); ``stratify``: the :class:`BenchItem` attribute a sample is spread over
    (None: simple random sample); ``context_label``: the prompt heading of ``item.context``; ``eval_ids``: the ids
    the evaluation may sample (None: every item); ``breakdown``: per-subject accuracy is meaningful.
    """

    name: str
    label: str  # in tables, charts and dropdowns
    source: str  # what the items are (shown in the tab and written into results files)
    hub: tuple[str, str | None, str]  # the Hub dataset: (repo, config, split)
    load_local: Callable[[AppConfig], list[BenchItem]]  # from the data dir
    load_hub: Callable[[], list[BenchItem]]
    letters: str = LETTERS
    choices: dict[str, str] | None = None
    stratify: str | None = None
    context_label: str = ""
    eval_ids: Callable[[AppConfig], list[str]] | None = None
    breakdown: bool = False

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


DEFINITIONS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("medmcqa", "MedMCQA", "MedMCQA dev (= Hub validation), 4 options",
              ("openlifescienceai/medmcqa", None, "validation"), _medmcqa_local,
              lambda: [medmcqa_item(r, one_based=False) for r in hub_rows("medmcqa")], breakdown=True),
    Benchmark("medqa", "MedQA", "MedQA-USMLE test, 4 options", ("GBaker/MedQA-USMLE-4-options", None, "test"),
              _medqa_local, lambda: [medqa_item(r, i) for i, r in enumerate(hub_rows("medqa"))]),
    Benchmark("mmlu_medical", "MMLU-med", "MMLU test, six medical subjects, 4 options", ("cais/mmlu", None, "test"),
              _mmlu_local, _mmlu_hub, stratify="subject", breakdown=True),
    Benchmark("pubmedqa", "PubMedQA", "PubMedQA PQA-L official test split, yes/no/maybe",
              ("qiaojin/PubMedQA", "pqa_labeled", "train"), _pubmedqa_local,
              lambda: [pubmedqa_item(r["pubid"], r["question"], r["context"]["contexts"], r["final_decision"])
                       for r in hub_rows("pubmedqa")],
              letters="ABC", choices={"A": "yes", "B": "no", "C": "maybe"}, context_label="Abstract",
              eval_ids=pubmedqa_test_ids),
)}
BENCHMARKS = tuple(DEFINITIONS)


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
