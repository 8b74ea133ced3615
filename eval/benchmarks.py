"""The Benchmarks tab's pure view of the benchmark definitions (:mod:`medadapt.data.benchmarks`): labels, which
benchmarks have a per-subject breakdown, and the seed paper's reference numbers. No torch, no model.
"""
from __future__ import annotations

from medadapt.data.benchmarks import DEFINITIONS

# The seed paper's published accuracies (%), generative scoring with a flawed parser; shown only as a labelled reference.
PAPER_REFERENCE: dict[str, dict[str, float]] = {
    "base": {"medmcqa": 30.5, "medqa": 22.5, "mmlu_medical": 34.0, "pubmedqa": 38.0},
    "rag": {"medmcqa": 29.0, "medqa": 21.5, "mmlu_medical": 30.5, "pubmedqa": 56.5},
    "sft": {"medmcqa": 30.5, "medqa": 25.5, "mmlu_medical": 28.5, "pubmedqa": 36.0},
    "msft": {"medmcqa": 23.0, "medqa": 28.0, "mmlu_medical": 29.0, "pubmedqa": 41.5},
}

# What differs between the seed paper's numbers and a run of this project (shown with the paper's bars, which are off
# by default): every one of these changes accuracy on its own.
PAPER_SETUP: dict[str, str] = {
    "model": "DeepSeek-R1-Distill-Qwen-1.5B and its merged SFT/MSFT models (fp16, vLLM)",
    "items and split": "the study's own 200 samples per benchmark (another seed; not these items)",
    "prompt": "raw prompt strings without the chat template, generated at temperature 0.01, up to 4,096 tokens",
    "parser": "the study's answer parser, which also read letters inside the chain of thought",
}


def task_label(name: str) -> str:
    """A benchmark's display label (an unknown name as it is)."""
    spec = DEFINITIONS.get(name)
    return spec.label if spec else name


def has_breakdown(name: str) -> bool:
    """Whether a per-subject breakdown of benchmark ``name`` is meaningful (MedMCQA, MMLU-med)."""
    spec = DEFINITIONS.get(name)
    return bool(spec and spec.breakdown)
