"""Batched option log-likelihood (lm-evaluation-harness style): no generation, a few forward passes per batch.

A request is one item: its context token ids and one continuation per option. Options whose model input is the
same (every single-token continuation, e.g. `` A``…`` D``) share one row, so letter scoring costs one row per item.
Rows are sorted longest first and right-padded into batches; only the needed positions go through log-softmax.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


def _batches(order: Sequence[int], batch_size: int,
             on_batch: Callable[[int, int], None] | None) -> Iterator[Sequence[int]]:
    """``order`` in slices of ``batch_size``; once each slice is scored, ``on_batch(done, len(order))``."""
    done = 0
    for b in range(0, len(order), max(1, batch_size)):
        idx = order[b:b + batch_size]
        yield idx
        done += len(idx)
        if on_batch:
            on_batch(done, len(order))


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
    for idx in _batches(order, batch_size, on_batch):
        batch = [rows[i] for i in idx]
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
    for idx in _batches(order, batch_size, on_batch):
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
    return out


# ---------------------------------------------------------------- several prompts that share a prefix, one row

@dataclass
class Branch:
    """One prompt of a :class:`BranchRequest`: the tokens after the shared prefix and its continuation targets."""

    suffix: list[int]
    targets: dict[str, list[list[int]]]  # target name -> one token list per option


@dataclass
class BranchRequest:
    """Prompts that share a token prefix (an item under every rotation of its options, the content-free copies of
    a benchmark): the prefix goes through the model once, each branch's suffix and continuations after it."""

    prefix: list[int]
    branches: list[Branch]


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every sequence shares."""
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def encode_branches(tokenizer, contexts: Sequence[str], targets: Sequence[dict[str, Sequence[str]]],
                    add_special_tokens: bool, max_len: int) -> BranchRequest:
    """Every context tokenized as :func:`encode_multi` does; their longest common token prefix becomes the shared
    prefix (so "wherever the layout allows" is found from the tokens, not assumed). When the longest branch would
    not fit ``max_len``, the prefix is cut from the left (and, if that is not enough, each suffix)."""
    enc = [encode_multi(tokenizer, c, t, add_special_tokens, 1 << 30) for c, t in zip(contexts, targets)]
    n = common_prefix([e.context for e in enc])
    if len(enc) > 1 and n == min(len(e.context) for e in enc) and n > 0:
        n -= 1  # keep one token in each branch when one context is a prefix of another (its anchor is its own)
    prefix = enc[0].context[:n]
    suffixes = [e.context[n:] for e in enc]
    extra = max(len(s) + max(len(c) for cs in e.targets.values() for c in cs) for s, e in zip(suffixes, enc))
    over = len(prefix) + extra - max_len
    if over > 0:
        cut = min(over, len(prefix))
        prefix, over = prefix[cut:], over - cut
        if over > 0:
            suffixes = [s[min(over, len(s) - 1):] for s in suffixes]
    return BranchRequest(prefix, [Branch(s, e.targets) for s, e in zip(suffixes, enc)])


def _decoder_and_head(model):
    """The transformer body and the LM head of a causal LM (through a PEFT wrapper: LoRA layers stay active)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings()


def _branch_row(req: BranchRequest) -> tuple[list[int], list[int], list[tuple[int, int]], list]:
    """One request laid out as a row: ids, position ids, attention spans and the scored slots.

    ``spans``: per token, ``(start, own)``: it sees the prefix, then the slice ``start..own`` (itself included).
    ``slots``: ``(branch, target, option, token index in the row, token id)`` for every continuation token."""
    ids, pos, spans, slots = list(req.prefix), list(range(len(req.prefix))), [], []
    n = len(req.prefix)
    spans = [(0, i) for i in range(n)]
    for j, br in enumerate(req.branches):
        s0 = len(ids)
        for i, t in enumerate(br.suffix):
            ids.append(t)
            pos.append(n + i)
            spans.append((s0, s0 + i))
        anchor = len(ids) - 1  # the branch's last prompt token predicts every continuation's first token
        for name, conts in br.targets.items():
            for o, cont in enumerate(conts):
                slots.append((j, name, o, anchor, cont[0]))
                c0 = len(ids)
                for i, t in enumerate(cont[:-1]):
                    ids.append(t)
                    pos.append(n + len(br.suffix) + i)
                    spans.append((s0, s0 + len(br.suffix) - 1, c0, c0 + i))
                    slots.append((j, name, o, c0 + i, cont[i + 1]))
    return ids, pos, spans, slots


def score_branches(model, requests: Sequence[BranchRequest], batch_size: int = 8, pad_id: int = 0,
                   on_batch: Callable[[int, int], None] | None = None) -> list[list[dict[str, list[float]]]]:
    """Total log-probability of every continuation of every branch: ``[request][branch][target][option]``.

    Each request is ONE row: the shared prefix once, then every branch's suffix, each followed by its longer
    continuations (all but their last token) packed one after another. A 4D attention mask lets a branch's suffix see
    the prefix and its own earlier tokens, a packed continuation the prefix, its branch's suffix and itself; position
    ids restart after the prefix for every branch, so each branch is scored exactly as if its prompt stood alone.
    The LM head runs only on the scored positions (hidden states gathered per row). Rows are sorted by length and
    left-padded into batches of ``batch_size``.
    """
    import torch

    decoder, head = _decoder_and_head(model)
    layouts = [_branch_row(r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: -len(layouts[i][0]))
    out = [[{name: [0.0] * len(conts) for name, conts in br.targets.items()} for br in r.branches] for r in requests]
    device = next(model.parameters()).device
    for idx in _batches(order, batch_size, on_batch):
        width = max(len(layouts[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        pos = torch.zeros((len(idx), width), dtype=torch.long)
        allow = torch.zeros((len(idx), width, width), dtype=torch.bool)
        sel_row, sel_pos, sel_tok = [], [], []
        for i, k in enumerate(idx):
            row_ids, row_pos, spans, slots = layouts[k]
            off = width - len(row_ids)
            n = len(requests[k].prefix)
            ids[i, off:] = torch.tensor(row_ids)
            pos[i, off:] = torch.tensor(row_pos)
            for t, span in enumerate(spans):
                q = off + t
                allow[i, q, off:off + min(n, t + 1)] = True  # the prefix (causal inside it)
                if t >= n:
                    allow[i, q, off + span[0]:off + span[1] + 1] = True  # its branch's suffix (so far)
                    if len(span) == 4:
                        allow[i, q, off + span[2]:off + span[3] + 1] = True  # its own continuation (so far)
            for _, _, _, p, tok in slots:
                sel_row.append(i)
                sel_pos.append(off + p)
                sel_tok.append(tok)
        allow |= torch.eye(width, dtype=torch.bool)  # padding positions see themselves (no empty softmax)
        with torch.inference_mode():
            hidden = decoder(input_ids=ids.to(device), attention_mask=allow[:, None].to(device),
                             position_ids=pos.to(device)).last_hidden_state
            picked = hidden[torch.tensor(sel_row, device=device), torch.tensor(sel_pos, device=device)]
            logp = torch.log_softmax(head(picked).float(), dim=-1)
            vals = logp.gather(1, torch.tensor(sel_tok, device=device)[:, None])[:, 0].tolist()
        m = 0
        for k in idx:
            for j, name, o, _, _ in layouts[k][3]:
                out[k][j][name][o] += vals[m]
                m += 1
    return out
