"""Batched option log-likelihood (lm-evaluation-harness style): no generation, a few forward passes per batch.

A request is one item: its context token ids and one continuation per option. Options whose model input is the
same (every single-token continuation, e.g. `` A``…`` D``) share one row, so letter scoring costs one row per item.
Rows are sorted longest first and right-padded into batches; only the needed positions go through log-softmax.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Request:
    context: list[int]
    continuations: list[list[int]]  # one token list per option


def encode(tokenizer, context: str, continuations: Sequence[str], add_special_tokens: bool, max_len: int) -> Request:
    """Tokenize like the harness: continuation ids = ids(context + cont) minus ids(context); left-truncate context."""
    ctx = tokenizer(context, add_special_tokens=add_special_tokens).input_ids
    conts = []
    for c in continuations:
        whole = tokenizer(context + c, add_special_tokens=add_special_tokens).input_ids
        ids = whole[len(ctx):] if whole[:len(ctx)] == ctx else tokenizer(c, add_special_tokens=False).input_ids
        conts.append(ids or tokenizer(c, add_special_tokens=False).input_ids)
    longest = max(len(c) for c in conts)
    if len(ctx) + longest > max_len:
        ctx = ctx[len(ctx) + longest - max_len:]
    return Request(ctx, conts)


@dataclass
class _Row:
    request: int
    inputs: list[int]
    targets: list[tuple[int, int, int]]  # (option, position whose logits predict it, token id)


def build_rows(requests: Sequence[Request]) -> list[_Row]:
    rows: list[_Row] = []
    for r, req in enumerate(requests):
        by_input: dict[tuple[int, ...], _Row] = {}
        for o, cont in enumerate(req.continuations):
            inputs = req.context + cont[:-1]
            key = tuple(inputs)
            if key not in by_input:
                by_input[key] = _Row(r, inputs, [])
                rows.append(by_input[key])
            start = len(req.context) - 1
            by_input[key].targets.extend((o, start + i, tok) for i, tok in enumerate(cont))
    return rows


def score_requests(model, requests: Sequence[Request], batch_size: int = 8, pad_id: int = 0,
                   on_batch: Callable[[int, int], None] | None = None) -> list[list[float]]:
    """Total log-probability of every option continuation of every request (``[request][option]``).

    Rows are left-padded so every target sits in the last ``K`` positions and the LM head runs on those only
    (``logits_to_keep``): letter scoring computes one vocabulary row per item instead of one per token.
    """
    import torch

    rows = build_rows(requests)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].inputs))
    out = [[0.0] * len(req.continuations) for req in requests]
    device = next(model.parameters()).device
    done = 0
    for b in range(0, len(order), max(1, batch_size)):
        batch = [rows[i] for i in order[b:b + batch_size]]
        width = max(len(r.inputs) for r in batch)
        keep = max(len(r.inputs) - min(t[1] for t in r.targets) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.inputs):] = torch.tensor(r.inputs)
            mask[i, width - len(r.inputs):] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        sel_row, sel_pos, sel_tok = [], [], []
        for i, r in enumerate(batch):
            for _, p, tok in r.targets:  # index inside the kept tail of the padded row
                sel_row.append(i)
                sel_pos.append(keep - (len(r.inputs) - p))
                sel_tok.append(tok)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=position_ids.to(device), logits_to_keep=keep).logits
            picked = logits[torch.tensor(sel_row, device=device), torch.tensor(sel_pos, device=device)].float()
            logp = torch.log_softmax(picked, dim=-1)
            vals = logp.gather(1, torch.tensor(sel_tok, device=device)[:, None])[:, 0].tolist()
        k = 0
        for r in batch:
            for o, _, _ in r.targets:
                out[r.request][o] += vals[k]
                k += 1
        done += len(batch)
        if on_batch:
            on_batch(done, len(rows))
    return out
