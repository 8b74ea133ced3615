"""Pure prompt shaping for the evaluation: chat messages or a plain continuation prompt, and option continuations.

Two prompt styles (``EvalConfig.prompt_style``):

- ``chat`` (default): :func:`medadapt.prompts.build_messages` (system text, abstract, snippets, question, options)
  through the model's chat template, then the assistant turn starts with ``Answer:``: the same strict format the
  generative mode asks for, so log-likelihood scoring asks the question the chat model was tuned to answer.
- ``plain``: lm-evaluation-harness style text ``[Abstract: …]\nQuestion: …\nA. …\nAnswer:`` without a template.

The heading of an item's context (``Abstract`` for PubMedQA) is its benchmark definition's ``context_label``.

Two continuation targets, both scored in every loglik run (see :mod:`eval.views`): ``letter`` scores
`` A``/`` B``/… (one token each, read from the prompt's last position), ``text`` scores `` <option text>`` (acc_norm =
highest log-probability per byte, as lm-evaluation-harness defines it).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from medadapt.data.benchmarks import BenchItem, benchmark
from medadapt.prompts import build_messages

ANSWER_PREFIX = "Answer:"


def item_messages(item: BenchItem, snippets: Sequence | None = None, system_role: bool = True) -> list[dict[str, str]]:
    """``system_role=False``: the instructions in the user turn (``ModelConfig.system_prompt``, DeepSeek-R1)."""
    return build_messages(item.question, item.options, snippets=snippets or None, context=item.context or None,
                          context_label=benchmark(item.benchmark).context_label, system_role=system_role)


def plain_prompt(item: BenchItem, snippets: Sequence | None = None) -> str:
    parts = []
    if snippets:
        parts.append("Context:\n" + "\n".join(f"[{i}] {s.title}: {' '.join(s.content.split())}"
                                             for i, s in enumerate(snippets, 1)))
    if item.context:
        parts.append(f"{benchmark(item.benchmark).context_label}: {item.context}")
    parts.append(f"Question: {item.question.strip()}")
    parts.append("\n".join(f"{k}. {v}" for k, v in item.options.items()))
    return "\n".join(parts) + f"\n{ANSWER_PREFIX}"


def loglik_prompt(item: BenchItem, style: str, apply_template: Callable[[list[dict[str, str]]], str],
                  snippets: Sequence | None = None, system_role: bool = True) -> str:
    """The text before the continuation; ``apply_template`` renders messages with the generation prompt."""
    if style == "plain":
        return plain_prompt(item, snippets)
    if style != "chat":
        raise ValueError(f"unknown prompt style {style!r}; use chat or plain")
    return apply_template(item_messages(item, snippets, system_role)) + ANSWER_PREFIX


def continuations(item: BenchItem, target: str) -> list[str]:
    """One continuation per option, in option order."""
    if target == "letter":
        return [f" {k}" for k in item.options]
    if target == "text":
        return [f" {v}" for v in item.options.values()]
    raise ValueError(f"unknown loglik target {target!r}; use letter or text")
