"""Pure option choice from log-likelihoods, and the letter prior that calibration divides out (:mod:`eval.calibration`)
(generated answers are read by :func:`medadapt.reasoning.extract_answer`)."""
from __future__ import annotations

import math
from collections.abc import Sequence


def choose(logprobs: Sequence[float], lengths: Sequence[int] | None = None) -> int:
    """Index of the best option: highest total log-probability, or per unit of ``lengths`` (acc_norm) when given."""
    if lengths is not None:
        scores = [lp / max(1, n) for lp, n in zip(logprobs, lengths)]
    else:
        scores = list(logprobs)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def option_probs(logprobs: Sequence[float]) -> list[float]:
    """Softmax of the options' log-probabilities (renormalized over the options)."""
    m = max(logprobs)
    exps = [math.exp(x - m) for x in logprobs]
    total = sum(exps)
    return [e / total for e in exps]


def norm_lengths(option_texts: Sequence[str]) -> list[int]:
    """acc_norm's denominators as lm-evaluation-harness computes them: each choice's characters (the option text,
    without the space its continuation starts with; not UTF-8 bytes)."""
    return [len(t) for t in option_texts]


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
