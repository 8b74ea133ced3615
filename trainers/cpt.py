"""Continual pretraining (CPT) of a LoRA adapter on MedRAG corpus snippets, packed to the sequence length.

Run: ``python -m trainers.cpt --config configs/offline/cpt.yaml [--output_dir D] [--resume] [key=value ...]``.
Snippets (``contents`` = title + text) are split into train/eval by snippet, tokenized, EOS-joined and cut into
``max_length`` blocks, so no batch carries padding. ``packing: false`` trains one padded example per snippet (the
seed's setup, kept for comparison). ``lora.modules_to_save: [embed_tokens, lm_head]`` also trains those, as the seed.

The adapter's ``medadapt.json`` records the passages the run never trained on (``data.heldout``, :func:`heldout_record`):
the ids of its held-out split and a seeded sample of the corpus snippets outside its training sample, so a later
perplexity check (``python -m eval perplexity``) scores exactly those.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

from medadapt.config import AppConfig, TrainConfig
from trainers.job import Context, Outcome, entry_points

log = logging.getLogger(__name__)
DESCRIPTION = __doc__.split("\n")[0]


UNSAMPLED_RECORDED = 256  # corpus snippets outside the training sample whose ids the adapter records


def corpus_docs(tcfg: TrainConfig, app: AppConfig) -> list:
    """Snippets (``CorpusDoc``) of ``tcfg.dataset`` (corpus names) or the profile's RAG corpus."""
    from medadapt.data.corpus import iter_corpus

    return list(iter_corpus(app, list(tcfg.dataset) or None))


def corpus_texts(tcfg: TrainConfig, app: AppConfig) -> list[str]:
    """Snippet texts of ``tcfg.dataset`` (corpus names) or the profile's RAG corpus."""
    return [doc.contents for doc in corpus_docs(tcfg, app)]


def split_docs(tcfg: TrainConfig, docs: list) -> tuple[list, list]:
    """(train, held out) snippets: the split the run trains on (seeded; the seed's notebook: shuffled, then split)."""
    from trainers.common import split_rows

    return split_rows(docs, tcfg, preshuffle=tcfg.prompt == "seed")


def heldout_record(tcfg: TrainConfig, app: AppConfig, docs: list, train: list, held: list) -> dict[str, Any]:
    """What the run never trained on, by snippet id: ``split`` (its held-out split, scored for eval loss) and
    ``unsampled`` (a seeded sample of at most :data:`UNSAMPLED_RECORDED` corpus snippets outside its training
    sample, empty when it trained on the whole corpus)."""
    import random

    used = {id(d) for d in train} | {id(d) for d in held}
    rest = [d.id for d in docs if id(d) not in used]
    random.Random(tcfg.seed).shuffle(rest)
    return {"split": [d.id for d in held], "unsampled": sorted(rest[:UNSAMPLED_RECORDED]),
            "unsampled_of": len(rest), "sources": list(tcfg.dataset) or list(app.rag.corpus)}


def build_cpt_data(tcfg: TrainConfig, app: AppConfig, tok: Any) -> tuple[list, list, dict[str, Any]]:
    """(train blocks, eval blocks, data info); the split is by snippet, before packing."""
    from trainers.formatting import cpt_examples

    docs = corpus_docs(tcfg, app)
    seed = tcfg.prompt == "seed"  # the seed's notebook: shuffled, then split; one snippet + EOS per example
    train_docs, eval_docs = split_docs(tcfg, docs)
    train_texts, eval_texts = [d.contents for d in train_docs], [d.contents for d in eval_docs]
    train = cpt_examples(tok, train_texts, tcfg.max_length, tcfg.packing, seed)
    evals = cpt_examples(tok, eval_texts, tcfg.max_length, tcfg.packing, seed) if eval_texts else []
    if tcfg.max_eval_samples > 0:
        evals = evals[: tcfg.max_eval_samples]
    tokens = sum(len(e["input_ids"]) for e in train)
    info = {"sources": list(tcfg.dataset) or list(app.rag.corpus), "snippets": len(train_texts),
            "eval_snippets": len(eval_texts), "train_examples": len(train), "eval_examples": len(evals),
            "train_tokens": tokens, "packing": tcfg.packing,
            "heldout": heldout_record(tcfg, app, docs, train_docs, eval_docs)}
    if not train:
        raise ValueError(f"no CPT training block: {len(train_texts)} snippets are shorter than max_length="
                         f"{tcfg.max_length} tokens together")
    log.info("CPT data: %s", {k: v for k, v in info.items() if k != "heldout"})
    return train, evals, info


def train_cpt(ctx: Context, *, stage: str = "", ckpt_stage: str = "", extra_total: int = 0) -> Outcome:
    from trainers.job import train_adapter

    return train_adapter(ctx, "cpt", build_cpt_data, ckpt_stage=ckpt_stage, stage=stage, extra_total=extra_total)


run, main = entry_points("cpt", DESCRIPTION, train_cpt)


if __name__ == "__main__":
    sys.exit(main())
