"""Benchmark items (:class:`BenchItem`) and the seeded samples the evaluation uses (and the trainers exclude).

Four benchmarks, each a list of multiple-choice items with letter options:

- ``medmcqa``: MedMCQA dev (= Hub ``openlifescienceai/medmcqa`` validation), 4183 items. ``cop`` is 1-based in the
  data-dir file and 0-based on the Hub; both become a letter here.
- ``medqa``: MedQA-USMLE 4 options, test split (= Hub ``GBaker/MedQA-USMLE-4-options``), 1273 items.
- ``mmlu_medical``: six MMLU test subjects (= Hub ``cais/mmlu``), 1089 items; ``subject`` is the MMLU subject.
- ``pubmedqa``: PubMedQA PQA-L (= Hub ``qiaojin/PubMedQA`` pqa_labeled), 1000 items, options A=yes B=no C=maybe,
  the abstract in ``context``. The evaluation samples from the official 500-id test split only.

The offline profile reads the data dir (``cfg.paths.data_dir``) when there is one; the reference profile, and the
offline one without a data dir, read the Hub (``AppConfig.hub_data``).
"""
from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from medadapt.config import AppConfig
from medadapt.data import DataNotFoundError, data_file, read_json, read_jsonl

BENCHMARKS = ("medmcqa", "medqa", "mmlu_medical", "pubmedqa")
MMLU_SUBJECTS = (
    "anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics", "professional_medicine",
)
LETTERS = "ABCD"
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}
# The Hub datasets behind each benchmark: (repo, config, split); MMLU has one config per subject.
HUB = {"medmcqa": ("openlifescienceai/medmcqa", None, "validation"),
       "medqa": ("GBaker/MedQA-USMLE-4-options", None, "test"),
       "mmlu_medical": ("cais/mmlu", None, "test"),
       "pubmedqa": ("qiaojin/PubMedQA", "pqa_labeled", "train")}
PUBMEDQA_TEST_HUB = ("bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source", "test")  # the official 500-id test split
# How each benchmark is stratified when sampled (None: simple random sample).
STRATIFY = {"medmcqa": None, "medqa": None, "mmlu_medical": "subject", "pubmedqa": None}


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


def _check(name: str) -> None:
    if name not in BENCHMARKS:
        raise UnknownBenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")


# ---------------------------------------------------------------- row -> item (shared by local and Hub paths)

def medmcqa_item(row: dict, one_based: bool) -> BenchItem:
    cop = int(row["cop"]) - (1 if one_based else 0)
    if not 0 <= cop < 4:
        raise ValueError(f"MedMCQA {row.get('id')}: cop {row['cop']} out of range")
    options = {L: str(row[f"op{L.lower()}"]) for L in LETTERS}
    return BenchItem("medmcqa", str(row["id"]), row["question"], options, LETTERS[cop], row.get("subject_name") or "")


def medqa_item(row: dict, index: int) -> BenchItem:
    options = {L: str(row["options"][L]) for L in LETTERS}
    return BenchItem("medqa", f"medqa-{index}", row["question"], options, row["answer_idx"], row.get("meta_info") or "")


def mmlu_item(subject: str, index: int, question: str, choices: list[str], answer: str) -> BenchItem:
    options = dict(zip(LETTERS, (str(c) for c in choices)))
    return BenchItem("mmlu_medical", f"{subject}-{index}", question, options, answer, subject)


def pubmedqa_item(pmid: str, question: str, contexts: list[str], decision: str) -> BenchItem:
    answer = {v: k for k, v in PUBMEDQA_OPTIONS.items()}[decision]
    return BenchItem("pubmedqa", str(pmid), question, dict(PUBMEDQA_OPTIONS), answer, "", "\n".join(contexts))


# ---------------------------------------------------------------- loaders

def _load_local(cfg: AppConfig, name: str) -> list[BenchItem]:
    if name == "medmcqa":
        return [medmcqa_item(r, one_based=True) for r in read_jsonl(data_file(cfg, "medmcqa", "dev.json"))]
    if name == "medqa":
        rows = read_jsonl(data_file(cfg, "medqa", "US_4_options_phrases_no_exclude_test.jsonl"))
        return [medqa_item(r, i) for i, r in enumerate(rows)]
    if name == "mmlu_medical":
        items = []
        for subject in MMLU_SUBJECTS:
            with open(data_file(cfg, "mmlu_medical", f"{subject}_test.csv"), encoding="utf-8", newline="") as f:
                for i, row in enumerate(csv.reader(f)):
                    items.append(mmlu_item(subject, i, row[0], row[1:5], row[5].strip()))
        return items
    data = read_json(data_file(cfg, "pubmedqa", "ori_pqal.json"))
    return [pubmedqa_item(k, r["QUESTION"], r["CONTEXTS"], r["final_decision"]) for k, r in data.items()]


def hub_rows(name: str, config: str | None = None) -> Any:
    """The rows of benchmark ``name``'s Hub dataset (``config`` overrides the table's, e.g. an MMLU subject)."""
    from datasets import load_dataset

    repo, default_config, split = HUB[name]
    return load_dataset(repo, config or default_config, split=split)


def _load_hub(name: str) -> list[BenchItem]:
    if name == "medmcqa":
        return [medmcqa_item(r, one_based=False) for r in hub_rows(name)]
    if name == "medqa":
        return [medqa_item(r, i) for i, r in enumerate(hub_rows(name))]
    if name == "mmlu_medical":
        items = []
        for subject in MMLU_SUBJECTS:
            for i, r in enumerate(hub_rows(name, subject)):
                items.append(mmlu_item(subject, i, r["question"], r["choices"], LETTERS[int(r["answer"])]))
        return items
    return [pubmedqa_item(r["pubid"], r["question"], r["context"]["contexts"], r["final_decision"])
            for r in hub_rows(name)]


def load_benchmark(cfg: AppConfig, name: str) -> list[BenchItem]:
    """Every item of benchmark ``name`` (the data dir, or the Hub when ``cfg.hub_data``), in file order."""
    _check(name)
    if cfg.hub_data:
        return _load_hub(name)
    return _load_local(cfg, name)


def pubmedqa_test_ids(cfg: AppConfig) -> list[str]:
    """The official 500-PMID PQA-L test split (data dir file; on the Hub: bigbio/pubmed_qa fold0 test)."""
    try:
        return list(read_json(data_file(cfg, "pubmedqa", "test_ground_truth.json")))
    except DataNotFoundError:
        if not cfg.hub_data:
            raise
    from datasets import load_dataset

    repo, config, split = PUBMEDQA_TEST_HUB
    return [str(r["QUESTION_ID"]) for r in load_dataset(repo, config, split=split)]


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

    PubMedQA is sampled from the official 500 test ids only. Trainers exclude these items from their data.
    """
    n = cfg.eval.n if n is None else n
    seed = cfg.eval.seed if seed is None else seed
    out = {}
    for name in benchmarks or cfg.eval.benchmarks:
        items = load_benchmark(cfg, name)
        if name == "pubmedqa":
            test = set(pubmedqa_test_ids(cfg))
            items = [it for it in items if it.id in test]
        out[name] = sample_items(items, n, seed, STRATIFY[name])
    return out


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
