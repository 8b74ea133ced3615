"""Task specs as data: how each benchmark is shown, sampled and scored, plus the seed paper's reference numbers.

No code lives here beyond lookups; loaders are in :mod:`medadapt.data.benchmarks`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label: str
    source: str  # what the items are (shown in the tab and written into results)
    context_label: str = ""  # prompt heading for item.context ("Abstract" for PubMedQA)
    breakdown: bool = False  # per-subject breakdown is meaningful


TASKS: dict[str, TaskSpec] = {
    "medmcqa": TaskSpec("medmcqa", "MedMCQA", "MedMCQA dev (= Hub validation), 4 options", breakdown=True),
    "medqa": TaskSpec("medqa", "MedQA", "MedQA-USMLE test, 4 options"),
    "mmlu_medical": TaskSpec("mmlu_medical", "MMLU-med", "MMLU test, six medical subjects, 4 options", breakdown=True),
    "pubmedqa": TaskSpec("pubmedqa", "PubMedQA", "PubMedQA PQA-L official test split, yes/no/maybe",
                         context_label="Abstract"),
}

# The seed paper's published accuracies (%), generative scoring with a flawed parser; shown only as a labelled reference.
PAPER_REFERENCE: dict[str, dict[str, float]] = {
    "base": {"medmcqa": 30.5, "medqa": 22.5, "mmlu_medical": 34.0, "pubmedqa": 38.0},
    "rag": {"medmcqa": 29.0, "medqa": 21.5, "mmlu_medical": 30.5, "pubmedqa": 56.5},
    "sft": {"medmcqa": 30.5, "medqa": 25.5, "mmlu_medical": 28.5, "pubmedqa": 36.0},
    "msft": {"medmcqa": 23.0, "medqa": 28.0, "mmlu_medical": 29.0, "pubmedqa": 41.5},
}



def task_label(name: str) -> str:
    spec = TASKS.get(name)
    return spec.label if spec else name



