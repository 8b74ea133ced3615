"""Benchmarks tab: pure figure builders on a fixture results dict, the file picker, and the tab wiring."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from eval.report import ALL, paired_tests, summarize


def _pred(item, pred, raw=""):
    return {"id": item["id"], "views": {"cot": {"pred": pred, "correct": pred == item["answer"], "invalid": pred is None,
                                               "filter": "strict" if pred else "invalid", "raw": raw or f"Answer: {pred}"}}}


@pytest.fixture
def results() -> dict:
    subjects = ["anatomy", "medical_genetics"]
    mmlu = [{"id": f"m{i}", "question": f"Q{i}?", "options": dict(zip("ABCD", "wxyz")), "answer": "ABCD"[i % 4],
             "subject": subjects[i % 2]} for i in range(8)]
    pqa = [{"id": f"p{i}", "question": f"P{i}?", "options": {"A": "yes", "B": "no", "C": "maybe"},
            "answer": "A" if i < 4 else "B", "subject": ""} for i in range(6)]
    items = {"mmlu_medical": mmlu, "pubmedqa": pqa}
    base = {"mmlu_medical": [_pred(it, it["answer"] if i < 4 else "A") for i, it in enumerate(mmlu)],
            "pubmedqa": [_pred(it, "A") for it in pqa]}
    sft = {"mmlu_medical": [_pred(it, it["answer"] if i % 2 else None) for i, it in enumerate(mmlu)],
           "pubmedqa": [_pred(it, it["answer"], raw="<think>hmm</think>Answer: " + it["answer"]) for it in pqa]}
    return {"schema": 1, "created": "2026-11-25T16:00:00+00:00", "mode": "cot", "profile": "offline",
            "model": {"display_name": "tiny"}, "items": items,
            "item_ids": {b: [it["id"] for it in v] for b, v in items.items()},
            "variants": {"base": {"status": "ok", "predictions": base, "timing": {"wall_s": 3.5, "items_per_s": 4.0}},
                         "sft": {"status": "ok", "predictions": sft, "timing": {"wall_s": 5.0, "items_per_s": 2.8}},
                         "msft": {"status": "skipped", "reason": "no adapter", "predictions": {}, "timing": {}}}}


def test_summary_and_tests_from_fixture(results):
    s = summarize(results)
    assert s["base"]["mmlu_medical"]["acc"] == pytest.approx(5 / 8)  # 4 right + item 4 (answer A) answered A
    assert s["sft"]["mmlu_medical"]["invalid"] == 4 and s["sft"]["pubmedqa"]["acc"] == 1.0
    assert s["base"][ALL]["n"] == 14 and "msft" not in s
    pooled = [t for t in paired_tests(results) if t["benchmark"] == ALL][0]
    assert (pooled["a"], pooled["b"], pooled["n"]) == ("base", "sft", 14)


def test_accuracy_figure(results):
    from medadapt.charts.results import accuracy_figure

    fig = accuracy_figure(results, show_paper=True)
    names = [t.name for t in fig.data]
    assert "Base (this run)" in names and "SFT (this run)" in names
    assert sum("paper" in n for n in names) == 4 and "chance" in names and "majority class" in names
    base = next(t for t in fig.data if t.name == "Base (this run)")
    assert list(base.x) == ["MMLU-med", "PubMedQA", "Average"]
    assert base.y[0] == pytest.approx(62.5) and base.error_y.array[0] > 0
    chance = next(t for t in fig.data if t.name == "chance")
    assert [y for y in chance.y if y is not None][:4] == pytest.approx([25, 25, 100 / 3, 100 / 3])
    assert sum("paper" in t.name for t in accuracy_figure(results, show_paper=False).data) == 0
    assert len(accuracy_figure(None).data) == 0


def test_significance_subject_and_drilldown(results):
    from medadapt.charts.results import significance_figure, subject_figure
    from medadapt.ui.benchmarks_view import drilldown_html, item_choices

    heat = significance_figure(results, ALL).data[0]
    assert heat.z[0][1] == heat.z[1][0] <= 1.0 and heat.text[0][0] == "—"
    sub = subject_figure(results, "mmlu_medical")
    assert len(sub.data) == 2 and any("anatomy" in y for y in sub.data[0].y)
    html = drilldown_html(results, "pubmedqa", "p0")
    assert "P0?" in html and "&lt;think&gt;hmm&lt;/think&gt;Answer: A" in html and "Correct answer: <b>A</b>" in html
    assert "no item" in drilldown_html(results, "pubmedqa", "zzz")
    assert [v for _, v in item_choices(results, "pubmedqa")][:2] == ["p0", "p1"]


def test_list_results_and_eval_args(tmp_path, results):
    from eval.results_files import list_results
    from medadapt.ui.benchmarks_view import eval_args

    (tmp_path / "offline").mkdir()
    (tmp_path / "offline" / "cot-1.json").write_text(json.dumps(results))
    (tmp_path / "offline" / "notes.json").write_text("[1, 2]")
    found = list_results(tmp_path)
    assert len(found) == 1 and "cot" in found[0][0] and "base, sft" in found[0][0]
    fewer = json.loads(json.dumps(results))
    fewer["variants"] = {k: v for k, v in list(fewer["variants"].items())[:1]}
    (tmp_path / "offline" / "newer-but-fewer.json").write_text(json.dumps(fewer))
    assert [label.split(" ")[0] for label, _ in list_results(tmp_path)] == ["offline/cot-1.json",
                                                                            "offline/newer-but-fewer.json"]
    assert eval_args(["base", "sft"], "loglik", 50, ["medqa"]) == [
        "--variants", "base,sft", "--mode", "loglik", "--n", "50", "--benchmarks", "medqa"]
    with pytest.raises(ValueError):
        eval_args([], "loglik", 50, ["medqa"])


def test_the_tab_says_which_protocol_a_result_used(tmp_path, results):
    """A study-protocol run (``--protocol study``) is labelled so in the file list and the views' description."""
    from eval.results_files import list_results
    from medadapt.ui.benchmarks_view import views_markdown

    study = json.loads(json.dumps(results))
    study.update(protocol="study", views=["study", "study_project_parser"])
    for entry in study["variants"].values():
        for rows in entry["predictions"].values():
            for r in rows:
                view = {k: r["views"]["cot"][k] for k in ("pred", "correct", "invalid")}
                r["views"] = {"study": view, "study_project_parser": view}
    (tmp_path / "offline").mkdir()
    (tmp_path / "offline" / "cot-1.json").write_text(json.dumps(results))
    (tmp_path / "offline" / "study-1.json").write_text(json.dumps(study))
    labels = dict((path, label) for label, path in list_results(tmp_path))
    assert "· study protocol (the original notebooks) ·" in labels["offline/study-1.json"]
    assert "· project protocol ·" in labels["offline/cot-1.json"]
    assert views_markdown(study).startswith("**Protocol**: study protocol (the original notebooks)")
    assert "**study protocol**" in views_markdown(study)


def test_results_files_are_read_inside_the_results_dir_only(tmp_path, results):
    from eval.results_files import list_results, read_results

    (tmp_path / "res" / "offline").mkdir(parents=True)
    (tmp_path / "res" / "offline" / "cot-1.json").write_text(json.dumps(results))
    (tmp_path / "secret.json").write_text(json.dumps(results))
    (_, value), = list_results(tmp_path / "res")
    assert value == "offline/cot-1.json" and read_results(value, tmp_path / "res")["mode"] == "cot"
    assert read_results("../secret.json", tmp_path / "res") is None
    assert read_results(str(tmp_path / "secret.json"), tmp_path / "res") is None


def test_controller_shows_a_file_and_runs_a_job_without_the_page(tmp_path, results):
    """The tab's handlers are the controller's methods: called here without building the page."""
    from medadapt.config import load_config
    from medadapt.ui.benchmarks_controller import BenchmarksController

    cfg = load_config("offline", {"paths": {"results_dir": str(tmp_path)}})
    (tmp_path / "offline").mkdir()
    (tmp_path / "offline" / "cot-1.json").write_text(json.dumps(results))
    started = []

    class Jobs:
        def start_eval(self, args):
            started.append(args)
            return tmp_path / "eval-1"

        def poll(self, run_dir):
            return SimpleNamespace(status="running", run_dir=Path(run_dir), step=3, total_steps=6, eta_s=10.0, error="")

    ctl = BenchmarksController(SimpleNamespace(cfg=cfg, jobs=Jobs(), extras={}))
    [(_, name)] = ctl.files()
    assert name == "offline/cot-1.json" and ctl.load("../outside.json") is None
    outs = ctl.on_file(name, True)
    assert len(outs) == 15 and len(outs[0].data) > 0 and outs[9]["value"] == "cot"
    chart, table, sig, subjects, dist = ctl.on_view(name, "no-such-view", False, ALL, "mmlu_medical", "pubmedqa")
    assert table["headers"][0] == "variant" and len(subjects.data) == 2 and len(dist.data) == 3
    assert sum("paper" in t.name for t in ctl.on_paper(name, True, "cot").data) == 4
    assert [v for v in ctl.on_items(name, "pubmedqa")["choices"]][0][1] == "p0"
    assert "P0?" in ctl.on_item(name, "pubmedqa", "p0") and ctl.on_provenance(name) == ""
    msg, run = ctl.on_run(["base", "rag"], "cot", 20, ["pubmedqa"])
    assert "Started" in msg and started[0][:2] == ["--variants", "base,rag"]
    assert str(tmp_path) not in msg and "eval-1" in msg and run == "eval-1"  # no absolute server path on the page
    assert "3/6" in ctl.on_poll(run)  # the page that started it (its session's state holds the run's name) ...
    assert ctl.on_poll("") == ctl.on_poll("eval-9") == "No evaluation job started from this page."  # ... no other
    assert "pick at least one variant" in ctl.on_run([], "cot", 20, ["pubmedqa"])[0] and len(started) == 1


def test_tab_builds_on_its_controller(tmp_path, results):
    import gradio as gr

    from medadapt.config import load_config
    from medadapt.ui.benchmarks import build_benchmarks_tab

    cfg = load_config("offline", {"paths": {"results_dir": str(tmp_path)}})
    (tmp_path / "offline").mkdir()
    (tmp_path / "offline" / "cot-1.json").write_text(json.dumps(results))
    with gr.Blocks():
        c = build_benchmarks_tab(SimpleNamespace(cfg=cfg, extras={}))
    assert {"chart", "table", "sig", "subjects", "dd_item", "run", "file", "controller"} <= set(c)
    assert c["file"].value == "offline/cot-1.json" and c["view"].value == "cot"


def test_public_mode_locks_eval_launch_unless_admin_secret(tmp_path, monkeypatch):
    import gradio as gr

    from medadapt.config import load_config
    from medadapt.ui import common
    from medadapt.ui.benchmarks_controller import BenchmarksController

    monkeypatch.setenv("MEDADAPT_PUBLIC", "1")
    monkeypatch.delenv("MEDADAPT_ADMIN_PASSWORD", raising=False)
    monkeypatch.setattr(common, "ADMIN_THROTTLE", common.SecretThrottle(base=0.0))  # the lock itself, not the wait
    cfg = load_config("offline", {"paths": {"results_dir": str(tmp_path)}})
    started = []
    jobs = SimpleNamespace(start_eval=lambda args: started.append(args) or tmp_path / "eval-1")
    run = BenchmarksController(SimpleNamespace(cfg=cfg, jobs=jobs, extras={})).on_run
    assert "locked" in run(["base"], "loglik", 5, ["medqa"], "anything")[0] and not started  # no password
    monkeypatch.setenv("MEDADAPT_ADMIN_PASSWORD", "s3cret")
    assert "locked" in run(["base"], "loglik", 5, ["medqa"], "wrong")[0] and not started
    assert "Started" in run(["base"], "loglik", 5, ["medqa"], "s3cret")[0] and len(started) == 1


def test_shipped_offline_results_render_with_all_four_variants():
    """The committed real results are what the tab shows out of the box: four variants in every file, one file with
    all four scoring views (the decomposition has something to show), and letter scoring at n=200 for all four."""
    from medadapt.config import REPO_ROOT
    from eval.results_files import list_results, read_results
    from medadapt.charts.results import accuracy_figure, decomposition_figure
    from eval.report import summary_table
    from eval.views import views_of

    files = list_results(REPO_ROOT / "results")
    full_views, n200 = False, False
    for _label, path in files:
        res = read_results(path, REPO_ROOT / "results")
        header, rows = summary_table(res)
        assert {"Base", "RAG", "SFT", "MSFT"} <= {r[0].split(" ⚠")[0] for r in rows}, path
        assert all(summarize(res)[v][ALL]["n"] >= 200 for v in ("base", "rag", "sft", "msft")), path
        assert len(accuracy_figure(res).data) >= 4
        full_views |= {"letter", "letter_cal", "text_norm", "cot"} <= set(views_of(res))
        n200 |= all(summarize(res)[v][ALL]["n"] >= 800 for v in ("base", "rag", "sft", "msft"))
    assert full_views and n200
    first = read_results(files[0][1], REPO_ROOT / "results")  # the tab opens on the file with the most views
    assert len(decomposition_figure(first).data) == len(views_of(first)) >= 5 and "cot_budget" in views_of(first)

def test_drilldown_escapes_every_value_from_a_results_file(results):
    """A crafted results file (option keys, answer, id, subject, snippets) cannot put markup into the page."""
    from medadapt.ui.benchmarks_view import drilldown_html

    evil = "<img src=x onerror=alert(1)>"
    item = results["items"]["pubmedqa"][0]
    item["options"] = {evil: "yes", "B": evil}
    item["answer"], item["subject"] = evil, evil
    results["variants"]["sft"]["predictions"]["pubmedqa"][0]["filter"] = evil
    results["retrieval"] = {"snippets": {"pubmedqa": {"p0": [{"title": evil, "id": evil}]}}}
    html = drilldown_html(results, "pubmedqa", "p0")
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
