"""Benchmark items (:class:`BenchItem`) and their loaders: each benchmark's rows, from the data dir or its Hub
dataset, made into items. :mod:`medadapt.data.benchmarks` names a benchmark's loaders in its definition.

- ``medmcqa``: MedMCQA dev (= Hub ``openlifescienceai/medmcqa`` validation), 4183 items. ``cop`` is 1-based in the
  data-dir file and 0-based on the Hub; both become a letter here.
- ``medqa``: MedQA-USMLE 4 options, test split (= Hub ``GBaker/MedQA-USMLE-4-options``), 1273 items.
- ``mmlu_medical``: six MMLU test subjects (= Hub ``cais/mmlu``), 1089 items; ``subject`` is the MMLU subject.
- ``pubmedqa``: PubMedQA PQA-L (= Hub ``qiaojin/PubMedQA`` pqa_labeled), 1000 items, options A=yes B=no C=maybe,
  the abstract in ``context``. The evaluation samples from the official 500-id test split only.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from medadapt.config import AppConfig
from medadapt.data import data_file, load_hub, read_json, read_jsonl

MMLU_SUBJECTS = (
    "anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics", "professional_medicine",
)
LETTERS = "ABCD"  # the option letters of the four-option benchmarks
PUBMEDQA_CHOICES = {"A": "yes", "B": "no", "C": "maybe"}  # its one label set, the same on every item
# Each benchmark's Hub dataset: (repo, config, split)
MEDMCQA_HUB = ("openlifescienceai/medmcqa", None, "validation")
MEDQA_HUB = ("GBaker/MedQA-USMLE-4-options", None, "test")
MMLU_HUB = ("cais/mmlu", None, "test")  # one config per subject
PUBMEDQA_HUB = ("qiaojin/PubMedQA", "pqa_labeled", "train")
# The official PQA-L test split: its 500 PMIDs (test_ground_truth.json of github.com/pubmedqa/pubmedqa, MIT licence),
# shipped with the project so no script dataset is needed (datasets 5.x refuses bigbio/pubmed_qa's loading script).
PUBMEDQA_TEST_IDS = Path(__file__).with_name("pubmedqa_test_ids.json")


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
    answer = {v: k for k, v in PUBMEDQA_CHOICES.items()}[decision]
    return BenchItem("pubmedqa", str(pmid), question, dict(PUBMEDQA_CHOICES), answer, "", "\n".join(contexts))


# ---------------------------------------------------------------- loaders (data dir and Hub)

def medmcqa_local(cfg: AppConfig) -> list[BenchItem]:
    return [medmcqa_item(r, one_based=True) for r in read_jsonl(data_file(cfg, "medmcqa", "dev.json"))]


def medqa_local(cfg: AppConfig) -> list[BenchItem]:
    rows = read_jsonl(data_file(cfg, "medqa", "US_4_options_phrases_no_exclude_test.jsonl"))
    return [medqa_item(r, i) for i, r in enumerate(rows)]


def mmlu_local(cfg: AppConfig) -> list[BenchItem]:
    items = []
    for subject in MMLU_SUBJECTS:
        with open(data_file(cfg, "mmlu_medical", f"{subject}_test.csv"), encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                items.append(mmlu_item(subject, i, row[0], row[1:5], row[5].strip()))
    return items


def pubmedqa_local(cfg: AppConfig) -> list[BenchItem]:
    data = read_json(data_file(cfg, "pubmedqa", "ori_pqal.json"))
    return [pubmedqa_item(k, r["QUESTION"], r["CONTEXTS"], r["final_decision"]) for k, r in data.items()]


def mmlu_hub() -> list[BenchItem]:
    repo, _, split = MMLU_HUB
    return [mmlu_item(subject, i, r["question"], r["choices"], LETTERS[int(r["answer"])])
            for subject in MMLU_SUBJECTS for i, r in enumerate(load_hub(repo, subject, split))]


def pubmedqa_test_ids(cfg: AppConfig | None = None) -> list[str]:
    """The official 500-PMID PQA-L test split, from the id list shipped with the project (the same ids as the data
    dir's ``pubmedqa/test_ground_truth.json``); ``cfg`` is accepted for the loaders' common signature."""
    return [str(i) for i in read_json(PUBMEDQA_TEST_IDS)]


def medmcqa_hub() -> list[BenchItem]:
    return [medmcqa_item(r, one_based=False) for r in load_hub(*MEDMCQA_HUB)]


def medqa_hub() -> list[BenchItem]:
    return [medqa_item(r, i) for i, r in enumerate(load_hub(*MEDQA_HUB))]


def pubmedqa_hub() -> list[BenchItem]:
    return [pubmedqa_item(r["pubid"], r["question"], r["context"]["contexts"], r["final_decision"])
            for r in load_hub(*PUBMEDQA_HUB)]
