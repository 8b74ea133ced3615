"""Perplexity of base, CPT and MSFT on their passage sets (:mod:`eval.perplexity`): the passages, each model's
summed NLL per passage, and the perplexity file's results dict. Run::

    python -m eval perplexity [--variants base,cpt=DIR,msft=DIR] [--general 120] [--out FILE]
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

from eval.perplexity import GENERAL_SOURCE, KIND, SETS, summarize


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
