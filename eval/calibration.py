"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use") of option-letter scores.

A model's letter probabilities mix what it knows about the question with a prior over letters that it has for any
input (e.g. after fine-tuning on data where "A" is often right). The prior is measured by scoring *content-free*
inputs — the same prompt with the question, options, abstract and snippets replaced by ``N/A``, ``""`` and
``[MASK]`` — and averaging their renormalized letter probabilities. The calibrated score of option k is
``log p(k | x) - log p_cf(k)``, i.e. ``W = diag(p_cf)^-1`` with no bias: a letter bias that is the same for every
input cancels exactly.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from medadapt.data.benchmarks import BenchItem
from eval.scoring import option_probs

CONTENT_FREE = ("N/A", "", "[MASK]")


def content_free_items(item: BenchItem) -> list[BenchItem]:
    """One content-free copy of ``item`` per content-free string (same benchmark, letters and prompt shape)."""
    return [BenchItem(item.benchmark, f"content-free-{i}", cf, {k: cf for k in item.options}, item.answer,
                      context=cf if item.context else "") for i, cf in enumerate(CONTENT_FREE)]


def content_free_snippets(cf: str, k: int) -> list:
    """``k`` content-free retrieval snippets, so a RAG prompt keeps its shape."""
    from types import SimpleNamespace

    return [SimpleNamespace(id=f"cf-{i}", title=cf, source="", content=cf, score=0.0) for i in range(k)]


def letter_prior(logprob_rows: Sequence[Sequence[float]]) -> list[float]:
    """The mean renormalized option distribution over content-free inputs."""
    probs = [option_probs(lps) for lps in logprob_rows]
    return [sum(p[i] for p in probs) / len(probs) for i in range(len(probs[0]))]


def calibrate(logprobs: Sequence[float], prior: Sequence[float]) -> list[float]:
    """Calibrated option scores: ``log p(k|x)`` (renormalized over the options) minus ``log p_cf(k)``."""
    probs = option_probs(logprobs)
    return [math.log(max(p, 1e-300)) - math.log(max(q, 1e-300)) for p, q in zip(probs, prior)]
