"""Generative chain-of-thought scoring: batched greedy generation through the chat template (left padding).

Prompts come from :func:`eval.prompting.item_messages` (the app's ``build_messages``: think step by step, end
with ``Answer: X``); answers are read by :func:`eval.scoring.extract_answer` from the text after the reasoning.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence


def render(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_batch(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8,
                   max_context: int = 2048, on_batch: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (chat-rendered text), batched longest-first with left padding."""
    import torch

    side, trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"  # pad and cut on the left: keep the prompt's end
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out = [""] * len(prompts)
    device = next(model.parameters()).device
    room = max(16, max_context - max_new_tokens)
    try:
        for b in range(0, len(order), max(1, batch_size)):
            idx = order[b:b + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False,
                            truncation=True, max_length=room)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                out[i] = tokenizer.decode(row, skip_special_tokens=True)
            if on_batch:
                on_batch(min(b + batch_size, len(order)), len(order))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, trunc
    return out
