"""Pure prompt shaping for the evaluation: chat messages or a plain continuation prompt, and option continuations.

Two prompt styles (``EvalConfig.prompt_style``):

- ``chat`` (default): :func:`medadapt.prompts.build_messages` (system text, abstract, snippets, question, options)
  through the model's chat template, then the assistant turn starts with ``Answer:``: the same strict format the
  generative mode asks for, so log-likelihood scoring asks the question the chat model was tuned to answer.
- ``plain``: exactly lm-evaluation-harness's default zero-shot prompt of each benchmark, no template: the
  ``prompt`` on its :class:`~medadapt.data.benchmarks.Benchmark` (the ``doc_to_text`` of its lm-eval task YAML,
  lm_eval 0.4.13; PubMedQA's lists no options). A RAG variant's snippets come first.

Two continuation targets, both scored in every loglik run (see :mod:`eval.views`): ``letter`` scores
`` A``/`` B``/… (one token each, read from the prompt's last position), ``text`` scores `` <option text>`` (acc_norm =
highest log-probability per character of the option text, as lm-evaluation-harness defines it). In the ``plain``
style the answer target is lm-eval's ``doc_to_choice``, the benchmark's ``choice``: the letters, or the option texts
where the prompt lists no options (PubMedQA's `` yes``/`` no``/`` maybe``; its letter view there is lm-eval's ``acc``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from medadapt.data.benchmarks import BenchItem, benchmark, posed
from medadapt.prompts import build_messages

ANSWER_PREFIX = "Answer:"


def item_messages(item: BenchItem, snippets: Sequence | None = None, system_role: bool = True) -> list[dict[str, str]]:
    """``system_role=False``: the instructions in the user turn (``ModelConfig.system_prompt``, DeepSeek-R1)."""
    return build_messages(**posed(item), snippets=snippets or None, system_role=system_role)


def plain_prompt(item: BenchItem, snippets: Sequence | None = None) -> str:
    """lm-eval's default zero-shot prompt of the item's benchmark (its definition's ``prompt``), after any
    snippets."""
    text = benchmark(item.benchmark).plain_prompt(item)
    if snippets:
        text = "Context:\n" + "\n".join(f"[{i}] {s.title}: {' '.join(s.content.split())}"
                                         for i, s in enumerate(snippets, 1)) + "\n" + text
    return text


def loglik_prompt(item: BenchItem, style: str, apply_template: Callable[[list[dict[str, str]]], str],
                  snippets: Sequence | None = None, system_role: bool = True) -> str:
    """The text before the continuation; ``apply_template`` renders messages with the generation prompt."""
    if style == "plain":
        return plain_prompt(item, snippets)
    if style != "chat":
        raise ValueError(f"unknown prompt style {style!r}; use chat or plain")
    return apply_template(item_messages(item, snippets, system_role)) + ANSWER_PREFIX


def continuations(item: BenchItem, target: str, style: str = "chat") -> list[str]:
    """One continuation per option, in option order (``plain``: the answer target is lm-eval's choices)."""
    if target == "letter" and style == "plain" and benchmark(item.benchmark).choice == "text":
        target = "text"
    if target == "letter":
        return [f" {k}" for k in item.options]
    if target == "text":
        return [f" {v}" for v in item.options.values()]
    raise ValueError(f"unknown loglik target {target!r}; use letter or text")
