"""Pure option choice from log-likelihoods (generated answers are read by :func:`medadapt.reasoning.extract_answer`)."""
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
