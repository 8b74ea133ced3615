"""Calibration of option-letter scores: contextual (Zhao et al. 2021) and batch calibration (Zhou et al. 2024).

A model's letter probabilities mix what it knows about the question with a prior over letters that it has for any
input (e.g. after fine-tuning on data where "A" is often right). Both methods divide a prior out of the renormalized
option probabilities: the calibrated score of option k is ``log p(k | x) - log prior(k)`` (``W = diag(prior)^-1``,
no bias), so a letter bias that is the same for every input cancels exactly. They differ in where the prior comes
from:

- **content-free** (``letter_cal``): the mean over *content-free* copies of the prompt, whose question (and abstract,
  snippets) are replaced by strings such as ``N/A``, ``""``, ``[MASK]``. The copies keep the benchmark's label
  space, as Zhao et al. do: where every item has the same options (PubMedQA's yes/no/maybe) those stay; elsewhere
  the letters stay and the option texts, which are content, are replaced too. :data:`CONTENT_FREE` x
  :data:`CONTENT_FREE_FILL` gives 24 copies per benchmark, and the prior's spread over them is recorded
  (``prior_sd``, ``prior_se``), so a noisy prior shows.
- **batch** (``letter_batch_cal``): the mean of the variant's own renormalized letter distribution over the evaluated
  items of the benchmark (no labels used), computed from the stored log-probabilities, no extra pass. It measures
  the bias on the real inputs, where a content-free prompt can misjudge it.

This module builds the content-free inputs; the prior and the calibrated scores are pure functions of
log-probabilities in :mod:`eval.scoring` (``letter_prior``, ``prior_spread``, ``calibrate``).
"""
from __future__ import annotations

from medadapt.data.benchmarks import BenchItem, benchmark

CONTENT_FREE = ("N/A", "", "[MASK]", "None", "?", "Unknown", "...", "-")  # replaces the question
CONTENT_FREE_FILL = ("N/A", "", "[MASK]")  # replaces the option texts (or, with a fixed label set, the abstract)


def keeps_options(item: BenchItem) -> bool:
    """Whether the options are the benchmark's label space (the same for every item: PubMedQA's yes/no/maybe)."""
    try:
        return benchmark(item.benchmark).choices is not None
    except Exception:  # noqa: BLE001 — an ad-hoc benchmark name (tests): options are content
        return False


def label_space(item: BenchItem) -> str:
    return ("options kept (the label set), question and abstract replaced" if keeps_options(item)
            else "letters kept, question and option texts replaced")


def content_free_items(item: BenchItem) -> list[BenchItem]:
    """Content-free copies of ``item`` (same benchmark, letters, prompt shape): every :data:`CONTENT_FREE` question
    with every :data:`CONTENT_FREE_FILL` for the option texts, or, when the options are the label space, for the
    abstract (options kept)."""
    keep = keeps_options(item)
    out = []
    for i, cf in enumerate(CONTENT_FREE):
        for j, fill in enumerate(CONTENT_FREE_FILL):
            options = dict(item.options) if keep else {k: fill for k in item.options}
            out.append(BenchItem(item.benchmark, f"content-free-{i}-{j}", cf, options, item.answer,
                                 context=(fill if keep else cf) if item.context else ""))
    return out


def content_free_snippets(cf: str, k: int) -> list:
    """``k`` content-free retrieval snippets, so a RAG prompt keeps its shape."""
    from types import SimpleNamespace

    return [SimpleNamespace(id=f"cf-{i}", title=cf, source="", content=cf, score=0.0, option="") for i in range(k)]
