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
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from medadapt.data.benchmarks import BenchItem, benchmark
from eval.scoring import option_probs

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


def letter_prior(logprob_rows: Sequence[Sequence[float]]) -> list[float]:
    """The mean renormalized option distribution over ``logprob_rows`` (content-free inputs, or the evaluated
    items for batch calibration)."""
    probs = [option_probs(lps) for lps in logprob_rows]
    return [sum(p[i] for p in probs) / len(probs) for i in range(len(probs[0]))]


def prior_spread(logprob_rows: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Per letter, the standard deviation of the renormalized probability over the rows and the standard error of
    their mean (the prior)."""
    probs = [option_probs(lps) for lps in logprob_rows]
    n = len(probs)
    sd = []
    for i in range(len(probs[0])):
        m = sum(p[i] for p in probs) / n
        sd.append(math.sqrt(sum((p[i] - m) ** 2 for p in probs) / (n - 1)) if n > 1 else 0.0)
    return {"prior_sd": sd, "prior_se": [s / math.sqrt(n) for s in sd]}


def calibrate(logprobs: Sequence[float], prior: Sequence[float]) -> list[float]:
    """Calibrated option scores: ``log p(k|x)`` (renormalized over the options) minus ``log prior(k)``."""
    probs = option_probs(logprobs)
    return [math.log(max(p, 1e-300)) - math.log(max(q, 1e-300)) for p, q in zip(probs, prior)]
