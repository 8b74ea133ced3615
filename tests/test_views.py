"""Scoring views (issue 19): one pass over the prompt for every loglik view, contextual calibration on a tiny model
with a planted letter bias, views in merged files, and the gain decomposition with its generated summary."""
from __future__ import annotations

import math

import pytest

from medadapt.data.benchmarks import evaluated_items
from tests.test_eval_run import _plant, tiny  # noqa: F401 — the module-scoped tiny model fixture


def _multi_requests(cfg, tok, n=2):
    from eval.loglik import encode, encode_multi
    from eval.prompting import continuations, loglik_prompt

    render = lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    items = [it for v in evaluated_items(cfg, ["medqa", "pubmedqa"], n=n).values() for it in v]
    prompts = [loglik_prompt(it, "chat", render) for it in items]
    multi = [encode_multi(tok, p, {t: continuations(it, t) for t in ("letter", "text")}, False, 2048)
             for p, it in zip(prompts, items)]
    single = {t: [encode(tok, p, continuations(it, t), False, 2048) for p, it in zip(prompts, items)]
              for t in ("letter", "text")}
    return items, multi, single


@pytest.mark.parametrize("batch_size", [1, 3])
def test_one_prompt_pass_scores_like_separate_passes(cfg, tiny, batch_size):  # noqa: F811
    from eval.loglik import score_multi, score_requests

    model, tok = tiny
    _, multi, single = _multi_requests(cfg, tok)
    assert any(len(c) > 2 for r in multi for c in r.targets["text"])  # multi-token option texts go through the cache
    got = score_multi(model, multi, batch_size, tok.pad_token_id)
    for target, reqs in single.items():
        want = score_requests(model, reqs, 8, tok.pad_token_id)
        for g, w in zip(got, want):
            assert g[target] == pytest.approx(w, abs=1e-3)


def test_calibration_math():
    from eval.scoring import calibrate, letter_prior
    from eval.scoring import choose

    prior = letter_prior([[math.log(0.7), math.log(0.1), math.log(0.1), math.log(0.1)],
                          [math.log(0.5), math.log(0.3), math.log(0.1), math.log(0.1)]])
    assert prior == pytest.approx([0.6, 0.2, 0.1, 0.1])
    x = [math.log(0.5), math.log(0.3), math.log(0.1), math.log(0.1)]
    assert choose(x) == 0 and choose(calibrate(x, prior)) == 1  # 0.5/0.6 < 0.3/0.2
    shifted = [x[0] + 5.0] + x[1:]  # the same input under a constant extra bias for "A"
    biased_prior = letter_prior([[math.log(0.6) + 5.0, math.log(0.2), math.log(0.1), math.log(0.1)]])
    a, b = calibrate(shifted, biased_prior), calibrate(x, [0.6, 0.2, 0.1, 0.1])
    assert [s - a[0] for s in a] == pytest.approx([s - b[0] for s in b])  # equal up to a constant per input


def test_calibrated_view_divides_out_a_planted_letter_bias(cfg, tiny):  # noqa: F811
    """A letter bias planted in the LM head: content-free calibration and debiasing cancel it, circular is not raised
    by it, and the row records every rotation and both priors with their spread."""
    from eval.scoring import letter_prior
    from eval.evaluate import _loglik_variant
    from eval.variants import Variant
    from eval.views import LOGLIK_VIEWS

    model, tok = tiny
    samples = evaluated_items(cfg, ["medmcqa", "medqa", "mmlu_medical"], n=6)
    snippets = {b: {} for b in samples}
    args = (cfg, model, tok, Variant("base"), samples, snippets, lambda **_: None, lambda: False)
    clean, _, clean_prior = _loglik_variant(*args)
    original = _plant(model, tok(" A", add_special_tokens=False).input_ids[-1], bias=8.0)
    try:
        biased, _, biased_prior = _loglik_variant(*args)
    finally:
        model.lm_head = original

    def picks(preds, view):
        return [r["views"][view]["pred"] for rows in preds.values() for r in rows]

    assert set(picks(biased, "letter")) == {"A"}  # the planted prior wins every item under letter scoring
    assert all(p["prior"][0] > 0.9 for p in biased_prior.values())
    assert all(p["prior"][0] < 0.9 for p in clean_prior.values())
    assert picks(biased, "letter_cal") == picks(clean, "letter_cal")  # calibration cancels the bias exactly
    assert set(picks(clean, "letter_cal")) != {"A"}
    assert picks(biased, "text_norm") == picks(clean, "text_norm")  # option texts do not start with " A"
    assert picks(biased, "debiased") == picks(clean, "debiased")  # averaged over positions, the bias cancels
    assert set(picks(biased, "circular")) == {"inconsistent"}  # "A" under every rotation is a different option
    assert not any(r["views"]["circular"]["correct"] for rows in biased.values() for r in rows)
    for rows in biased.values():
        for r in rows:
            assert set(r["views"]) == set(LOGLIK_VIEWS) and len(r["logprobs"]["text"]) == 4
            assert len(r["logprobs"]["rotations"]) == 3 and all(len(x) == 4 for x in r["logprobs"]["rotations"])
    for name, p in biased_prior.items():
        assert p["copies"] == 24 and len(p["prior_sd"]) == 4 and max(p["prior_se"]) < 0.05
        want = letter_prior([r["logprobs"]["letter"] for r in biased[name]])  # batch prior: the items' mean
        assert p["batch_prior"] == pytest.approx(want, abs=1e-3)


def _results(preds_by_variant: dict[str, dict[str, list[tuple[str, str | None]]]], mode="loglik", views=None) -> dict:
    """A results dict on 40 two-option items (answer A on even ids) from ``{variant: {view: [pred per item]}}``."""
    items = [{"id": f"q{i}", "question": "q", "options": {"A": "a", "B": "b"}, "answer": "AB"[i % 2], "subject": ""}
             for i in range(40)]
    variants = {}
    for v, per_view in preds_by_variant.items():
        rows = []
        for i, it in enumerate(items):
            vs = {view: {"pred": preds[i], "correct": preds[i] == it["answer"], "invalid": preds[i] is None}
                  for view, preds in per_view.items() if i < len(preds)}
            if vs:
                rows.append({"id": it["id"], **next(iter(vs.values())), "views": vs})
        variants[v] = {"status": "ok", "predictions": {"medqa": rows}, "timing": {}}
    return {"mode": mode, "views": views or ["letter", "letter_cal", "text_norm"], "created": mode,
            "item_ids": {"medqa": [it["id"] for it in items]}, "items": {"medqa": items}, "variants": variants}


def _mostly_right(k: int) -> list[str]:
    """Right on the first ``k`` of 40 items, wrong after."""
    return ["AB"[i % 2] if i < k else "BA"[i % 2] for i in range(40)]


def test_decomposition_pairs_views_and_corrects_over_the_page():
    """Each comparison x view x benchmark, paired, with its BH q over every comparison the page shows (all pairs)."""
    from eval.decompose import decomposition, gain, page_tests
    from eval.report import favourite_baselines, summarize

    half = _mostly_right(20)
    res = _results({
        "base": {"letter": half, "letter_cal": half, "text_norm": half},
        "sft": {"letter": _mostly_right(38), "letter_cal": half, "text_norm": half},  # format only
        "msft": {"letter": _mostly_right(38), "letter_cal": _mostly_right(36), "text_norm": _mostly_right(36)},
    })
    g = gain(res, "base", "sft", "letter")
    assert (g["n"], g["only_a"], g["only_b"]) == (40, 0, 18) and g["diff"] == pytest.approx(18 / 40)
    assert g["p"] < 1e-4 and g["ci_low"] > 0 and 0 < g["mdd"] < 1
    assert gain(res, "base", "sft", "letter_cal")["diff"] == 0
    tests = page_tests(res)
    assert len(tests) == 3 * 3 * 2 and all(t["family"] == 18 for t in tests.values())  # 3 pairs x 3 views x 2
    assert all(t["q"] >= t["p"] for t in tests.values())
    rows = decomposition(res)
    assert {(r["a"], r["b"]) for r in rows} == {("base", "sft"), ("base", "msft"), ("sft", "msft")}
    assert len(rows) == 3 * 3 * 2  # comparisons x views x (medqa, all items)
    assert summarize(res, "letter")["sft"]["medqa"]["predicted"] == {"A": 20, "B": 20}
    assert favourite_baselines(res, "letter")["sft"]["medqa"]["acc"] == 0.5


def test_cot_run_merges_into_the_loglik_views_of_the_same_items():
    from eval.report import drilldown, summarize, variant_timing
    from eval.run import merge_results
    from eval.views import decoding_note, views_of

    half = _mostly_right(20)
    loglik = _results({"base": {"letter": half, "letter_cal": half, "text_norm": half}})
    cot = _results({"base": {"cot": _mostly_right(10)[:10]}}, mode="cot", views=["cot"])
    for rows in cot["variants"]["base"]["predictions"].values():  # a cot file as eval writes it: 10 items, raw text
        del rows[10:]
        for r in rows:
            r["raw"], r["filter"] = f"because ... Answer: {r['pred']}", "strict"
    cot["item_ids"]["medqa"] = cot["item_ids"]["medqa"][:10]
    cot["items"]["medqa"] = cot["items"]["medqa"][:10]
    cot["variants"]["base"]["timing"] = {"wall_s": 99.0}
    merged = merge_results([loglik, cot])
    assert views_of(merged) == ["letter", "letter_cal", "text_norm", "cot"]
    assert summarize(merged, "cot")["base"]["medqa"]["n"] == 10 and summarize(merged, "letter")["base"]["medqa"]["n"] == 40
    assert merged["variants"]["base"]["timing_by_mode"]["cot"] == {"wall_s": 99.0}
    d = drilldown(merged, "medqa", "q0")
    by_view = {r["view"]: r for r in d["rows"]}
    assert by_view["cot"]["raw"].startswith("because") and by_view["cot"]["filter"] == "strict"
    assert set(merged["summary_by_view"]) == {"letter", "letter_cal", "text_norm", "cot"}
    # a run under a thinking budget is another run: its view sits next to the plain cot view, timed on its own
    budget = _results({"base": {"cot_budget": _mostly_right(4)[:10]}}, mode="cot", views=["cot_budget"])
    for b in ("item_ids", "items"):
        budget[b]["medqa"] = budget[b]["medqa"][:10]
    budget["variants"]["base"]["timing"] = {"wall_s": 7.0}
    budget["config"] = {"eval": {"think_budget": 448}}
    budget["variants"]["base"]["predictions"]["medqa"][0]["budget_closed"] = True  # as eval writes a row
    both = merge_results([merged, budget])
    assert views_of(both) == ["letter", "letter_cal", "text_norm", "cot", "cot_budget"]
    assert summarize(both, "cot")["base"]["medqa"]["correct"] == 10  # the plain run's rows are kept
    assert summarize(both, "cot_budget")["base"]["medqa"]["correct"] == 4
    assert variant_timing(both, "base", "cot") == {"wall_s": 99.0}
    assert variant_timing(both, "base", "cot_budget") == {"wall_s": 7.0}
    assert both["config_by_run"]["cot_budget"]["eval"]["think_budget"] == 448  # each run's decoding is kept
    closed = [r["views"]["cot_budget"]["budget_closed"] for r in both["variants"]["base"]["predictions"]["medqa"][:10]]
    assert closed == [True] + [False] * 9  # the row's flag travels with its view
    budget["config"]["eval"].update(temperature=0.0, max_new_tokens=512)
    assert decoding_note(merge_results([merged, budget]), "cot_budget") == "greedy, 512 new tokens, thinking budget 448 tokens"
    assert decoding_note(both, "letter") == ""


def test_paired_difference_interval():
    from eval.stats import paired_difference

    d = paired_difference([True] * 10 + [False] * 90, [True] * 30 + [False] * 70)
    assert (d["only_a"], d["only_b"], d["diff"]) == (0, 20, pytest.approx(0.2))
    se = math.sqrt(20 - 400 / 100) / 100
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(0.2 - 1.96 * se, abs=1e-3), pytest.approx(0.2 + 1.96 * se, abs=1e-3))
    assert paired_difference([True], [True])["diff"] == 0


def test_benchmarks_tab_draws_views_decomposition_and_distribution():
    from medadapt.charts.results import accuracy_figure, decomposition_figure, distribution_figure
    from medadapt.ui.benchmarks_view import view_choices, views_markdown

    half = _mostly_right(20)
    res = _results({"base": {"letter": half, "letter_cal": half, "text_norm": half},
                    "sft": {"letter": ["A"] * 40, "letter_cal": half, "text_norm": _mostly_right(30)}})
    res["variants"]["sft"]["calibration"] = {"medqa": {"letters": ["A", "B"], "prior": [0.9, 0.1]}}
    assert [v for _, v in view_choices(res)] == ["letter", "letter_cal", "text_norm"]
    fig = decomposition_figure(res)
    assert [t.name for t in fig.data] == ["letter", "letter, content-free calibrated",
                                          "option text per character (acc_norm)"]
    assert list(fig.data[2].x) == ["SFT − Base"] and fig.data[2].y[0] == pytest.approx(25.0)
    assert fig.data[2].text[0].startswith("q=") and fig.data[2].text[0].endswith("*")  # q over the page's 6 tests
    assert fig.data[2].customdata[0][3] > 0  # the detectable difference, in the hover
    dist = distribution_figure(res, "medqa", "letter")
    assert [t.name for t in dist.data] == ["gold answers", "Base", "SFT"] and list(dist.data[2].y) == [40, 0]
    acc = accuracy_figure(res, view="letter")
    assert not any("seed paper" in t.name for t in acc.data)  # the paper's bars are off by default
    fav = next(t for t in acc.data if t.name == "always SFT's favourite answer")
    assert fav.y[0] == pytest.approx(50.0) and fav.customdata[0] == "A" and fav.offsetgroup == "sft"
    acc = accuracy_figure(res, show_paper=True, view="text_norm")
    assert next(t for t in acc.data if t.name == "SFT (this run)").y[0] == pytest.approx(75.0)
    paper = [t for t in acc.data if "seed paper" in t.name]
    assert paper and all("other model, items, prompt, parser" in t.name for t in paper)
    assert "DeepSeek-R1-Distill-Qwen-1.5B" in paper[0].hovertemplate and "parser" in acc.layout.annotations[0].text
    md = views_markdown(res)
    assert "What this shows" in md and "**SFT vs Base**" in md and "option text per character (acc_norm)" in md


def test_merge_cli_takes_chosen_variants_of_a_file(tmp_path):
    import json

    from eval.run import main

    half = _mostly_right(20)
    loglik = {**_results({"base": {"letter": half}, "sft": {"letter": half}}, views=["letter"]),
              "model": {"display_name": "tiny"}}
    old_cot = {**_results({"base": {"cot": half}, "sft": {"cot": ["A"] * 40}}, mode="cot", views=["cot"]),
               "model": {"display_name": "tiny"}}
    old_cot["variants"]["sft"]["adapter"] = "/an/older/adapter"  # another adapter: must not replace the new sft
    (tmp_path / "l.json").write_text(json.dumps(loglik))
    (tmp_path / "c.json").write_text(json.dumps(old_cot))
    assert main(["merge", str(tmp_path / "l.json"), f"{tmp_path / 'c.json'}:base", "--out", str(tmp_path / "m.json")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["views"] == ["letter", "cot"] and merged["variants"]["sft"].get("adapter") is None
    assert "cot" in merged["variants"]["base"]["predictions"]["medqa"][0]["views"]
    assert "cot" not in merged["variants"]["sft"]["predictions"]["medqa"][0]["views"]
    with pytest.raises(SystemExit):
        main(["merge", f"{tmp_path / 'c.json'}:nope", "--out", str(tmp_path / "x.json")])
