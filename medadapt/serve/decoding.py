"""The token loop's parts behind continuous batching (:mod:`medadapt.serve.batching`): :class:`RowCache`, :func:`prefill`,
:func:`decode_step`, sampling (:func:`pick_tokens`) and the one-token attention.

:class:`RowCache`: rows are right-padded, live row ``i`` at batch index ``i``, each with its own length and position;
a joining row is prefilled into slots ``[0, n)`` of its index, a leaving row's index is reused by a row from the end.

The model is any HF causal LM whose attention calls ``cache.update(k, v, layer_idx)`` (Llama, Qwen2, Mistral, ...).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the CPU engine's venv runs this module without the app's config
    from medadapt.config import GenSettings


ATTENTION = "medadapt_decode"


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """Attention for one new token per row: grouped-query matmuls on the KV heads, fewer ops than SDPA's wrapper.

    Other shapes (prefill) go to HF's SDPA function. ``attention_mask`` is additive ``[B, 1, 1, L]``."""
    if query.shape[2] != 1 or attention_mask is None or attention_mask.dtype == torch.bool:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    scores = torch.matmul(query.view(b, kv_heads, heads // kv_heads, d), key.transpose(-1, -2))
    scores = scores.mul_(d ** -0.5 if scaling is None else scaling).add_(attention_mask)
    out = torch.matmul(torch.softmax(scores, dim=-1), value)  # [B, kv_heads, group, D]
    return out.view(b, 1, heads, d), None


def install_decode_attention(model) -> None:
    """Register :func:`decode_attention` and switch ``model`` to it (Llama-style models)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, decode_attention)
    model.set_attn_implementation(ATTENTION)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "may attend" mask to the additive form (0 or the dtype's most negative value)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                      torch.finfo(dtype).min)


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor | None, penalty: float) -> torch.Tensor:
    """The CTRL repetition penalty (Keskar et al. 2019, as in transformers' ``repetition_penalty``) over the tokens
    each row has generated so far (``seen``: ``[B, V]`` bool): positive logits divided by ``penalty``, negative ones
    multiplied. The prompt is not penalized, so an answer may repeat the question's terms."""
    if seen is None or penalty == 1.0:
        return logits
    logits = logits.float()
    hit = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, hit, logits)


def pick_tokens(logits: torch.Tensor, settings: GenSettings, generator: torch.Generator | None,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """Next token per row from ``[B, V]`` logits (repeats penalized): argmax when greedy, else temperature + top-p.

    ``settings`` is the generation's :class:`~medadapt.config.GenSettings` as the caller built it (the CPU engine's
    server: its fields as sent), so a new decoding setting is read here and nowhere between."""
    logits = penalize_repeats(logits, seen, settings.repetition_penalty)
    if settings.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > settings.top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class RowCache:
    """KV cache for continuous batching: ``[rows, H, L, D]`` per layer, right-padded, grown on demand.

    Prefill (:meth:`prefill_rows`): a group of new rows writes slots ``[0, n)`` at their indices and attends only to
    its own prompt. Decode (:meth:`decode_positions`): every live row writes slot ``positions[i]`` and attends to
    ``[0, span)``; the caller's mask hides each row's unwritten tail. Rows leave through :meth:`move`."""

    GROW = 256  # length capacity grows in these steps

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.row_cap = self.len_cap = 0
        self.rows: torch.Tensor | None = None  # prefill: the indices being written
        self.positions: torch.Tensor | None = None  # decode: each live row's next slot
        self.span = 0  # decode: slots attended to

    def reserve(self, rows: int, length: int) -> None:
        """Make room for ``rows`` rows of ``length`` slots (existing entries kept)."""
        rows = max(rows, self.row_cap)
        length = max(length, self.len_cap)
        if rows == self.row_cap and length == self.len_cap:
            return
        if rows > self.row_cap:
            rows = max(rows, self.row_cap + self.row_cap // 2)
        if length > self.len_cap:
            length = -(-length // self.GROW) * self.GROW
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = old.new_zeros(rows, old.shape[1], length, old.shape[3])
                new[:old.shape[0], :, :old.shape[2]] = old
                store[i] = new
        self.row_cap, self.len_cap = rows, length

    def move(self, src: list[int], dst: list[int], length: int) -> None:
        """Copy rows ``src`` into rows ``dst`` (the first ``length`` slots): a leaving row's index is reused by a
        row from the end, so only the rows that move are copied."""
        if not src or not self.keys:
            return
        device = self.keys[0].device
        s, d = torch.tensor(src, device=device), torch.tensor(dst, device=device)
        for store in (self.keys, self.values):
            for t in store:
                t[d, :, :length] = t[s, :, :length]

    def clear(self) -> None:
        """Free the memory (no rows left)."""
        self.keys, self.values = [], []
        self.row_cap = self.len_cap = 0

    def prefill_rows(self, rows: torch.Tensor) -> None:
        self.rows, self.positions = rows, None

    def decode_positions(self, positions: torch.Tensor, span: int) -> None:
        self.rows, self.positions, self.span = None, positions, span

    def _layer(self, idx: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.keys) <= idx:
            shape = (self.row_cap, like.shape[1], self.len_cap, like.shape[3])
            self.keys.append(torch.zeros(shape, dtype=like.dtype, device=like.device))
            self.values.append(torch.zeros(shape, dtype=like.dtype, device=like.device))
        return self.keys[idx], self.values[idx]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self._layer(layer_idx, key_states)
        if self.rows is not None:
            n = key_states.shape[2]
            keys[self.rows, :, :n] = key_states
            values[self.rows, :, :n] = value_states
            return key_states, value_states
        b = key_states.shape[0]
        batch = torch.arange(b, device=key_states.device)
        keys[batch, :, self.positions] = key_states[:, :, 0]
        values[batch, :, self.positions] = value_states[:, :, 0]
        return keys[:b, :, :self.span], values[:b, :, :self.span]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.span


def prefill(model, cache: RowCache, rows: list[int], ids: list[list[int]], route: dict) -> torch.Tensor:
    """Run equal-length prompts ``ids`` into cache rows ``rows``; the last position's logits ``[g, V]``."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    n = len(ids[0])
    cache.prefill_rows(torch.tensor(rows, device=device))
    causal = additive_mask(torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None], dtype)
    out = model(input_ids=torch.tensor(ids, dtype=torch.long, device=device), attention_mask=causal,
                position_ids=torch.arange(n, device=device)[None], cache=cache, use_cache=True, logits_to_keep=1,
                **route)
    return out.logits[:, -1]


def decode_step(model, cache: RowCache, last: list[int], positions: list[int], route: dict) -> torch.Tensor:
    """Feed every live row's last token at its own position; the next-token logits ``[B, V]``."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    pos = torch.tensor(positions, device=device)
    span = max(positions) + 1
    cache.decode_positions(pos, span)
    allowed = torch.arange(span, device=device)[None] <= pos[:, None]
    out = model(input_ids=torch.tensor(last, dtype=torch.long, device=device)[:, None],
                attention_mask=additive_mask(allowed, dtype)[:, None, None], position_ids=pos[:, None], cache=cache,
                use_cache=True, logits_to_keep=1, **route)
    return out.logits[:, -1]
