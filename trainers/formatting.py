"""Token-level data preparation: chat-formatted SFT examples with assistant-only labels, CPT packing, collators.

Labels are built here rather than with TRL's ``assistant_only_loss`` (which needs ``{% generation %}`` in the chat
template, and most templates, SmolLM2's and DeepSeek-R1's included, lack it): the prompt is rendered with the model's
own template and ``add_generation_prompt=True``; the completion is ``<think>\\n{cot}\\n</think>\\n\\n{answer}`` plus the
template's end-of-turn text; prompt tokens get label -100.

Prompt shapes (``TrainConfig.prompt``): ``bare`` (the question alone as the user turn, the template's own system
text), ``app`` (:func:`medadapt.prompts.build_messages`, exactly what Compare and the evaluation send: the same
instructions, the options and abstract laid out as they lay them out (a row's ``posed`` arguments), and for the
DeepSeek-R1 family no system message, ``ModelConfig.system_prompt``), ``seed`` (the seed
notebooks' plain ``### Instruction / ### Question / ### Response`` text, no chat template, loss on every token,
truncated at the max length as Unsloth's trainer did: :func:`seed_example`).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

IGNORE = -100
_MARK = "\u2063MEDADAPT_ASSISTANT\u2063"
PROMPTS = ("bare", "app", "seed")
# The seed's SFT text (notebooks/sft_training.ipynb and msft_training.ipynb), character for character.
SEED_TEMPLATE = """
### Instruction:
You are a medical expert with advanced knowledge in clinical reasoning, diagnostics, and treatment planning. 
Please answer the following medical question. 

### Question:
{}

### Response:
<think>
{}
</think>
{}
"""


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used for assistant-only labels."""


def end_of_turn(tokenizer: Any) -> str:
    """Text the chat template puts after an assistant message (``<|im_end|>\\n`` for SmolLM2)."""
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _MARK}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    if _MARK not in text:
        raise TemplateError("the chat template drops the assistant message")
    tail = text.split(_MARK, 1)[1]
    return tail if tail.strip() else (tokenizer.eos_token or "")


def completion_text(cot: str, answer: str, prompt: str = "") -> str:
    """Reasoning in ``<think>`` tags, then the answer; the opening tag is skipped when the prompt already opens it."""
    opened = prompt.rstrip().endswith("<think>")
    return ("" if opened else "<think>\n") + f"{cot.strip()}\n</think>\n\n{answer.strip()}"


def prompt_messages(question: str, prompt: str = "bare", system: str | None = None,
                    system_role: bool = True, posed: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """The chat messages of a training prompt of shape ``prompt`` (``bare`` or ``app``, see the module doc);
    ``posed``: ``build_messages`` arguments (question, options, context) the ``app`` shape uses instead of
    ``question``."""
    if prompt == "app":
        from medadapt.prompts import build_messages

        return build_messages(**(posed or {"question": question}), system=system, system_role=system_role)
    if prompt != "bare":
        raise ValueError(f"prompt must be one of {PROMPTS} (seed rows use seed_example), not {prompt!r}")
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


def sft_example(tokenizer: Any, question: str, cot: str, answer: str, system: str | None = None,
                eot: str | None = None, prompt: str = "bare", system_role: bool = True,
                posed: dict[str, Any] | None = None) -> dict[str, list[int]]:
    """``input_ids``/``attention_mask``/``labels`` for one Q-CoT-A row; labels mask the prompt with -100."""
    msgs = prompt_messages(question, prompt, system, system_role, posed)
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    completion = completion_text(cot, answer, prompt) + (end_of_turn(tokenizer) if eot is None else eot)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = p_ids + c_ids
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(p_ids) + c_ids}


def seed_example(tokenizer: Any, question: str, cot: str, answer: str, max_length: int) -> dict[str, list[int]]:
    """The seed's SFT example: :data:`SEED_TEMPLATE` + EOS tokenized with the tokenizer's special tokens (BOS),
    cut at ``max_length``, labels on every token (TRL's text-field SFT, as the notebooks trained)."""
    text = SEED_TEMPLATE.format(question, cot, answer) + (tokenizer.eos_token or "")
    ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def pack_blocks(token_lists: Iterable[Sequence[int]], eos_id: int, block: int) -> list[list[int]]:
    """Concatenate documents with EOS after each and cut into full ``block``-token blocks (the tail is dropped)."""
    buf: list[int] = []
    out: list[list[int]] = []
    for ids in token_lists:
        buf.extend(ids)
        buf.append(eos_id)
        while len(buf) >= block:
            out.append(buf[:block])
            buf = buf[block:]
    return out


def cpt_examples(tokenizer: Any, texts: Sequence[str], max_length: int, packing: bool,
                 seed: bool = False) -> list[dict[str, list[int]]]:
    """CPT examples: packed ``max_length`` blocks, or one (truncated) example per text with EOS when unpacked;
    ``seed``: the seed's text + EOS tokenized with the special tokens (BOS), cut at ``max_length``, one per text."""
    eos = tokenizer.eos_token_id
    if seed:
        enc = tokenizer([t + (tokenizer.eos_token or "") for t in texts], truncation=True,
                        max_length=max_length)["input_ids"]
        return [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)} for ids in enc]
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if packing:
        blocks = pack_blocks(enc, eos, max_length)
    else:
        blocks = [(ids + [eos])[:max_length] for ids in enc]
    return [{"input_ids": b, "attention_mask": [1] * len(b), "labels": list(b)} for b in blocks]


def next_token_labels(labels: Any) -> Any:
    """(B, T) labels shifted left by one: at each position, the label of the token that follows it (IGNORE last)."""
    import torch

    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)


class PadCollator:
    """Right-pads a batch to its longest row (labels with -100); packed rows of equal length get no padding.

    ``targets_only``: the LM head runs only where a label is trained. The batch also carries ``logits_to_keep`` (a
    boolean mask of the positions whose next token has a label; transformers' ``slice_logits_to_keep`` keeps those
    hidden states before the head) and ``shift_labels`` (those next tokens, in the same order), which the causal-LM
    loss and the Trainer's token count use as they are. Same loss; for SFT, whose prompt tokens carry no label, the
    vocabulary-wide head and its cross-entropy run on the answer tokens only.
    """

    def __init__(self, pad_id: int, targets_only: bool = False) -> None:
        self.pad_id = pad_id
        self.targets_only = targets_only

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        def pad(key: str, value: int) -> Any:
            return torch.tensor([list(r[key]) + [value] * (width - len(r[key])) for r in rows], dtype=torch.long)
        batch = {"input_ids": pad("input_ids", self.pad_id), "attention_mask": pad("attention_mask", 0),
                 "labels": pad("labels", IGNORE)}
        if self.targets_only:
            following = next_token_labels(batch["labels"])
            keep = following != IGNORE
            batch["logits_to_keep"], batch["shift_labels"] = keep, following[keep]
        return batch
