"""The original study's evaluation protocol (``python -m eval run --protocol study``), ported from its notebooks.

The study (github MilyaushaShamsutdinova/MedAdapt-LLM, ``notebooks/evaluation_{base,sft,msft,rag}_model.ipynb``)
scored each model with vLLM (fp16, ``temperature=0.01, top_p=1.0, top_k=-1, max_tokens=4096``) on raw text prompts
(no chat template; vLLM adds the tokenizer's BOS) and read the answer from the whole output, reasoning included.
Ported here character for character, so its table can be re-run as it ran:

- items (:func:`study_items`): each dataset through the same ``datasets`` calls (:func:`medadapt.data.load_hub`, then
  ``Dataset.shuffle(seed=4242).select(range(n))``): MedMCQA ``openlifescienceai/medmcqa`` validation, MedQA
  ``GBaker/MedQA-USMLE-4-options-hf`` validation, PubMedQA ``qiaojin/PubMedQA`` ``pqa_labeled`` train (all 1,000
  items are the pool, answered as yes/no/maybe words), MMLU ``cais/mmlu`` test as seven subject entries with
  ``professional_medicine`` listed twice, 50 per entry, concatenated, then shuffled again and cut to 200 (an item of
  the second professional_medicine entry is kept as its own row: id suffix ``#2``);
- prompts (:func:`mcq_prompt`, :func:`pubmedqa_prompt`, RAG: :func:`rag_prompt` around them, the whole prompt as the
  retrieval query, top-k 2); parsers (:func:`extract_choice_mcq`: the first "answer/choice/option is X" anywhere,
  else the first standalone letter; :func:`extract_yes_no_maybe`);
- decoding (:data:`DECODING`; ``--temperature``/``--max_new_tokens`` override it, and the file records what ran).

A study run records two views of the same generations: ``study`` (its parser) and ``study_project_parser`` (the
project's answer filter, :func:`medadapt.reasoning.extract_answer`, on the same text), so the parser's effect is
isolated; ``python -m eval run --mode cot --ids STUDY.json`` scores the project's protocol on the same items and
``python -m eval merge`` puts the three side by side. Differences that remain: the retriever is the project's index
(LanceDB, its embedder) instead of ChromaDB with ``multi-qa-MiniLM-L6-cos-v1``; the engine is the project's (or vLLM
through ``--engine openai``) at the configured dtype.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medadapt.data.benchmark_items import LETTERS, BenchItem, medmcqa_item, mmlu_item, pubmedqa_item
from medadapt.data.benchmarks import DEFINITIONS

PROTOCOL = "study"
STUDY_REPO = "github.com/MilyaushaShamsutdinova/MedAdapt-LLM"
SEED = 4242  # every notebook's SEED
NUM_SAMPLES = 200
MMLU_PER_ENTRY = 50  # NUM_SAMPLES_SUBSET
MMLU_ENTRIES = ("anatomy", "clinical_knowledge", "professional_medicine", "college_biology", "college_medicine",
                "medical_genetics", "professional_medicine")  # MMLU_MEDICAL_SUBSETS, professional_medicine twice
SOURCES: dict[str, tuple[str, str | None, str]] = {  # (Hub repo, config, split); MMLU's config is each entry
    "medmcqa": ("openlifescienceai/medmcqa", None, "validation"),
    "medqa": ("GBaker/MedQA-USMLE-4-options-hf", None, "validation"),
    "mmlu_medical": ("cais/mmlu", None, "test"),
    "pubmedqa": ("qiaojin/PubMedQA", "pqa_labeled", "train"),
}
TASKS = {
    "medmcqa": "MedMCQA validation (openlifescienceai/medmcqa), the study's sample",
    "medqa": "MedQA-USMLE validation (GBaker/MedQA-USMLE-4-options-hf), the study's sample",
    "mmlu_medical": "MMLU test, 7 subject entries (professional_medicine twice) x 50, then 200: the study's sample",
    "pubmedqa": "PubMedQA pqa_labeled, all 1,000 items as the pool, yes/no/maybe words: the study's sample",
}
DECODING = {"temperature": 0.01, "top_p": 1.0, "max_new_tokens": 4096}  # SamplingParams(top_k=-1): no top-k
RAG_TOP_K = 2  # rag.get_response(batch_prompts, top_k=2)
VIEWS = ("study", "study_project_parser")
WORDS = ("yes", "no", "maybe")


class StudyDataError(ValueError):
    """The study's sampling cannot be applied to a dataset (e.g. fewer rows than it selects)."""


# ---------------------------------------------------------------- prompts (the notebooks' f-strings, verbatim)

def mcq_prompt(question: str, options: dict[str, str]) -> str:
    """``format_prompt_medmcqa`` / ``format_prompt_medqa`` / ``format_prompt_mmlu`` (one text for all three)."""
    prompt = f"""
You are an expert in solving multiple-choice questions accurately and explaining your reasoning clearly.
Given a question and a list of answer choices (A, B, C, D), your task is to:
1. Reason shortly about the question and answer choices to find evidances to support your answer.
2. Identify the correct answer. Please choose the single best answer from the options provided.
3. Output the final answer in the format: Answer: [Option Letter]

Question: {question}
Options:
A. {options['A']}
B. {options['B']}
C. {options['C']}
D. {options['D']}

Reasoning:
    """
    return prompt


def pubmedqa_prompt(question: str, contexts: Sequence[str]) -> str:
    """``format_prompt_pubmedqa``: the abstract's passages joined by blank lines."""
    full_context = "\n\n".join(contexts)
    prompt = f"""
You are an expert in analyzing scientific texts and answering questions based on provided context and explaining your reasoning clearly.
Your task is to determine the answer to the question ('yes', 'no', or 'maybe') based only on the information given in the context. Follow these steps:
1. Analyze the provided context in relation to the question. Summarize the key evidence (or lack thereof) relevant to answering the question. This is your reasoning.
2. Based on your reasoning from the context, determine if the answer to the question is 'yes', 'no', or 'maybe'.
3. Output your reasoning first. After the reasoning, start a new line and provide the final decision in the specific format: Answer: [yes/no/maybe]

Context:
{full_context}

Question: {question}

Reasoning:
    """  # noqa: E501 - the notebook's lines
    return prompt


def rag_prompt(query: str, docs: Sequence[str]) -> str:
    """``RAG.get_response``: the retrieved documents around the benchmark prompt (the whole prompt is the query)."""
    if docs:
        context = "\n\n".join(docs)
        return f"""Based on the following retrieved documents, answer the user's query. Filter out irrelevant information and synthesize the answer.

Retrieved documents:
---
{context}
---

User query: {query}

Answer:"""  # noqa: E501
    return f"""Answer the following user query based on your internal knowledge.

User query: {query}

Answer:"""


# ---------------------------------------------------------------- parsers (the notebooks' regexes, verbatim)

def extract_choice_mcq(generated_text: str) -> tuple[str | None, str]:
    """``extract_choice_mcq``: (letter or None, which rule): ``answer_is`` (the first "answer/choice/option is X",
    any case: "the answer is a ..." reads A), ``first_letter`` (the first standalone capital A-D), or ``none``."""
    text = generated_text.strip()
    match = re.search(r'(?:answer|choice|option) is\s*:?\s*([A-D])', text, re.IGNORECASE)
    if match:
        return match.group(1).upper(), "answer_is"
    match = re.search(r'\b([A-D])\b', text)
    if match:
        return match.group(1).upper(), "first_letter"
    return None, "none"


def extract_yes_no_maybe(generated_text: str) -> tuple[str | None, str]:
    """``extract_yes_no_maybe``: (word or None, which rule): ``answer_word`` ("answer"/"decision" then the word),
    ``first_word`` (the first yes/no/maybe anywhere), or ``none``."""
    text = generated_text.strip().lower()
    match = re.search(r'(?:answer|decision)\s*[:\-]?\s*(yes|no|maybe)\b', text)
    if match:
        return match.group(1), "answer_word"
    match = re.search(r'\b(yes|no|maybe)\b', text)
    if match:
        return match.group(1), "first_word"
    return None, "none"


# ---------------------------------------------------------------- items

@dataclass(frozen=True)
class StudyItem:
    """One sampled row: the project's item (results, views), the study's prompt and its ground truth."""

    item: BenchItem
    prompt: str
    truth: str  # a letter (MCQ) or a word (PubMedQA), as the notebook's get_ground_truth_* returned it
    row: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _load(repo: str, config: str | None, split: str):
    from medadapt.data import load_hub

    ds = load_hub(repo, config, split)
    return ds.add_column("_row", list(range(len(ds))))  # the row's index in its split (shuffle is not affected)


def _take(ds, n: int, seed: int, what: str):
    """The notebooks' ``ds.shuffle(seed=SEED).select(range(n))`` (``n <= 0``: every row, shuffled)."""
    if n > len(ds):
        raise StudyDataError(f"{what}: the study samples {n} rows but the dataset has {len(ds)}")
    return ds.shuffle(seed=seed).select(range(n if n > 0 else len(ds)))


def _medmcqa(n: int, seed: int) -> list[StudyItem]:
    out = []
    for row in _take(_load(*SOURCES["medmcqa"]), n, seed, "MedMCQA"):
        if row.get("cop") not in (0, 1, 2, 3):  # get_ground_truth_medmcqa: the row is excluded
            continue
        it = medmcqa_item(row, one_based=False)
        out.append(StudyItem(it, mcq_prompt(row["question"], {L: row[f"op{L.lower()}"] for L in LETTERS}),
                             LETTERS[row["cop"]], row))
    return out


def _medqa(n: int, seed: int) -> list[StudyItem]:
    out = []
    split = SOURCES["medqa"][2]
    for row in _take(_load(*SOURCES["medqa"]), n, seed, "MedQA"):
        if row.get("label") not in (0, 1, 2, 3):
            continue
        options = {L: row[f"ending{i}"] for i, L in enumerate(LETTERS)}
        it = BenchItem("medqa", f"medqa-hf-{split}-{row['_row']}", row["sent1"],
                       {k: str(v) for k, v in options.items()}, LETTERS[row["label"]])
        out.append(StudyItem(it, mcq_prompt(row["sent1"], options), LETTERS[row["label"]], row))
    return out


def _mmlu(n: int, per_entry: int, seed: int) -> list[StudyItem]:
    from datasets import concatenate_datasets

    repo, _, split = SOURCES["mmlu_medical"]
    parts = []
    for k, subject in enumerate(MMLU_ENTRIES):
        ds = _load(repo, subject, split)
        ds = ds.add_column("_entry", [k] * len(ds))
        parts.append(_take(ds, per_entry, seed, f"MMLU {subject}"))
    pool = concatenate_datasets(parts)
    out = []
    for row in _take(pool, n, seed, "MMLU (the 7 entries)"):
        if row.get("answer") not in (0, 1, 2, 3):
            continue
        subject = MMLU_ENTRIES[row["_entry"]]
        listing = MMLU_ENTRIES[:row["_entry"] + 1].count(subject)  # 2 for the second professional_medicine entry
        it = mmlu_item(subject, row["_row"], row["question"], row["choices"], LETTERS[row["answer"]])
        if listing > 1:
            it = BenchItem(it.benchmark, f"{it.id}#{listing}", it.question, it.options, it.answer, it.subject)
        options = {L: row["choices"][i] for i, L in enumerate(LETTERS)}
        out.append(StudyItem(it, mcq_prompt(row["question"], options), LETTERS[row["answer"]], row))
    return out


def _pubmedqa(n: int, seed: int) -> list[StudyItem]:
    out = []
    for row in _take(_load(*SOURCES["pubmedqa"]), n, seed, "PubMedQA"):
        ctx = row.get("context")
        if not isinstance(ctx, dict) or "contexts" not in ctx or row.get("final_decision") not in WORDS:
            continue
        it = pubmedqa_item(row["pubid"], row["question"], ctx["contexts"], row["final_decision"])
        out.append(StudyItem(it, pubmedqa_prompt(row["question"], ctx["contexts"]), row["final_decision"], row))
    return out


def study_items(benchmarks: Sequence[str], n: int = NUM_SAMPLES, seed: int = SEED,
                mmlu_per_entry: int = MMLU_PER_ENTRY) -> dict[str, list[StudyItem]]:
    """The study's samples of ``benchmarks``, in its order (see the module doc)."""
    loaders = {"medmcqa": lambda: _medmcqa(n, seed), "medqa": lambda: _medqa(n, seed),
               "mmlu_medical": lambda: _mmlu(n, mmlu_per_entry, seed), "pubmedqa": lambda: _pubmedqa(n, seed)}
    unknown = [b for b in benchmarks if b not in loaders]
    if unknown:
        raise StudyDataError(f"the study evaluated {', '.join(loaders)}; not {', '.join(unknown)}")
    return {b: loaders[b]() for b in benchmarks}


# ---------------------------------------------------------------- the protocol as the evaluation runs it

class StudyProtocol:
    """How :func:`eval.evaluate.evaluate` poses and reads the study's items (``protocol`` there)."""

    name = PROTOCOL
    views = VIEWS
    rag_k = RAG_TOP_K

    def __init__(self, items: dict[str, list[StudyItem]], seed: int, n: int, mmlu_per_entry: int) -> None:
        self.by_id = {(b, s.item.id): s for b, rows in items.items() for s in rows}
        self.settings = {"seed": seed, "n": n, "mmlu_per_entry": mmlu_per_entry, "mmlu_entries": list(MMLU_ENTRIES),
                         "sources": {b: list(SOURCES[b]) for b in items}, "rag_top_k": RAG_TOP_K,
                         "prompt": "raw text, no chat template (the notebooks' f-strings; BOS from the tokenizer)",
                         "parser": "the notebooks' extract_choice_mcq / extract_yes_no_maybe on the whole output",
                         "reference": STUDY_REPO}
        self.tasks = {b: TASKS[b] for b in items}

    def samples(self) -> dict[str, list[BenchItem]]:
        out: dict[str, list[BenchItem]] = {}
        for (b, _), s in self.by_id.items():
            out.setdefault(b, []).append(s.item)
        return out

    def query(self, benchmark: str, item: BenchItem) -> str:
        """The retrieval query: the whole benchmark prompt, as the study's RAG sent it."""
        return self.by_id[(benchmark, item.id)].prompt

    def prompt(self, benchmark: str, item: BenchItem, docs: Sequence[str] | None) -> str:
        base = self.by_id[(benchmark, item.id)].prompt
        return base if docs is None else rag_prompt(base, docs)

    def read(self, benchmark: str, text: str, item: BenchItem, opens_think: bool) -> dict[str, dict]:
        """Both views of one generated ``text``: the study's parser and the project's answer filter."""
        study = self.by_id[(benchmark, item.id)]
        if benchmark == "pubmedqa":
            word, how = extract_yes_no_maybe(text)
            letter = {v: k for k, v in DEFINITIONS["pubmedqa"].choices.items()}.get(word) if word else None
            correct = word == study.truth
        else:
            letter, how = extract_choice_mcq(text)
            correct = letter == study.truth
        project, project_how = DEFINITIONS[benchmark].read_answer(text, item, opens_think)
        return {"study": {"pred": letter, "correct": bool(correct), "invalid": letter is None, "filter": how},
                "study_project_parser": {"pred": project, "correct": project == item.answer,
                                         "invalid": project is None, "filter": project_how}}


def protocol_from_results(results: dict) -> StudyProtocol:
    """The study protocol of a study run's results file, its items re-sampled from the recorded settings (for
    ``--ids``: the project's protocol on the same items); raises when the sample no longer gives the file's ids."""
    st = (results.get("config") or {}).get("study") or {}
    benchmarks = list(results.get("item_ids") or {})
    items = study_items(benchmarks, int(st.get("n", NUM_SAMPLES)), int(st.get("seed", SEED)),
                        int(st.get("mmlu_per_entry", MMLU_PER_ENTRY)))
    for b in benchmarks:
        got = [s.item.id for s in items[b]]
        if got != list(results["item_ids"][b]):
            raise StudyDataError(f"{b}: the study's sample with the file's settings is not the file's items")
    return StudyProtocol(items, int(st.get("seed", SEED)), int(st.get("n", NUM_SAMPLES)),
                         int(st.get("mmlu_per_entry", MMLU_PER_ENTRY)))
