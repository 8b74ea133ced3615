"""Token-level unlikelihood training (Welleck et al., 2019, "Neural Text Generation with Unlikelihood Training").

At every trained position the loss adds ``-alpha * sum_c log(1 - p(c))`` over the candidates ``c``: the tokens the
same row's target already produced before this position, minus the gold token. Maximum likelihood alone leaves a
small model that repeats itself under greedy decoding; the unlikelihood term lowers the probability of repeating
what the answer already said, where the data does not repeat it. Candidates come from the target (the trained
tokens), not the prompt, so copying words of the question stays free.
"""
from __future__ import annotations

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
