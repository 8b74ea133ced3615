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

    One forward pass per batch reads every target: each row is the left-padded prompt followed by the longer
    continuations (an option's text, all but its last token) packed one after another. A 4D attention mask lets a
    packed continuation see the prompt and its own earlier tokens only, and its position ids restart where the prompt
    ends, so each is scored exactly as if it followed the prompt alone. The prompt's last position scores the
    single-token continuations (the letters) and the first token of the longer ones. Option-text scoring so costs its
    own tokens, not another pass over the prompt; the LM head runs on the packed tail only.
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
        longer = [[(name, o, cont) for name, conts in r.targets.items() for o, cont in enumerate(conts) if len(cont) > 1]
                  for r in batch]
        packed = max(sum(len(c) - 1 for _, _, c in x) for x in longer)
        total = width + packed
        ids = torch.full((len(batch), total), pad_id, dtype=torch.long)
        pos = torch.zeros((len(batch), total), dtype=torch.long)
        allow = torch.zeros((len(batch), total, total), dtype=torch.bool)
        causal = torch.tril(torch.ones((total, total), dtype=torch.bool))
        starts: list[list[int]] = []
        for i, (r, x) in enumerate(zip(batch, longer)):
            n = len(r.context)
            ids[i, width - n:width] = torch.tensor(r.context)
            pos[i, width - n:width] = torch.arange(n)
            allow[i, width - n:width, width - n:width] = causal[:n, :n]
            at, row_starts = width, []
            for _, _, cont in x:
                k = len(cont) - 1
                ids[i, at:at + k] = torch.tensor(cont[:-1])
                pos[i, at:at + k] = n + torch.arange(k)
                allow[i, at:at + k, width - n:width] = True
                allow[i, at:at + k, at:at + k] = causal[:k, :k]
                row_starts.append(at)
                at += k
            starts.append(row_starts)
        allow |= torch.eye(total, dtype=torch.bool)  # padding rows see themselves (no empty softmax)
        keep = packed + 1  # the prompt's last position and the packed tail
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=allow[:, None].to(device),
                           position_ids=pos.to(device), logits_to_keep=keep).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        for i, (k, r, x) in enumerate(zip(idx, batch, longer)):
            for name, conts in r.targets.items():
                for o, cont in enumerate(conts):
                    out[k][name][o] += float(logp[i, 0, cont[0]])
            for (name, o, cont), at in zip(x, starts[i]):
                rel = at - width + 1  # index of the packed segment inside the kept tail
                out[k][name][o] += float(sum(logp[i, rel + j, t] for j, t in enumerate(cont[1:])))
        done += len(batch)
        if on_batch:
            on_batch(done, len(requests))
    return out
