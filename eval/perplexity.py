"""What CPT buys where it should show: per-token perplexity of base, CPT and MSFT on corpus passages the CPT run never
trained on, and on a general-text control.

Domain-adaptive pretraining is judged this way (Gururangan et al. 2020): a CPT that makes held-out domain text more
likely without making general text less likely is doing its job, even where the multiple-choice views stay flat.

Passage sets (``SETS``):

- ``heldout``: the CPT run's own held-out split, read from its adapter's ``medadapt.json`` (``data.heldout.split``,
  recorded by :mod:`trainers.cpt`; an adapter without that record is refused);
- ``unsampled``: the recorded seeded sample of corpus snippets outside the run's training sample (never trained on);
- ``general``: the control, non-medical English prose available offline on every machine: paragraphs of CPython's
  own reference documentation (``pydoc_data.topics``, shipped with the interpreter), seeded sample.

Each passage is scored alone (its first token is context only), cut to ``max_tokens``. Per-token perplexity =
``exp(total NLL / total tokens)`` over a set; its 95% CI and the paired ratio of two variants (same passages) come from
a seeded bootstrap over passages. This module is the measure and its file (pure); :mod:`eval.perplexity_run` scores
the passages with the models (``python -m eval perplexity``). The file is
``<results_dir>/<profile>/perplexity-<time>.json`` (``kind: perplexity``); the Benchmarks tab's perplexity panel
reads it.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

SETS = {"heldout": "CPT's held-out split", "unsampled": "corpus outside CPT's training sample",
        "general": "general-text control (Python reference docs)"}
GENERAL_SOURCE = "CPython's reference documentation (pydoc_data.topics, shipped with the interpreter)"
BOOTSTRAP = 2000
KIND = "perplexity"


# ---------------------------------------------------------------- statistics

def perplexity(rows: Sequence[tuple[float, int]]) -> float:
    nll, n = sum(r[0] for r in rows), sum(r[1] for r in rows)
    return math.exp(nll / n) if n else float("nan")


def bootstrap_ci(rows: Sequence[tuple[float, int]], seed: int = 0, b: int = BOOTSTRAP) -> tuple[float, float]:
    """95% percentile bootstrap CI of the per-token perplexity, resampling passages."""
    rng = random.Random(seed)
    k = len(rows)
    stats = sorted(perplexity([rows[rng.randrange(k)] for _ in range(k)]) for _ in range(b))
    return stats[int(0.025 * b)], stats[int(0.975 * b) - 1]


def paired_ratio(a: Sequence[tuple[float, int]], b: Sequence[tuple[float, int]], seed: int = 0,
                 n_boot: int = BOOTSTRAP) -> dict:
    """Perplexity of B over A on the same passages, with a 95% paired bootstrap CI (the same passages resampled for
    both) and the share of resamples in which B is not lower (a one-sided bootstrap p for "B lowers perplexity")."""
    rng = random.Random(seed)
    k = len(a)
    ratio = perplexity(b) / perplexity(a)
    stats = []
    for _ in range(n_boot):
        pick = [rng.randrange(k) for _ in range(k)]
        stats.append(perplexity([b[i] for i in pick]) / perplexity([a[i] for i in pick]))
    stats.sort()
    return {"ratio": ratio, "ci": [stats[int(0.025 * n_boot)], stats[int(0.975 * n_boot) - 1]],
            "p_not_lower": sum(s >= 1 for s in stats) / n_boot}


def summarize(per_variant: dict[str, dict[str, list]]) -> dict:
    """``{variant: {set: {ppl, ci, tokens, passages}}}`` and ``paired``: every variant over base (and MSFT over CPT)."""
    out: dict = {"models": {}, "paired": {}}
    for v, sets in per_variant.items():
        out["models"][v] = {name: {"ppl": perplexity(rows), "ci": list(bootstrap_ci(rows)),
                                   "tokens": sum(r[1] for r in rows), "passages": len(rows)}
                            for name, rows in sets.items() if rows}
    names = list(per_variant)
    pairs = [("base", v) for v in names if v != "base" and "base" in names]
    pairs += [("cpt", "msft")] if "cpt" in names and "msft" in names else []
    for a, b in pairs:
        out["paired"][f"{b}/{a}"] = {name: paired_ratio(per_variant[a][name], per_variant[b][name])
                                     for name in per_variant[a] if per_variant[a][name]}
    return out


def is_perplexity(data: dict) -> bool:
    return isinstance(data, dict) and data.get("kind") == KIND
