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
from medadapt.data.benchmarks import (DEFINITIONS, evaluated_items, hub_rows, medmcqa_item, pubmedqa_item,
                                      pubmedqa_test_ids)

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
                  item.posed())


def pubmedqa_row(pmid: str, rec: dict[str, Any]) -> SftRow:
    item = pubmedqa_item(pmid, rec["QUESTION"], rec["CONTEXTS"], rec["final_decision"])
    question = f"Context: {item.context}\n\nQuestion: {rec['QUESTION']}\nAnswer with yes, no or maybe."
    return SftRow(f"pubmedqa:{pmid}", "pubmedqa", question, rec["LONG_ANSWER"].strip(),
                  f"The answer is {rec['final_decision']}.", item.posed())


def o1_row(n: int, rec: dict[str, Any]) -> SftRow:
    return SftRow(f"medical_o1:{n}", "medical_o1", rec["Question"], rec["Complex_CoT"], rec["Response"])


# ---------------------------------------------------------------- loaders

def load_local_rows(cfg: AppConfig, sources: Sequence[str] = ("medical_o1", "medmcqa", "pubmedqa")) -> list[SftRow]:
    """Offline rows from the data dir (their Hub twins when there is none), before excluding evaluated items."""
    if cfg.hub_data:
        return hub_twin_rows(cfg, sources)
    rows: list[SftRow] = []
    if "medical_o1" in sources:
        recs = read_json(data_file(cfg, "medical_o1_sft", "medical_o1_sft_en_first10.json"))
        rows += [o1_row(n, r) for n, r in enumerate(recs)]
    if "medmcqa" in sources:
        rows += [r for r in map(medmcqa_row, read_jsonl(data_file(cfg, "medmcqa", "dev.json"))) if r is not None]
    if "pubmedqa" in sources:
        pqal = read_json(data_file(cfg, "pubmedqa", "ori_pqal.json"))
        test = set(pubmedqa_test_ids(cfg))
        rows += [pubmedqa_row(pmid, rec) for pmid, rec in pqal.items() if pmid not in test]
    return rows


def hub_twin_rows(cfg: AppConfig, sources: Sequence[str]) -> list[SftRow]:
    """``load_local_rows`` from the Hub datasets the data-dir files were taken from."""
    rows: list[SftRow] = []
    if "medical_o1" in sources:
        rows += load_hub_rows()
    if "medmcqa" in sources:  # the Hub's cop is 0-based, the data-dir file's 1-based
        built = (medmcqa_row(dict(rec, cop=int(rec["cop"]) + 1)) for rec in hub_rows("medmcqa"))
        rows += [r for r in built if r is not None]
    if "pubmedqa" in sources:
        test = set(pubmedqa_test_ids(cfg))
        rows += [pubmedqa_row(str(r["pubid"]), {"QUESTION": r["question"], "CONTEXTS": r["context"]["contexts"],
                                                "LONG_ANSWER": r["long_answer"], "final_decision": r["final_decision"]})
                 for r in hub_rows("pubmedqa") if str(r["pubid"]) not in test]
    return rows


BENCHMARK_DERIVED = ("medmcqa", "pubmedqa")  # SFT sources built from benchmark files (the ones that can overlap)


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

    ``datasets``: ``local:medical_o1``, ``local:medmcqa``, ``local:pubmedqa`` or Hub names; empty = the profile's
    default (the Hub dataset for ``reference``, all three local sets otherwise).
    """
    names = list(datasets) or ([HUB_DATASET] if cfg.profile == "reference" else
                               ["local:medical_o1", "local:medmcqa", "local:pubmedqa"])
    local = [n.removeprefix("local:") for n in names if n.startswith("local:")]
    rows = load_local_rows(cfg, local) if local else []
    for name in names:
        if not name.startswith("local:"):
            rows += load_hub_rows(name)
    items = evaluated_items(cfg)
    rows, _removed = exclude_overlaps(rows, items)
    left = check_disjoint(rows, items)
    if left:
        raise OverlapError(f"{len(left)} training rows overlap evaluated items, e.g. {left[0]}")
    return rows
