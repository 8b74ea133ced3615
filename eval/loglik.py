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


# ---------------------------------------------------------------- several targets, one pass over the prompt

@dataclass
class MultiRequest:
    """One item: its context ids and, per target (``letter``, ``text``), one token list per option."""

    context: list[int]
    targets: dict[str, list[list[int]]]


def encode_multi(tokenizer, context: str, targets: dict[str, Sequence[str]], add_special_tokens: bool,
                 max_len: int) -> MultiRequest:
    """:func:`encode` for several continuation sets over one context (cut once, for the longest of them)."""
    encoded = {name: encode(tokenizer, context, conts, add_special_tokens, 1 << 30) for name, conts in targets.items()}
    ctx = next(iter(encoded.values())).context
    longest = max(len(c) for r in encoded.values() for c in r.continuations)
    if len(ctx) + longest > max_len:
        ctx = ctx[len(ctx) + longest - max_len:]
    return MultiRequest(ctx, {name: r.continuations for name, r in encoded.items()})


def score_multi(model, requests: Sequence[MultiRequest], batch_size: int = 8, pad_id: int = 0,
                on_batch: Callable[[int, int], None] | None = None) -> list[dict[str, list[float]]]:
    """Total log-probability of every continuation of every target: ``[request][target][option]``.

    The prompt goes through the model once per item (left-padded batch, KV cache kept, LM head on the last
    position only): that position scores every single-token continuation (the letters) and the first token of the
    longer ones. The rest of each longer continuation (an option's text) is fed on top of the cached prompt, one
    option per item at a time, and the cache is cropped back to the prompt after each. So option-text scoring costs
    its continuation tokens, not another pass over the prompt.
    """
    import torch

    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].context))
    out = [{name: [0.0] * len(conts) for name, conts in r.targets.items()} for r in requests]
    device = next(model.parameters()).device
    done = 0
    for b in range(0, len(order), max(1, batch_size)):
        idx = order[b:b + batch_size]
        batch = [requests[i] for i in idx]
        width = max(len(r.context) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.context):] = torch.tensor(r.context)
            mask[i, width - len(r.context):] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            res = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
                        use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(res.logits[:, -1].float(), dim=-1).cpu()
            cache = res.cache
            slots: list[list[tuple[str, int, list[int]]]] = []  # per item: its multi-token continuations
            for i, (k, r) in enumerate(zip(idx, batch)):
                longer = []
                for name, conts in r.targets.items():
                    for o, cont in enumerate(conts):
                        out[k][name][o] += float(first[i, cont[0]])
                        if len(cont) > 1:
                            longer.append((name, o, cont))
                slots.append(longer)
            for s in range(max(len(x) for x in slots)):
                feed = [x[s][2][:-1] if s < len(x) else [] for x in slots]
                n = max(1, max(len(f) for f in feed))
                c_ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
                c_mask = torch.zeros((len(batch), n), dtype=torch.long)
                for i, f in enumerate(feed):
                    if f:
                        c_ids[i, :len(f)] = torch.tensor(f)
                        c_mask[i, :len(f)] = 1
                c_pos = mask.sum(-1, keepdim=True) + torch.arange(n)[None, :]
                logits = model(input_ids=c_ids.to(device), attention_mask=torch.cat([mask, c_mask], 1).to(device),
                               position_ids=c_pos.to(device), cache=cache, use_cache=True).logits
                logp = torch.log_softmax(logits.float(), dim=-1).cpu()
                for i, (k, x) in enumerate(zip(idx, slots)):
                    if s < len(x):
                        name, o, cont = x[s]
                        out[k][name][o] += float(sum(logp[i, j, t] for j, t in enumerate(cont[1:])))
                cache.crop(-n)  # back to the prompt
        done += len(batch)
        if on_batch:
            on_batch(done, len(requests))
    return out
