"""The generated verdict (issue 35): every sentence type on planted results, including each false positive the
issue lists: a letter gain that is the favourite letter (also for MSFT - SFT), a cot gain that sits on gold-"A"
items, a calibrated loss that is a misjudged content-free prior, a gain on a constant view, a nominal p that does not
survive the correction, and "no difference" without the detectable difference."""
from __future__ import annotations

import pytest

N = 200
LOGLIK = ["letter", "letter_cal", "letter_batch_cal", "circular", "debiased", "text_norm", "text_sum"]
GOLD_MEDQA = ["A" if i % 5 < 2 else "BCD"[i % 5 - 2] for i in range(N)]  # 40% A, 20% each of B, C, D
GOLD_PUBMED = ["A" if i % 20 < 11 else "B" if i % 20 < 17 else "C" for i in range(N)]  # yes 55%, no 30%, maybe 15%


def right(k: int, gold: list[str] = GOLD_MEDQA, letters: str = "ABCD") -> list[str]:
    """Right on the first ``k`` items, on the others the next letter (wrong)."""
    return [g if i < k else letters[(letters.index(g) + 1) % len(letters)] for i, g in enumerate(gold)]


def always(letter: str, n: int = N) -> list[str]:
    return [letter] * n


def results(preds: dict[str, dict[str, dict[str, list[str]]]], views=None, calibration=None) -> dict:
    """A results dict from ``{variant: {benchmark: {view: [pred per item]}}}`` (medqa: 4 options, pubmedqa: 3)."""
    golds = {"medqa": GOLD_MEDQA, "pubmedqa": GOLD_PUBMED}
    benches = sorted({b for per in preds.values() for b in per}, key=list(golds).index)
    items = {b: [{"id": f"{b}{i}", "question": "q", "answer": g, "subject": "",
                  "options": dict(zip("ABCD" if b == "medqa" else "ABC", ("w", "x", "y", "z")))}
                 for i, g in enumerate(golds[b])] for b in benches}
    variants = {}
    for v, per_bench in preds.items():
        out = {}
        for b, per_view in per_bench.items():
            rows = []
            for i, it in enumerate(items[b]):
                vs = {view: {"pred": p[i], "correct": p[i] == it["answer"], "invalid": False}
                      for view, p in per_view.items() if i < len(p)}
                if vs:
                    rows.append({"id": it["id"], **next(iter(vs.values())), "views": vs})
            out[b] = rows
        variants[v] = {"status": "ok", "predictions": out, "timing": {},
                       "calibration": (calibration or {}).get(v, {})}
    views = views or list(dict.fromkeys(view for per in preds.values() for pv in per.values() for view in pv))
    return {"mode": "loglik", "views": views, "created": "t", "item_ids": {b: [it["id"] for it in items[b]]
            for b in benches}, "items": items, "variants": variants}


def all_views(p: list[str], **override: list[str]) -> dict[str, list[str]]:
    return {v: override.get(v, p) for v in LOGLIK}


def line(text: str, head: str) -> str:
    return next(x for x in text.split("\n\n") if x.startswith(head))


def test_a_gain_that_survives_every_check_is_called_one():
    from eval.decompose import explain

    text = explain(results({"base": {"medqa": all_views(right(50))}, "sft": {"medqa": all_views(right(120))}}))
    sft = line(text, "**SFT vs Base**")
    assert "**SFT gains +35.0 points under letter** (q = " in sft and "the prior-free views agree" in sft
    assert "**SFT gains +35.0 points under circular** (q = " in sft and "a view no letter prior can raise" in sft
    assert "**Verdict: SFT shows a gain that survives every check under letter," in sft
    assert "q: Benjamini-Hochberg over the " in text and "not evidence" not in sft


def test_a_letter_gain_that_is_the_favourite_letter_is_not_knowledge_also_for_msft_over_sft():
    from eval.decompose import explain

    base = all_views(right(50))
    text = explain(results({"base": {"medqa": base}, "sft": {"medqa": base},
                            "msft": {"medqa": all_views(right(50), letter=always("A"))}}))
    for head in ("**MSFT vs Base**", "**MSFT vs SFT**"):
        msft = line(text, head)
        assert "The letter gain (+15.0, q = " in msft and "is **not evidence of knowledge**" in msft
        assert "the prior-free views do not agree (letter, batch-calibrated +0.0, circular +0.0, debiased (all positions) +0.0)" in msft
        assert "sits on the items whose answer is “A”, MSFT's favourite answer here (100% of its answers" in msft
        assert "gains +15.0" not in msft
    assert "**Verdict: Continual pretraining before the same SFT shows no gain that survives the prior checks.**" in \
        line(text, "**MSFT vs SFT**")


def test_a_cot_gain_on_gold_a_items_only_is_not_knowledge():
    from eval.decompose import explain

    base_cot = right(40)  # 20% right, spread over every gold letter
    sft_cot = ["A" if g == "A" else base_cot[i] if i < 20 else "A" for i, g in enumerate(GOLD_MEDQA)]
    text = explain(results({"base": {"medqa": {"cot": base_cot}}, "sft": {"medqa": {"cot": sft_cot}}},
                           views=["cot"]))
    sft = line(text, "**SFT vs Base**")
    assert "The chain of thought gain (+" in sft and "**not evidence of knowledge**" in sft
    assert "sits on the items whose answer is “A”" in sft and "on the other items -" in sft


def test_a_nominal_p_that_fails_the_correction_is_not_significant_and_says_what_n_can_detect():
    from eval.decompose import explain, page_tests

    base = all_views(right(50))
    small = right(50)
    small = [GOLD_MEDQA[i] if 50 <= i < 62 else small[i] for i in range(N)]  # 12 more right
    small = [right(0)[i] if i < 3 else small[i] for i in range(N)]  # 3 fewer right: only_b 12, only_a 3
    res = results({"base": {"medqa": base}, "sft": {"medqa": all_views(right(50), letter=small)}})
    g = page_tests(res)[("base", "sft", "letter", "average")]
    assert g["p"] < 0.05 <= g["q"] and g["family"] == 14
    sft = line(explain(res), "**SFT vs Base**")
    assert f"letter (+4.5, q = {g['q']:.2g}, p = {g['p']:.2g} before the correction; detectable at this n: ±" in sft
    assert "No significant difference under" in sft and "may exist and go unseen" in sft
    assert "**Verdict: SFT shows no gain that survives the prior checks.**" in sft


def test_losses_are_named_and_a_content_free_loss_the_prior_free_views_do_not_confirm_is_the_prior():
    from eval.decompose import explain

    base = all_views(right(80))
    cal = {"sft": {"medqa": {"letters": list("ABCD"), "prior": [0.34, 0.2, 0.31, 0.15],
                             "batch_prior": [0.26, 0.2, 0.34, 0.2]}}}
    res = results({"base": {"medqa": base},
                   "sft": {"medqa": all_views(right(80), letter_cal=right(20), circular=right(30))}}, calibration=cal)
    sft = line(explain(res), "**SFT vs Base**")
    assert "**SFT loses 30.0 points under letter, content-free calibrated** (q = " in sft
    assert "the prior-free views do not confirm it (letter, batch-calibrated +0.0, q = 1" in sft
    assert "so it is largely a misjudged prior: on medqa its content-free prior puts “A” at 0.34, its mean letter " \
           "distribution on the items at 0.26" in sft
    assert "**SFT loses 25.0 points under circular** (q = " in sft  # a prior-free loss is named as it is


def test_a_gain_on_a_constant_view_is_not_evidence_of_knowledge():
    from eval.decompose import explain

    res = results({
        "base": {"medqa": {"text_norm": right(50)}, "pubmedqa": {"text_norm": always("C")}},
        "sft": {"medqa": {"text_norm": right(50)}, "pubmedqa": {"text_norm": always("A")}},
    })
    sft = line(explain(res), "**SFT vs Base**")
    assert "The option text per character (acc_norm) gain (+" in sft and "**not evidence of knowledge**" in sft
    assert "the view is constant where the gain comes from" in sft and "without pubmedqa the difference is +0.0" in sft
    assert "gains +" not in sft and "evidence of knowledge." not in sft.replace("not evidence of knowledge", "")
    assert "Under option text per character (acc_norm) SFT answers “A” on 200 of 200 pubmedqa items: that view " \
           "says nothing about it there." in sft


def test_favourite_marker_is_the_variants_actual_most_frequent_answer():
    from eval.report import favourite_baselines

    preds = ["C"] * 140 + ["A"] * 60  # answers C most, though its content-free prior's argmax is A
    res = results({"sft": {"medqa": {"letter": preds}}},
                  calibration={"sft": {"medqa": {"letters": list("ABCD"), "prior": [0.34, 0.2, 0.31, 0.15]}}})
    fav = favourite_baselines(res, "letter")["sft"]["medqa"]
    assert fav["letter"] == "C" and fav["share"] == pytest.approx(0.7)
    assert fav["acc"] == pytest.approx(GOLD_MEDQA.count("C") / N)


def test_needs_base_and_another_variant():
    from eval.decompose import explain

    assert explain(results({"sft": {"medqa": all_views(right(50))}})) == \
        "Needs base and at least one other variant in the same results file."


def test_perf_tables_regenerates_the_doc_section_from_a_results_file(tmp_path):
    """scripts/perf_tables.py: per view, each variant's accuracy with CI, its difference from base with q and the
    detectable difference, written only between the markers."""
    import json
    import sys

    from medadapt.config import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import perf_tables

    res = results({"base": {"medqa": all_views(right(50))}, "sft": {"medqa": all_views(right(120))}})
    src = tmp_path / "r.json"
    src.write_text(json.dumps(res))
    doc = tmp_path / "doc.md"
    doc.write_text(f"# head\n{perf_tables.BEGIN}\nSTALE-TEXT\n{perf_tables.END}\n## tail\n")
    assert perf_tables.main([str(src), "--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# head\n") and text.endswith("## tail\n") and "STALE-TEXT" not in text
    row = next(x for x in text.splitlines() if x.startswith("| circular |"))
    assert "| 25.0 [19.5, 31.4] (n=200) | 60.0 [53.1, 66.5]: +35.0 [" in row and "q = " in row and "*, ±" in row
    assert "**Verdict: SFT shows a gain that survives every check" in text
