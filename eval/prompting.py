"""Pure prompt shaping for the evaluation: chat messages or a plain continuation prompt, and option continuations.

Two prompt styles (``EvalConfig.prompt_style``):

- ``chat`` (default): :func:`medadapt.prompts.build_messages` (system text, abstract, snippets, question, options)
  through the model's chat template, then the assistant turn starts with ``Answer:``: the same strict format the
  generative mode asks for, so log-likelihood scoring asks the question the chat model was tuned to answer.
- ``plain``: exactly lm-evaluation-harness's default zero-shot prompt of each benchmark (``LMEVAL_TASKS``; the
  ``doc_to_text`` of its task YAMLs, lm_eval 0.4.13), no template. A RAG variant's snippets come first.

  =============  ==================  ===============================================================================
  benchmark      lm-eval task        prompt
  =============  ==================  ===============================================================================
  medmcqa        ``medmcqa``         ``Question: {q}\nChoices:\nA. {a}\n…D. {d}\nAnswer:``
  medqa          ``medqa_4options``  ``Question: {q}\nA. {a}\n…D. {d}\nAnswer:``
  mmlu_medical   ``mmlu_{subject}``  ``The following are multiple choice questions (with answers) about {subject}.``
                                     ``\n\n{q.strip()}\nA. {a}\n…D. {d}\nAnswer:``
  pubmedqa       ``pubmedqa``        ``Abstract: {contexts}\nQuestion: {q}\nAnswer:`` (no options listed)
  =============  ==================  ===============================================================================

Two continuation targets, both scored in every loglik run (see :mod:`eval.views`): ``letter`` scores
`` A``/`` B``/… (one token each, read from the prompt's last position), ``text`` scores `` <option text>`` (acc_norm =
highest log-probability per character of the option text, as lm-evaluation-harness defines it). In the ``plain``
style the answer target is lm-eval's ``doc_to_choice``: the letters, except PubMedQA, whose prompt lists no options
and whose choices are the words `` yes``/`` no``/`` maybe`` (so its letter view there is lm-eval's ``acc``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from medadapt.data.benchmarks import BenchItem, benchmark
from medadapt.prompts import build_messages

ANSWER_PREFIX = "Answer:"


def item_messages(item: BenchItem, snippets: Sequence | None = None, system_role: bool = True) -> list[dict[str, str]]:
    """``system_role=False``: the instructions in the user turn (``ModelConfig.system_prompt``, DeepSeek-R1)."""
    return build_messages(**item.posed(), snippets=snippets or None, system_role=system_role)


LMEVAL_TASKS = {"medmcqa": "medmcqa", "medqa": "medqa_4options", "mmlu_medical": "mmlu_{subject}",
                "pubmedqa": "pubmedqa"}  # the lm-eval task whose default prompt ``plain`` reproduces
WORD_CHOICES = ("pubmedqa",)  # benchmarks whose lm-eval choices are the option texts, not the letters


def lmeval_task(item: BenchItem) -> str:
    return LMEVAL_TASKS[item.benchmark].format(subject=item.subject)


def _options_block(item: BenchItem) -> str:
    return "".join(f"{k}. {v}\n" for k, v in item.options.items())


def plain_prompt(item: BenchItem, snippets: Sequence | None = None) -> str:
    """lm-eval's default zero-shot prompt of the item's benchmark (see the module table), after any snippets."""
    name = item.benchmark
    if name == "medmcqa":
        text = f"Question: {item.question}\nChoices:\n{_options_block(item)}Answer:"
    elif name == "medqa":
        text = f"Question: {item.question}\n{_options_block(item)}Answer:"
    elif name == "mmlu_medical":
        text = (f"The following are multiple choice questions (with answers) about {item.subject.replace('_', ' ')}."
                f"\n\n{item.question.strip()}\n{_options_block(item)}Answer:")
    elif name == "pubmedqa":
        text = f"{benchmark(name).context_label}: {item.context}\nQuestion: {item.question}\nAnswer:"
    else:
        raise ValueError(f"no plain (lm-eval) prompt for benchmark {name!r}")
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
    if target == "letter" and style == "plain" and item.benchmark in WORD_CHOICES:
        target = "text"
    if target == "letter":
        return [f" {k}" for k in item.options]
    if target == "text":
        return [f" {v}" for v in item.options.values()]
    raise ValueError(f"unknown loglik target {target!r}; use letter or text")
