"""Benchmark loaders on the real data-dir files, and the seeded samples."""
from __future__ import annotations

from collections import Counter

import pytest

from medadapt.data.benchmark_items import MMLU_SUBJECTS, BenchItem, medmcqa_item
from medadapt.data.benchmarks import (
    BENCHMARKS, UnknownBenchmarkError, benchmark, evaluated_items, item_ids, load_benchmark, pubmedqa_test_ids,
    sample_items, select_ids,
)


@pytest.mark.parametrize("name,count", [("medmcqa", 4183), ("medqa", 1273), ("mmlu_medical", 1089), ("pubmedqa", 1000)])
def test_counts_and_fields(cfg, name, count):
    items = load_benchmark(cfg, name)
    assert len(items) == count
    assert len({it.id for it in items}) == count  # ids are unique
    for it in items:
        assert it.benchmark == name and it.question and it.answer in it.options
        assert list(it.options) == (["A", "B", "C"] if name == "pubmedqa" else ["A", "B", "C", "D"])


def test_medmcqa_answer_mapping_is_one_based_in_file(cfg):
    items = load_benchmark(cfg, "medmcqa")
    # SOURCES.md: cop 1: 1348, 2: 1085, 3: 925, 4: 825
    assert Counter(it.answer for it in items) == {"A": 1348, "B": 1085, "C": 925, "D": 825}
    first = items[0]
    assert first.answer == "A" and first.options["A"].startswith("Impulse through myelinated")
    row = {"id": "x", "question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 0}
    assert medmcqa_item(row, one_based=False).answer == "A"  # the Hub's 0-based form
    with pytest.raises(ValueError):
        medmcqa_item(row, one_based=True)


def test_medqa_and_mmlu_answers(cfg):
    assert Counter(it.answer for it in load_benchmark(cfg, "medqa")) == {"A": 353, "B": 309, "C": 346, "D": 265}
    mmlu = load_benchmark(cfg, "mmlu_medical")
    per = Counter(it.subject for it in mmlu)
    assert set(per) == set(MMLU_SUBJECTS) and per["medical_genetics"] == 100 and per["professional_medicine"] == 272


def test_pubmedqa_labels_context_and_test_split(cfg):
    items = load_benchmark(cfg, "pubmedqa")
    assert Counter(it.options[it.answer] for it in items) == {"yes": 552, "no": 338, "maybe": 110}
    assert all(it.context for it in items)
    test = pubmedqa_test_ids(cfg)
    assert len(test) == 500 and set(test) <= {it.id for it in items}


def test_sample_is_seeded_and_stratified(cfg):
    items = load_benchmark(cfg, "mmlu_medical")
    a = sample_items(items, 200, seed=7, stratify_by="subject")
    assert [i.id for i in a] == [i.id for i in sample_items(items, 200, seed=7, stratify_by="subject")]
    assert [i.id for i in a] != [i.id for i in sample_items(items, 200, seed=8, stratify_by="subject")]
    counts = Counter(i.subject for i in a)
    assert len(a) == 200 and set(counts) == set(MMLU_SUBJECTS) and max(counts.values()) - min(counts.values()) <= 1
    assert len(sample_items(items, 0, seed=1)) == len(items)


def test_stratified_sample_moves_shortfall_to_bigger_groups():
    items = [BenchItem("b", f"s{i}", "q", {"A": "x"}, "A", "small") for i in range(2)]
    items += [BenchItem("b", f"b{i}", "q", {"A": "x"}, "A", "big") for i in range(20)]
    counts = Counter(i.subject for i in sample_items(items, 10, 0, "subject"))
    assert counts == {"small": 2, "big": 8}


def test_evaluated_items_pubmedqa_from_test_split_and_roundtrip(cfg):
    cfg.eval.n = 30
    samples = evaluated_items(cfg)
    assert list(samples) == list(BENCHMARKS) and all(len(v) == 30 for v in samples.values())
    assert {it.id for it in samples["pubmedqa"]} <= set(pubmedqa_test_ids(cfg))
    again = select_ids(cfg, item_ids(samples))
    assert item_ids(again) == item_ids(samples)


def test_unknown_benchmark(cfg):
    with pytest.raises(UnknownBenchmarkError):
        load_benchmark(cfg, "nope")


def test_smaller_sample_is_prefix_of_larger(cfg):
    for name, strat in [("medqa", None), ("mmlu_medical", "subject")]:
        items = load_benchmark(cfg, name)
        small, big = sample_items(items, 50, 3, strat), sample_items(items, 200, 3, strat)
        assert [i.id for i in small] == [i.id for i in big[:50]]


def test_one_definition_drives_items_prompts_answers_and_labels(cfg):
    """Each benchmark's definition gives its items' letters (and PubMedQA's yes/no/maybe), the prompt heading of the
    abstract in both prompt styles, the answer filter and the tab's label and breakdown flag."""
    from medadapt.data.benchmarks import has_breakdown, task_label
    from eval.prompting import item_messages, plain_prompt

    for name in BENCHMARKS:
        spec = benchmark(name)
        items = spec.sample(cfg, 12, 5)
        assert [it.id for it in items] == [it.id for it in evaluated_items(cfg, [name], 12, 5)[name]]
        assert all("".join(it.options) == spec.letters for it in items)
        assert all(it.options == spec.choices for it in items) if spec.choices else spec.letters == "ABCD"
        assert task_label(name) == spec.label and has_breakdown(name) == spec.breakdown
        it = items[0]
        assert spec.read_answer(f"Reasoning.\nAnswer: {it.answer}", it) == (it.answer, "strict")
        assert spec.read_answer("<think>unfinished", it, opened=False)[0] is None
    assert benchmark("pubmedqa").choices == {"A": "yes", "B": "no", "C": "maybe"}
    assert [n for n in BENCHMARKS if has_breakdown(n)] == ["medmcqa", "mmlu_medical"]
    it = benchmark("pubmedqa").sample(cfg, 1, 0)[0]
    assert f"Abstract: {it.context}\n\nQuestion:" in item_messages(it)[1]["content"]
    assert plain_prompt(it).startswith(f"Abstract: {it.context}\nQuestion:")
    assert "Abstract" not in item_messages(benchmark("medqa").sample(cfg, 1, 0)[0])[1]["content"]
    assert task_label("not-a-benchmark") == "not-a-benchmark"


def toy_items(cfg=None) -> list[BenchItem]:
    """A fifth benchmark's loader: six parity questions, yes/no."""
    return [BenchItem("toy", f"toy-{i}", f"Is {i} even?", {"A": "yes", "B": "no"}, "AB"[i % 2]) for i in range(6)]


def test_a_fifth_benchmark_is_one_definition_plus_its_loader(cfg, monkeypatch):
    """A toy benchmark added the way a new one is (its definition beside the others, its loader): sampled, prompted
    in both styles, given its lm-eval task and the paper's numbers, labelled, and evaluated end to end."""
    from eval.evaluate import evaluate
    from eval.prompting import continuations, loglik_prompt, plain_prompt
    from eval.report import ALL, paper_reference, summarize
    from eval.variants import Variant
    from medadapt.data.benchmarks import DEFINITIONS, Benchmark, task_label

    toy = Benchmark("toy", "Toy", "six parity questions", ("nobody/toy", None, "test"), toy_items, toy_items,
                    prompt="Q: {question}\n{options}A:", lmeval_task="toy_parity", letters="AB",
                    choices={"A": "yes", "B": "no"}, choice="text", paper={"base": 50.0})
    monkeypatch.setitem(DEFINITIONS, "toy", toy)
    samples = evaluated_items(cfg, ["toy"], n=4, seed=0)
    it = samples["toy"][0]
    assert len(samples["toy"]) == 4 and task_label("toy") == "Toy" and toy.task(it) == "toy_parity"
    assert plain_prompt(it) == f"Q: {it.question}\nA. yes\nB. no\nA:"
    assert continuations(it, "letter", "plain") == [" yes", " no"] and continuations(it, "letter") == [" A", " B"]
    assert loglik_prompt(it, "chat", lambda msgs: msgs[-1]["content"]).endswith("Answer:")
    assert paper_reference(["toy"])["base"] == {"toy": 0.5, ALL: 0.5}
    results = evaluate(cfg, [Variant("base")], samples, "loglik")
    assert [r["id"] for r in results["variants"]["base"]["predictions"]["toy"]] == [i.id for i in samples["toy"]]
    assert summarize(results)["base"]["toy"]["n"] == 4
