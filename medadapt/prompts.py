"""Prompt texts (as data) and ``build_messages``: question, options, abstract and retrieved snippets → chat messages.

Pure functions. The model's own chat template turns the messages into text (in the engine); nothing here knows
about tokens except ``truncate_question`` and ``fit_to_budget``, which take a token counter.

``system_role=False`` (``ModelConfig.system_prompt``; the DeepSeek-R1 family, whose model card advises no system
prompt) puts the instructions at the top of the user turn instead of a system message. Training
(``trainers.formatting``, prompt ``app``), the evaluation (``eval.prompting``) and Compare build their prompts here,
so the three see one prompt shape. :func:`fit_to_budget` is the one policy that fits retrieved snippets into a
prompt (Compare, loglik and cot evaluation).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

SYSTEM = (
    "You are a careful medical expert. Think through the question step by step, then give a concise final answer."
)
SYSTEM_MCQ = SYSTEM + " End with a line of the form 'Answer: X' where X is the letter of the single best option."
SYSTEM_RAG = (
    " Use the numbered reference snippets when they are relevant and cite the ones you use by number, like [1] or"
    " [2]. If the snippets do not help, answer from your own knowledge and say so."
)
QUESTION_TEMPLATE = "{context}Question: {question}{options}"
CONTEXT_TEMPLATE = "{label}: {context}\n\n"
SNIPPETS_HEADER = "Reference snippets:\n"
SNIPPET_TEMPLATE = "[{n}] {title}: {content}\n"
TRUNCATION_MARK = " […]"


class SnippetLike(Protocol):
    title: str
    content: str


# ---------------------------------------------------------------- the snippet budget (one policy everywhere)

def snippet_text(s: SnippetLike) -> str:
    """The text of a snippet that counts against the budget (title line + content)."""
    return f"{s.title}\n{s.content}"


def fit_to_budget(snippets: Sequence[SnippetLike], count_tokens: Callable[[str], int], budget_tokens: int,
                  overhead_tokens: int = 0, min_tokens: int = 24) -> list:
    """Snippets in rank order whose ``snippet_text`` tokens (+ ``overhead_tokens`` each) total at most the budget.

    The first snippet that does not fit whole is cut at a word boundary (ending in "…") when at least
    ``min_tokens`` remain, else dropped; everything after it is dropped. Pure: no I/O, inputs untouched
    (snippets are dataclasses; a cut one is a copy).
    """
    out: list = []
    left = budget_tokens
    for s in snippets:
        cost = count_tokens(snippet_text(s)) + overhead_tokens
        if cost <= left:
            out.append(s)
            left -= cost
            continue
        if left - overhead_tokens >= min_tokens:
            cut = _truncate(s, lambda t: count_tokens(t) + overhead_tokens, left)
            if cut is not None:
                out.append(cut)
        break
    return out


def _truncate(s: SnippetLike, cost: Callable[[str], int], budget: int):
    """The longest word prefix of ``s.content`` (+ " …") whose cost fits ``budget``; None if not even one word."""
    words = s.content.split(" ")

    def cut(n: int):
        return replace(s, content=" ".join(words[:n]).rstrip() + " …")

    lo, hi = 0, len(words)  # invariant: cut(lo) fits or lo == 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(snippet_text(cut(mid))) <= budget:
            lo = mid
        else:
            hi = mid - 1
    while lo > 0 and cost(snippet_text(cut(lo))) > budget:  # tokenizers are not perfectly monotone
        lo -= 1
    return cut(lo) if lo > 0 else None


def format_options(options: dict[str, str] | None) -> str:
    if not options:
        return ""
    return "\nOptions:\n" + "\n".join(f"{k}. {v}" for k, v in options.items())


def format_snippets(snippets: Sequence[SnippetLike]) -> str:
    """Snippets numbered ``[1]…[k]`` with their titles, in rank order."""
    return SNIPPETS_HEADER + "".join(
        SNIPPET_TEMPLATE.format(n=i, title=s.title, content=" ".join(s.content.split())) for i, s in enumerate(snippets, 1)
    )


def build_messages(
    question: str,
    options: dict[str, str] | None = None,
    snippets: Sequence[SnippetLike] | None = None,
    context: str | None = None,
    system: str | None = None,
    context_label: str = "Context",
    system_role: bool = True,
) -> list[dict[str, str]]:
    """Chat messages for one question; ``snippets`` switches on the cited-RAG instructions; ``context`` (e.g. a
    PubMedQA abstract) goes before the question under ``context_label``; ``system_role=False``: one user message
    that opens with the instructions (no system message)."""
    sys_text = system or (SYSTEM_MCQ if options else SYSTEM)
    user = QUESTION_TEMPLATE.format(
        context=CONTEXT_TEMPLATE.format(label=context_label, context=context) if context else "",
        question=question.strip(),
        options=format_options(options),
    )
    if snippets:
        sys_text += SYSTEM_RAG
        user = format_snippets(snippets) + "\n" + user
    if not system_role:
        return [{"role": "user", "content": f"{sys_text}\n\n{user}"}]
    return [{"role": "system", "content": sys_text}, {"role": "user", "content": user}]


def truncate_question(question: str, count_tokens: Callable[[str], int], max_tokens: int) -> tuple[str, bool]:
    """Cut ``question`` to at most ``max_tokens`` tokens (keeping its start); returns (text, was_truncated)."""
    if max_tokens <= 0:
        return "", bool(question)
    if count_tokens(question) <= max_tokens:
        return question, False
    lo, hi = 0, len(question)
    while lo < hi:  # longest character prefix that fits
        mid = (lo + hi + 1) // 2
        if count_tokens(question[:mid] + TRUNCATION_MARK) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return question[:lo] + TRUNCATION_MARK, True


DEFUSE_MARK = "\u200b"  # zero-width space: splits a special-token string so the tokenizer cannot match it
# the control-token shapes of the common chat families, defused whatever tokenizer is at hand (a remote server's may
# have more special tokens than the local copy): ChatML/Qwen/Llama-3 "<|...|>", DeepSeek "<｜...｜>", "<s>", "</s>"
CONTROL_SHAPES = re.compile(r"<\|[^|<>\s]{1,40}\|>|<｜[^｜<>]{1,40}｜>|</?s>")


def defuse_special_tokens(text: str, specials: Sequence[str]) -> str:
    """``text`` with every occurrence of a special-token string (``<|im_start|>``, ``</s>``, ..., and any string of
    a chat family's control-token shape, ``CONTROL_SHAPES``) broken by a zero-width space after its first character,
    so text from a user, a snippet or a dataset is always tokenized as text and can never open or close a chat turn
    (the model still reads the same visible characters). Every engine sends chat messages through here
    (:func:`defuse_messages`): the in-process one in :func:`render_chat`, the remote one in its request body."""
    for special in sorted((s for s in specials if len(s) > 1), key=len, reverse=True):
        if special in text:
            text = text.replace(special, special[0] + DEFUSE_MARK + special[1:])
    return CONTROL_SHAPES.sub(lambda m: m.group(0)[0] + DEFUSE_MARK + m.group(0)[1:], text)


def defuse_messages(messages: Sequence[dict[str, str]], specials: Sequence[str]) -> list[dict[str, str]]:
    """Every message's content defused (see :func:`defuse_special_tokens`); roles are ours, never user input."""
    return [{**m, "content": defuse_special_tokens(m.get("content", ""), specials)} for m in messages]



def special_token_strings(tokenizer) -> list[str]:
    """Every special-token string of a HF tokenizer: its named ones and every added token, whatever its ``special``
    flag (an added token is matched whole in any text: R1's ``<think>``/``</think>`` are added but not special, and
    a tokenizer.json may leave a turn marker such as ``<｜User｜>`` unflagged)."""
    added = [t.content for t in tokenizer.added_tokens_decoder.values()]
    return sorted(set(tokenizer.all_special_tokens) | set(added))


def render_chat(tokenizer, messages: Sequence[dict[str, str]], reasoning_template: bool = False,
                specials: Sequence[str] | None = None) -> str:
    """``messages`` through the tokenizer's chat template with the generation prompt, their content defused (no
    special tokens from text); ``reasoning_template`` (R1 models) makes the prompt end inside ``<think>``."""
    specials = special_token_strings(tokenizer) if specials is None else specials
    text = tokenizer.apply_chat_template(defuse_messages(messages, specials), tokenize=False,
                                         add_generation_prompt=True)
    if reasoning_template and not text.rstrip().endswith("<think>"):
        text += "<think>\n"
    return text
