"""Question → chain of thought → answer rows for SFT, and the check that they never overlap the evaluated samples.

Reference profile: ``FreedomIntelligence/medical-o1-reasoning-SFT`` (``en``) from the Hub. Offline profile: the 10
real rows in ``<data_dir>/medical_o1_sft/``, plus rows derived from data-dir sets that the eval does not use:
MedMCQA dev rows with an explanation (``exp`` becomes the reasoning) that are not among the evaluated items, and
PubMedQA's 500 non-test items (abstract + question → long answer as reasoning → yes/no/maybe). Without a data dir
(``AppConfig.hub_data``) the same three sources come from their Hub datasets (``medical_o1``: the whole Hub set).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from medadapt.config import AppConfig
from medadapt.data import data_file, load_hub, read_json, read_jsonl
from medadapt.data.benchmark_items import medmcqa_item, pubmedqa_item
from medadapt.data.benchmarks import DEFINITIONS, evaluated_items, hub_rows, posed, pubmedqa_test_ids

HUB_DATASET = "FreedomIntelligence/medical-o1-reasoning-SFT"


class OverlapError(ValueError):
    """A training row matches an evaluated benchmark item."""


@dataclass(frozen=True)
class SftRow:
    id: str  # "<source>:<id in the source>"
    source: str  # medical_o1 | medmcqa | pubmedqa
    question: str
    cot: str
    answer: str
    # how Compare and the evaluation pose the same question: ``medadapt.prompts.build_messages`` keyword arguments
    # (question alone, options, abstract); the SFT prompt shape ``app`` trains on it. Empty: ``question`` as is.
    posed: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Overlap:
    row_id: str
    item_id: str
    benchmark: str
    by: str  # "id" | "text"


def normalize_question(text: str) -> str:
    """Lower-case, alphanumerics only, single spaces: the key two questions are compared by."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def source_id(row_id: str) -> str:
    return row_id.split(":", 1)[-1]


def check_disjoint(rows: Iterable[SftRow], eval_items: dict[str, Sequence[Any]] | Sequence[Any]) -> list[Overlap]:
    """Every training row that matches an evaluated item by source id or by normalized question text.

    ``eval_items`` is ``benchmarks.evaluated_items(cfg)`` (benchmark → items with ``id``, ``question``) or a flat list.
    A row's question text matches when the item's normalized question occurs inside it (derived rows prefix the
    question with context or append options).
    """
    items = [i for group in eval_items.values() for i in group] if isinstance(eval_items, dict) else list(eval_items)
    by_id = {str(i.id): i for i in items}
    texts = {normalize_question(i.question): i for i in items if normalize_question(i.question)}
    found = []
    for row in rows:
        item = by_id.get(source_id(row.id))
        if item is not None:
            found.append(Overlap(row.id, str(item.id), getattr(item, "benchmark", ""), "id"))
            continue
        q = normalize_question(row.question)
        item = texts.get(q) or next((it for t, it in texts.items() if len(t) >= 40 and t in q), None)
        if item is not None:
            found.append(Overlap(row.id, str(item.id), getattr(item, "benchmark", ""), "text"))
    return found


# ---------------------------------------------------------------- row builders (pure)

# "Ans-a.", "Answer- A.", "Ans: C:", "Ans. is 'd' i.e., ": the key that half the MedMCQA explanations open with
ANSWER_LEAD = re.compile(r"""^\W*(?:ans(?:wer)?|correct\s+(?:answer|option))\b(?:\s*(?:is|:|-|\.|=|–))*\s*"""
                         rf"""(?:option\s*)?[('"‘’]?\s*[{DEFINITIONS['medmcqa'].letters}]\s*[)'"‘’]?(?![a-z0-9])\s*"""
                         r"""(?:[.,:;)\-–]\s*)*(?:i\.?\s*e\.?\s*[,:.\-–]*\s*)?""", re.IGNORECASE)


def reasoning_of(exp: str, key_text: str) -> str:
    """A MedMCQA explanation as reasoning: without the answer key it opens with (and the key's option text right
    after it), so the key is stated once, after ``</think>``, as the R1 convention and the answer parser expect;
    "" when the explanation is nothing but the key."""
    m = ANSWER_LEAD.match(exp)
    if not m:
        return exp
    rest = exp[m.end():]
    if key_text.strip() and rest.lower().startswith(key_text.strip().lower()):
        rest = rest[len(key_text.strip()):].lstrip(" .,:;-–")
    return rest.strip()


# "(Ref Harrison 19/e p2032, 18/e p2551)", "[Ref: Park 24/e p87]", a "Ref: …" or "Reference - …" line: a textbook
# citation (a quarter of the explanations carry one); CITATION_LEFT: one the two patterns cannot cut out cleanly
_REF = r"ref(?:erence)?s?\b"
CITATION = re.compile(r"[(\[]\s*" + _REF + r"[^()\[\]]*[)\]]|^[ \t*\-]*" + _REF + r"[^\n]*$",
                      re.IGNORECASE | re.MULTILINE)
CITATION_LEFT = re.compile(r"\bRefs?\b|\bREF\b|\bReferences?\s*[-:]|https?:|www\.")


def without_citations(text: str) -> str:
    """Reasoning without its textbook citations (book, edition, page lists): a small model cannot recall them, and
    trained on them it opens its reasoning with an invented "(Ref: http://www.…" that it then repeats to the token
    limit; "" when a citation is left that the patterns cannot cut out (the row is then dropped)."""
    text = re.sub(r"[ \t]{2,}", " ", CITATION.sub(" ", text)).strip().lstrip(".,;:)- ").strip()
    return "" if CITATION_LEFT.search(text) else text


def medmcqa_row(rec: dict[str, Any]) -> SftRow | None:
    """A MedMCQA record with an explanation as a Q-CoT-A row (None without one beyond its answer key and
    citations, or with a citation that cannot be cut out)."""
    exp = (rec.get("exp") or "").strip()
    if not exp or rec.get("cop") not in (1, 2, 3, 4):
        return None
    item = medmcqa_item(rec, one_based=True)
    exp = without_citations(reasoning_of(exp, item.answer_text))
    if not exp:
        return None
    question = rec["question"].strip() + "\n\n" + "\n".join(f"{L}. {o}" for L, o in item.options.items())
    return SftRow(f"medmcqa:{rec['id']}", "medmcqa", question, exp, f"The answer is {item.answer}. {item.answer_text}",
                  posed(item))


# A MedMCQA question that names or needs its options ("Which of the following…", "All except…", "True about…"):
# posed without them it cannot be answered, so it is never made an open row.
OPTION_BOUND = re.compile(r"\b(following|except|all of the above|none of the above|true|false|not|incorrect|correct|"
                          r"which one|all are|is/are|are all|least|match|statements?|options?|choose|select)\b",
                          re.IGNORECASE)
MIN_OPEN_ANSWER_CHARS = 3  # an option text shorter than this ("A", "2") says nothing as an answer in prose


def stands_alone(question: str) -> bool:
    """Whether an option question reads as an open question once its options are gone."""
    return bool(question.strip()) and not OPTION_BOUND.search(question)


def prose_answer(text: str) -> str:
    """An option text as the answer of an open question: ``The answer is a fibroadenoma.`` (an opening article
    lower-cased, so the answer line never reads like an option letter)."""
    text = text.strip().rstrip(".")
    if re.match(r"(A|An)\s", text):
        text = text[0].lower() + text[1:]
    return f"The answer is {text}."


def medmcqa_open_row(rec: dict[str, Any]) -> SftRow | None:
    """A MedMCQA record with an explanation posed as an open question: no options, the reasoning as in
    :func:`medmcqa_row`, the right option's text as the answer (None when the question needs its options, or the
    record makes no lettered row)."""
    lettered = medmcqa_row(rec)
    answer = str(rec.get(f"op{'abcd'[int(rec['cop']) - 1]}") or "") if lettered else ""
    if lettered is None or not stands_alone(rec["question"]) or len(answer.strip()) < MIN_OPEN_ANSWER_CHARS:
        return None
    question = rec["question"].strip()
    return SftRow(f"medmcqa_open:{rec['id']}", "medmcqa_open", question, lettered.cot, prose_answer(answer),
                  {"question": question})


PUBMEDQA_OPEN_REASONING_WORDS = 40  # the results sentences kept as an open row's reasoning


def pubmedqa_open_row(pmid: str, rec: dict[str, Any]) -> SftRow:
    """A PubMedQA item posed as an open question (the question alone: no abstract, no yes/no/maybe options): the
    abstract's results, cut at a sentence end within :data:`PUBMEDQA_OPEN_REASONING_WORDS` words, as reasoning;
    the decision and the authors' long answer (the abstract's conclusion) as a prose answer."""
    labels = rec.get("LABELS") or []
    results = [c for c, lab in zip(rec["CONTEXTS"], labels) if "RESULT" in str(lab).upper()] or rec["CONTEXTS"][-1:]
    words, kept = " ".join(results).split(), []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(words)):
        if kept and len(" ".join(kept + [sentence]).split()) > PUBMEDQA_OPEN_REASONING_WORDS:
            break
        kept.append(sentence)
    reasoning = " ".join(kept)
    if len(reasoning.split()) > PUBMEDQA_OPEN_REASONING_WORDS:  # one long first sentence: cut at a word
        reasoning = " ".join(reasoning.split()[:PUBMEDQA_OPEN_REASONING_WORDS]) + " …"
    decision = str(rec["final_decision"]).capitalize()
    question = rec["QUESTION"].strip()
    return SftRow(f"pubmedqa_open:{pmid}", "pubmedqa_open", question, reasoning,
                  f"{decision}. {rec['LONG_ANSWER'].strip()}", {"question": question})


def pubmedqa_row(pmid: str, rec: dict[str, Any]) -> SftRow:
    item = pubmedqa_item(pmid, rec["QUESTION"], rec["CONTEXTS"], rec["final_decision"])
    question = f"Context: {item.context}\n\nQuestion: {rec['QUESTION']}\nAnswer with yes, no or maybe."
    return SftRow(f"pubmedqa:{pmid}", "pubmedqa", question, rec["LONG_ANSWER"].strip(),
                  f"The answer is {rec['final_decision']}.", posed(item))


def o1_row(n: int, rec: dict[str, Any]) -> SftRow:
    return SftRow(f"medical_o1:{n}", "medical_o1", rec["Question"], rec["Complex_CoT"], rec["Response"])


# ---------------------------------------------------------------- loaders

# the data-dir sources (``local:<name>``): medical-o1's rows, MedMCQA and PubMedQA posed with their options, and the
# same two posed as open questions (no options: the answer in prose)
LOCAL_SOURCES = ("medical_o1", "medmcqa", "pubmedqa", "medmcqa_open", "pubmedqa_open")


def load_local_rows(cfg: AppConfig, sources: Sequence[str] = ("medical_o1", "medmcqa", "pubmedqa")) -> list[SftRow]:
    """Offline rows from the data dir (their Hub twins when there is none), before excluding evaluated items."""
    if cfg.hub_data:
        return hub_twin_rows(cfg, sources)
    rows: list[SftRow] = []
    if "medical_o1" in sources:
        recs = read_json(data_file(cfg, "medical_o1_sft", "medical_o1_sft_en_first10.json"))
        rows += [o1_row(n, r) for n, r in enumerate(recs)]
    for name, build in (("medmcqa", medmcqa_row), ("medmcqa_open", medmcqa_open_row)):
        if name in sources:
            rows += [r for r in map(build, read_jsonl(data_file(cfg, "medmcqa", "dev.json"))) if r is not None]
    for name, build in (("pubmedqa", pubmedqa_row), ("pubmedqa_open", pubmedqa_open_row)):
        if name in sources:
            pqal = read_json(data_file(cfg, "pubmedqa", "ori_pqal.json"))
            test = set(pubmedqa_test_ids(cfg))
            rows += [build(pmid, rec) for pmid, rec in pqal.items() if pmid not in test]
    return rows


def hub_twin_rows(cfg: AppConfig, sources: Sequence[str]) -> list[SftRow]:
    """``load_local_rows`` from the Hub datasets the data-dir files were taken from."""
    rows: list[SftRow] = []
    if "medical_o1" in sources:
        rows += load_hub_rows()
    for name, build in (("medmcqa", medmcqa_row), ("medmcqa_open", medmcqa_open_row)):
        if name in sources:  # the Hub's cop is 0-based, the data-dir file's 1-based
            built = (build(dict(rec, cop=int(rec["cop"]) + 1)) for rec in hub_rows("medmcqa"))
            rows += [r for r in built if r is not None]
    for name, build in (("pubmedqa", pubmedqa_row), ("pubmedqa_open", pubmedqa_open_row)):
        if name in sources:
            test = set(pubmedqa_test_ids(cfg))
            rows += [build(str(r["pubid"]), {"QUESTION": r["question"], "CONTEXTS": r["context"]["contexts"],
                                             "LABELS": r["context"].get("labels") or [],
                                             "LONG_ANSWER": r["long_answer"], "final_decision": r["final_decision"]})
                     for r in hub_rows("pubmedqa") if str(r["pubid"]) not in test]
    return rows


# SFT sources built from benchmark files (the ones that can overlap the evaluated items)
BENCHMARK_DERIVED = ("medmcqa", "pubmedqa", "medmcqa_open", "pubmedqa_open")
LIMIT = re.compile(r"^(?P<name>.+?)\[:(?P<n>\d+)\]$")  # ``local:pubmedqa_open[:150]``: the first 150 rows


def trained_overlap(cfg: AppConfig, data_meta: dict[str, Any], samples: dict[str, Sequence[Any]]) -> list[Overlap]:
    """Evaluated ``samples`` that an adapter's SFT data contained (from its ``medadapt.json`` ``data`` record).

    Training excludes the eval sample configured at training time (``excluded_eval_items``: benchmarks, n, seed);
    evaluating other items (a larger ``--n``, another seed) can reach rows the adapter was trained on. This rebuilds
    the adapter's benchmark-derived training rows (MedMCQA, PubMedQA) and returns every evaluated item among them.
    """
    sft = data_meta.get("sft", data_meta)  # an MSFT adapter records its SFT stage under "sft"
    sources = [s for s in sft.get("sources", []) if s in BENCHMARK_DERIVED]
    if not sources:
        return []
    spec = sft.get("excluded_eval_items")
    spec = spec if isinstance(spec, dict) else {}  # adapters from before this record: the config's sample
    excluded = evaluated_items(cfg, spec.get("benchmarks"), spec.get("n"), spec.get("seed"))
    trained, _ = exclude_overlaps(load_local_rows(cfg, sources), excluded)
    return check_disjoint(trained, samples)


def load_hub_rows(name: str = HUB_DATASET, config: str = "en", split: str = "train") -> list[SftRow]:
    """Rows of a medical-o1-style Hub dataset (``split="train[:20000]"``: the seed's first 20K rows)."""
    return [o1_row(n, r) for n, r in enumerate(load_hub(name, config, split))]


def exclude_overlaps(rows: list[SftRow], eval_items: dict[str, Sequence[Any]]) -> tuple[list[SftRow], list[Overlap]]:
    """Rows with every evaluated item removed, and the overlaps that were removed."""
    overlaps = check_disjoint(rows, eval_items)
    bad = {o.row_id for o in overlaps}
    return [r for r in rows if r.id not in bad], overlaps


def load_sft_rows(cfg: AppConfig, datasets: Sequence[str] = ()) -> list[SftRow]:
    """SFT rows for the profile, disjoint from the evaluated samples (raises :class:`OverlapError` if not).

    ``datasets``: ``local:<name>`` for a name in :data:`LOCAL_SOURCES` (``medmcqa_open``, ``pubmedqa_open``: posed
    without options, answered in prose) or Hub names, each optionally cut to its first N rows (``name[:N]``); empty =
    the profile's default (the Hub dataset for ``reference``, the three lettered local sets otherwise).
    """
    names = list(datasets) or ([HUB_DATASET] if cfg.profile == "reference" else
                               ["local:medical_o1", "local:medmcqa", "local:pubmedqa"])
    rows: list[SftRow] = []
    for entry in names:
        m = LIMIT.match(entry)
        name, limit = (m["name"], int(m["n"])) if m else (entry, None)
        got = load_local_rows(cfg, [name.removeprefix("local:")]) if name.startswith("local:") else load_hub_rows(name)
        rows += got[:limit] if limit is not None else got
    items = evaluated_items(cfg)
    rows, _removed = exclude_overlaps(rows, items)
    left = check_disjoint(rows, items)
    if left:
        raise OverlapError(f"{len(left)} training rows overlap evaluated items, e.g. {left[0]}")
    return rows
