"""Unlikelihood training (Welleck et al., 2019, "Neural Text Generation with Unlikelihood Training").

Token level (setting ``unlikelihood``): at every trained position the loss adds ``-alpha * sum_c log(1 - p(c))``
over the candidates ``c``: the tokens the same row's target already produced before this position, minus the gold
token. Maximum likelihood alone leaves a small model that repeats itself under greedy decoding; the unlikelihood
term lowers the probability of repeating what the answer already said, where the data does not repeat it.
Candidates come from the target (the trained tokens), not the prompt, so copying words of the question stays free.

Sequence level (setting ``seq_unlikelihood``): every few steps the model continues the batch's own prompts greedily,
as the evaluation decodes, and each token of a 4-gram it already produced in that continuation adds
``-log(1 - p(token))``. The token-level term only sees the data, which rarely loops; this one penalises the loops the
model itself falls into.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from trainers.formatting import IGNORE, next_token_labels


def previous_target_mask(targets: Any, rows: Any, vocab: int) -> Any:
    """(K, vocab) bool: at each of the K trained positions (row-major, ``rows`` their row), the tokens its row's
    target produced at earlier positions, without the position's own gold token."""
    import torch

    seen = torch.zeros(targets.shape[0], vocab, dtype=torch.bool, device=targets.device)
    start = 0
    for n in torch.unique_consecutive(rows, return_counts=True)[1].tolist():
        later, earlier = torch.tril_indices(n, n, -1, device=targets.device)
        seen[start + later, targets[start + earlier]] = True
        start += n
    seen[torch.arange(targets.shape[0], device=targets.device), targets] = False
    return seen


def unlikelihood_sum(logits: Any, targets: Any, rows: Any) -> Any:
    """Sum over positions and candidates of ``-log(1 - p(candidate))``; ``logits`` (K, vocab) at the K trained
    positions, ``targets`` (K,) their gold tokens, ``rows`` (K,) their row in the batch, rows contiguous."""
    import torch

    pos, cand = previous_target_mask(targets, rows, logits.shape[-1]).nonzero(as_tuple=True)
    if pos.numel() == 0:
        return logits.sum() * 0.0
    logp = logits[pos, cand].float() - torch.logsumexp(logits.float(), dim=-1)[pos]
    return -torch.log1p(-logp.exp().clamp(max=1 - 1e-6)).sum()


def trained_positions(inputs: dict[str, Any], logits: Any) -> tuple[Any, Any, Any]:
    """(logits, targets, rows) at the trained positions, from a batch of :class:`trainers.formatting.PadCollator`:
    with ``logits_to_keep`` the model already returned only those (K, vocab); else (B, T, vocab) is shifted."""
    import torch

    keep = inputs.get("logits_to_keep")
    if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and keep.ndim == 2:
        return logits, inputs["shift_labels"], keep.nonzero(as_tuple=True)[0]
    following = next_token_labels(inputs["labels"])
    mask = following != IGNORE
    return logits[mask], following[mask], mask.nonzero(as_tuple=True)[0]


def unlikelihood_trainer(base: type, alpha: float) -> type:
    """A Trainer whose loss is the model's cross-entropy plus ``alpha`` times the token-level unlikelihood term,
    normalised as the cross-entropy is (per trained token, or per ``num_items_in_batch`` under accumulation). Only
    in training: the eval loss stays the cross-entropy alone."""

    class UnlikelihoodTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if not model.training:  # evaluation reports the plain cross-entropy, comparable across recipes
                return (loss, outputs) if return_outputs else loss
            logits, targets, rows = trained_positions(inputs, outputs.logits)
            term = alpha * unlikelihood_sum(logits, targets, rows)
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:  # as the model's summed CE
                term = term / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    term = term * (self.accelerator.num_processes // self.get_tp_size())
            else:  # the model's mean CE; the Trainer divides both by the accumulation steps
                term = term / max(int(targets.numel()), 1)
            loss = loss + term
            return (loss, outputs) if return_outputs else loss

    return UnlikelihoodTrainer


REPEAT_NGRAM = 4  # Welleck et al.: a continuation token is a candidate when it is part of a repeated 4-gram


def repeated_ngram_mask(tokens: Sequence[Hashable], n: int = REPEAT_NGRAM) -> list[bool]:
    """For each token (an id, or a word), whether it belongs to an ``n``-gram that already occurred earlier."""
    seen: set[tuple[Hashable, ...]] = set()
    mask = [False] * len(tokens)
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        if gram in seen:
            mask[i:i + n] = [True] * n
        seen.add(gram)
    return mask


def prompts_of(inputs: dict[str, Any]) -> list[list[int]]:
    """Each row's prompt: its tokens before the first trained label (what the model is asked to continue)."""
    out = []
    for ids, labels in zip(inputs["input_ids"].tolist(), inputs["labels"].tolist()):
        first = next((i for i, y in enumerate(labels) if y != IGNORE), len(labels))
        out.append(ids[:first])
    return out


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """(input ids, attention mask) of ``rows`` left-padded to the longest, so every row ends at the last column."""
    import torch

    width = max(len(r) for r in rows)
    return (torch.tensor([[pad_id] * (width - len(r)) + r for r in rows]),
            torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]))


def greedy_continuations(model: Any, prompts: list[list[int]], pad_id: int, eos_ids: set[int],
                         tokens: int) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (left-padded into one batch), each cut after its first end token."""
    import torch

    ids, mask = left_padded(prompts, pad_id)
    width = ids.shape[1]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 max_new_tokens=tokens, do_sample=False, pad_token_id=pad_id, use_cache=True)
    finally:
        model.train(was_training)
    conts = []
    for row in out[:, width:].tolist():
        end = next((i for i, t in enumerate(row) if t in eos_ids), None)
        conts.append(row if end is None else row[:end + 1])
    return conts


def sequence_unlikelihood(model: Any, prompts: list[list[int]], conts: list[list[int]], marks: list[list[bool]],
                          pad_id: int) -> Any:
    """Sum of ``-log(1 - p(t))`` over the continuation tokens ``t`` that ``marks`` flags (``repeated_ngram_mask`` of
    each continuation), or None when none is flagged. The model runs only on the rows whose continuation repeats
    itself, its head only at the repeated tokens."""
    import torch

    looping = [i for i, m in enumerate(marks) if any(m)]
    if not looping:
        return None
    prompts, conts, marks = ([xs[i] for i in looping] for xs in (prompts, conts, marks))
    rows = [p + c for p, c in zip(prompts, conts)]
    ids, attn = left_padded(rows, pad_id)
    width = ids.shape[1]
    keep = torch.zeros_like(ids, dtype=torch.bool)  # position t-1 predicts the marked token at t
    targets = []
    for b, (r, c, m) in enumerate(zip(rows, conts, marks)):
        start = width - len(c)
        for j, marked in enumerate(m):
            if marked:
                keep[b, start + j - 1] = True
                targets.append(c[j])
    device = next(model.parameters()).device
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=position_ids.to(device),
                   logits_to_keep=keep.to(device)).logits
    logits = logits[keep.to(device)] if logits.ndim == 3 else logits  # a model that returned every position
    logp = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(targets)), torch.tensor(targets, device=device)]
    return -torch.log1p(-logp.exp().clamp(max=1 - 1e-6)).sum()


def sequence_unlikelihood_trainer(base: type, alpha: float, every: int, tokens: int) -> type:
    """A Trainer that, on every ``every``-th optimizer step, adds ``alpha`` times the sequence-level term (per
    continuation token) of ``tokens``-token greedy continuations of the batch's prompts. Only in training."""

    class SequenceUnlikelihoodTrainer(base):
        repeated_share: float | None = None  # of the last continuations, until the next training log carries it

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            due = model.training and (self.state.global_step + 1) % every == 0
            prompts = [p for p in prompts_of(inputs) if p] if due else []  # rows trained whole (CPT) have none
            if prompts:
                tok, unwrapped = self.processing_class, self.accelerator.unwrap_model(model)
                ends = unwrapped.generation_config.eos_token_id
                ends = set(ends if isinstance(ends, list) else [ends]) | {tok.eos_token_id, tok.pad_token_id}
                conts = greedy_continuations(unwrapped, prompts, tok.pad_token_id, ends - {None}, tokens)
                marks = [repeated_ngram_mask(c) for c in conts]
                total = max(sum(len(c) for c in conts), 1)
                self.repeated_share = sum(map(sum, marks)) / total
                # the unwrapped model: a DDP forward would add a buffer broadcast that ranks without a loop do not make;
                # the gradients still reach DDP's all-reduce, whose hooks sit on the parameters
                term = sequence_unlikelihood(unwrapped, prompts, conts, marks, tok.pad_token_id)
                if term is not None:
                    term = alpha * term / total
                    if self.model_accepts_loss_kwargs and num_items_in_batch is not None:  # no division follows
                        term = term / self.args.gradient_accumulation_steps
                    loss = loss + term
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            """Training logs carry ``repeated_share``: the share of the last greedy continuations' tokens that sat in a
            repeated 4-gram (how much the model loops as it trains)."""
            if "loss" in logs and self.repeated_share is not None:
                logs = {**logs, "repeated_share": round(self.repeated_share, 4)}
                self.repeated_share = None
            return super().log(logs, *args, **kwargs)

    return SequenceUnlikelihoodTrainer
