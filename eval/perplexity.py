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
a seeded bootstrap over passages. Run::

    python -m eval perplexity [--variants base,cpt=DIR,msft=DIR] [--general 120] [--out FILE]

The file is ``<results_dir>/<profile>/perplexity-<time>.json`` (``kind: perplexity``); the Benchmarks tab's
perplexity panel reads it.
"""
from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from pathlib import Path

SETS = {"heldout": "CPT's held-out split", "unsampled": "corpus outside CPT's training sample",
        "general": "general-text control (Python reference docs)"}
GENERAL_SOURCE = "CPython's reference documentation (pydoc_data.topics, shipped with the interpreter)"
BOOTSTRAP = 2000
KIND = "perplexity"


# ---------------------------------------------------------------- passages

def general_passages(n: int, seed: int = 0, min_words: int = 40) -> list[dict]:
    """``n`` seeded prose paragraphs of CPython's reference documentation (code samples and tables left out)."""
    from pydoc_data.topics import topics

    paras = []
    for topic in sorted(topics):
        for j, block in enumerate(re.split(r"\n\s*\n", topics[topic])):
            lines = [x for x in block.splitlines() if x.strip()]
            if not lines or any(x.startswith((" ", "\t", ">>>", "+", "|", "*")) for x in lines):
                continue  # indented code, prompts, tables, lists
            text = " ".join(x.strip() for x in lines)
            if len(text.split()) >= min_words and not re.search(r"[{}\[\]=]{3,}", text):
                paras.append({"id": f"{topic}#{j}", "text": text})
    random.Random(seed).shuffle(paras)
    return paras[:n]


def heldout_record(meta: dict) -> tuple[dict, str]:
    """The CPT run's record of what it never trained on (an adapter's ``medadapt.json``), and where it came from."""
    data = meta.get("data") or {}
    rec = data.get("heldout") or (data.get("cpt") or {}).get("heldout")
    if not rec:
        raise ValueError("the CPT adapter does not record its held-out passages (trained before they were recorded): "
                         "train it again to score its perplexity")
    return rec, "recorded with the adapter"


def corpus_passages(cfg, rec: dict) -> dict[str, list[dict]]:
    """``{"heldout": [...], "unsampled": [...]}`` passages (id, text as CPT trained on it: title + content)."""
    from medadapt.data.corpus import iter_corpus

    want = {"heldout": list(rec.get("split") or []), "unsampled": list(rec.get("unsampled") or [])}
    ids = {i for v in want.values() for i in v}
    found = {d.id: d.contents for d in iter_corpus(cfg, rec.get("sources") or None) if d.id in ids}
    return {name: [{"id": i, "text": found[i]} for i in v if i in found] for name, v in want.items()}


# ---------------------------------------------------------------- scoring and statistics

def passage_nll(model, tok, texts: Sequence[str], max_tokens: int = 256, batch_size: int = 8) -> list[tuple[float, int]]:
    """``(summed NLL in nats, scored tokens)`` per passage: every token after the first, given the ones before."""
    import torch

    enc = [tok(t, add_special_tokens=False).input_ids[:max_tokens] for t in texts]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(enc)
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for b in range(0, len(order), batch_size):
        idx = [i for i in order[b:b + batch_size] if len(enc[i]) > 1]
        if not idx:
            continue
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(enc[i])] = torch.tensor(enc[i])
            mask[r, :len(enc[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = ids[:, 1:].to(device)
            nll = -logp.gather(2, tgt[..., None])[..., 0] * mask[:, 1:].to(device)
        for r, i in enumerate(idx):
            out[i] = (float(nll[r].sum()), len(enc[i]) - 1)
    return out


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


# ---------------------------------------------------------------- the run

def default_variants(cfg) -> list[str]:
    """base, the CPT stage of the newest MSFT run (``cpt_adapter/`` beside its adapter) or the newest CPT run, MSFT."""
    from medadapt.adapters import is_adapter_dir, resolve_adapter

    specs = ["base"]
    msft = resolve_adapter(cfg, "msft")
    cpt = None
    if msft is not None and is_adapter_dir(Path(msft).parent / "cpt_adapter"):
        cpt = Path(msft).parent / "cpt_adapter"
    cpt = cpt or resolve_adapter(cfg, "cpt")
    if cpt is not None:
        specs.append(f"cpt={cpt}")
    if msft is not None:
        specs.append(f"msft={msft}")
    return specs


def run_perplexity(cfg, specs: list[str], n_general: int = 120, max_tokens: int = 256, batch_size: int = 8) -> dict:
    """Score every variant on the three passage sets; the results dict of a perplexity file."""
    from datetime import datetime, timezone

    from eval.variants import activate, load_for_variants, resolve_variants, set_threads

    variants = [v for v in resolve_variants(cfg, specs) if not v.skipped]
    cpt = next((v for v in variants if v.name == "cpt"), None) or next((v for v in variants if v.name == "msft"), None)
    if cpt is None:
        raise ValueError("needs a CPT or MSFT adapter: its record names the held-out passages")
    meta = json.loads((Path(cpt.adapter) / "medadapt.json").read_text(encoding="utf-8"))
    rec, how = heldout_record(meta)
    sets = corpus_passages(cfg, rec)
    sets["general"] = general_passages(n_general)
    set_threads(cfg)
    model, tok = load_for_variants(cfg, variants)
    scores: dict[str, dict[str, list]] = {}
    for v in variants:
        with activate(model, v):
            scores[v.name] = {name: passage_nll(model, tok, [p["text"] for p in ps], max_tokens, batch_size)
                              for name, ps in sets.items()}
    return {"kind": KIND, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "profile": cfg.profile, "model": {"name_or_path": cfg.model.name_or_path,
                                              "display_name": cfg.model.display_name, "dtype": cfg.model.dtype},
            "sets": {name: {"label": SETS[name], "passages": [p["id"] for p in ps]} for name, ps in sets.items()},
            "heldout_source": how, "general_source": GENERAL_SOURCE, "max_tokens": max_tokens,
            "adapters": {v.name: {"adapter": v.adapter, "sha256": v.meta.get("sha256")} for v in variants},
            "nll": {v: {name: [list(r) for r in rows] for name, rows in s.items()} for v, s in scores.items()},
            **summarize(scores)}


def is_perplexity(data: dict) -> bool:
    return isinstance(data, dict) and data.get("kind") == KIND
