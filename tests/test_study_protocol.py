"""``--protocol study`` (eval.study) against the original study's own code: its notebooks' prompt, parser and
item-selection cells (notebooks/evaluation_sft_model.ipynb of github.com/MilyaushaShamsutdinova/MedAdapt-LLM; the
four eval notebooks share them), run verbatim on the Hub-dataset fixtures through the same ``datasets`` calls, gave
the prompts, ground truths and parsed answers recorded in ``fixtures/study/notebooks.json``; the project's port must
give the same prompts, ground truths, items in the same order and the same parsed answers. Then the protocol end to
end on the tiny R1 model, and the project's protocol on the same items next to it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
HUB = FIXTURES / "hub"
NOTEBOOKS = json.loads((FIXTURES / "study" / "notebooks.json").read_text())


def notebook_samples(num_samples: int, num_samples_subset: int) -> dict[str, dict[str, list]]:
    """What the notebooks' dataset cells selected with ``NUM_SAMPLES``/``NUM_SAMPLES_SUBSET`` made small:
    ``{benchmark: {"prompts": [...], "truths": [...]}}`` in the notebooks' order."""
    return NOTEBOOKS["items"][f"{num_samples}x{num_samples_subset}"]


# ---------------------------------------------------------------- the port against the reference

@pytest.fixture
def hub_fixtures(monkeypatch):
    monkeypatch.setenv("MEDADAPT_HUB_DATASETS_DIR", str(HUB))


@pytest.mark.parametrize("n,per_entry", [(3, 2), (4, 1)])
def test_items_prompts_and_truths_are_the_notebooks(hub_fixtures, n, per_entry):
    from eval.study import study_items

    ref = notebook_samples(n, per_entry)
    got = study_items(["medmcqa", "medqa", "mmlu_medical", "pubmedqa"], n=n, mmlu_per_entry=per_entry)
    assert set(ref) == set(got)
    for name, want in ref.items():
        assert [s.prompt for s in got[name]] == want["prompts"], name
        assert [s.truth for s in got[name]] == want["truths"], name
    assert got["pubmedqa"][0].truth in ("yes", "no", "maybe")
    assert all(s.item.options["A"] in s.prompt for rows in got.values() for s in rows if s.item.benchmark != "pubmedqa")


def test_mmlu_lists_professional_medicine_twice_and_keeps_both_copies(hub_fixtures):
    from eval.study import study_items

    rows = study_items(["mmlu_medical"], n=14, mmlu_per_entry=2)["mmlu_medical"]  # 7 entries x 2 fixture rows
    ids = [s.item.id for s in rows]
    assert len(ids) == len(set(ids)) == 14
    twice = sorted(i for i in ids if i.endswith("#2"))
    assert twice == ["professional_medicine-0#2", "professional_medicine-1#2"]
    assert {s.item.subject for s in rows} == {"anatomy", "clinical_knowledge", "professional_medicine",
                                              "college_biology", "college_medicine", "medical_genetics"}


def test_sampling_more_rows_than_a_dataset_has_says_so(hub_fixtures):
    from eval.study import StudyDataError, study_items

    with pytest.raises(StudyDataError, match="samples 50 rows but the dataset has 4"):
        study_items(["medmcqa"], n=50)


def test_parsers_read_every_text_as_the_notebooks_do():
    from eval import study

    assert len(NOTEBOOKS["parsers"]) > 200
    for text, letter, word in NOTEBOOKS["parsers"]:
        assert study.extract_choice_mcq(text)[0] == letter, text
        assert study.extract_yes_no_maybe(text)[0] == word, text
    # the notebooks' quirks, kept: "Answer: C" is not "answer is", so the first standalone letter wins
    assert study.extract_choice_mcq("A 45-year-old man... Answer: C") == ("A", "first_letter")
    assert study.extract_choice_mcq("<think>the answer is a bit</think>") == ("A", "answer_is")


# ---------------------------------------------------------------- end to end on the tiny R1 model

@pytest.fixture
def study_env(tmp_path, monkeypatch, tiny_r1_model_dir, hub_fixtures):
    """Env for the CLI's own load_config: the reference profile on the tiny R1 model, temp dirs, Hub fixtures."""
    for var, val in {"MEDADAPT_MODEL": tiny_r1_model_dir, "MEDADAPT_RUNS_DIR": str(tmp_path / "runs"),
                     "MEDADAPT_RESULTS_DIR": str(tmp_path / "results"),
                     "MEDADAPT_INDEX_DIR": str(tmp_path / "index")}.items():
        monkeypatch.setenv(var, val)
    return tmp_path


def test_study_run_then_the_project_protocol_on_the_same_items(study_env, monkeypatch):
    """``--protocol study`` poses the notebooks' raw prompts (BOS, no template) with their decoding, reads both
    parsers; ``--mode cot --ids`` runs the project's protocol on the same items; merged, the views sit side by side."""
    import eval.evaluate as ev
    from eval import study
    from eval.report import summary_table
    from eval.run import main
    from eval.views import decoding_note, protocol_label

    seen: list = []
    real = ev.eval_engine

    def spy(cfg, kind="local"):
        engine = real(cfg, kind)
        start = engine.start

        def record(requests, settings):
            seen.append(([p for p, _ in requests], settings))
            return start(requests, settings)
        engine.start = record
        return engine
    monkeypatch.setattr(ev, "eval_engine", spy)
    tmp_path = study_env
    study_out, project_out, both_out = (tmp_path / f"{k}.json" for k in ("study", "project", "both"))
    args = ["run", "--variants", "base", "--benchmarks", "medqa,pubmedqa", "--n", "2", "--max_new_tokens", "6",
            "--profile", "reference", "--dtype", "float32", "--batch_size", "4"]
    assert main(args + ["--protocol", "study", "--out", str(study_out)]) == 0
    res = json.loads(study_out.read_text())
    assert res["protocol"] == "study" and res["views"] == ["study", "study_project_parser"]
    assert (res["config"]["eval"]["temperature"], res["config"]["eval"]["seed"]) == (0.01, 4242)
    assert res["config"]["study"]["n"] == 2 and res["tasks"]["medqa"].startswith("MedQA-USMLE validation")
    prompts, settings = seen[0]
    assert prompts == notebook_samples(2, 1)["medqa"]["prompts"]  # the notebook's raw prompts, in its order
    assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0.01, 1.0, 6)
    for rows, name in ((res["variants"]["base"]["predictions"][b], b) for b in ("medqa", "pubmedqa")):
        for row in rows:
            want = (study.extract_choice_mcq if name == "medqa" else study.extract_yes_no_maybe)(row["raw"])[0]
            view = row["views"]["study"]
            got = view["pred"] if name == "medqa" else {"A": "yes", "B": "no", "C": "maybe"}.get(view["pred"])
            assert got == want and set(row["views"]) == {"study", "study_project_parser"}

    seen.clear()
    assert main(args + ["--mode", "cot", "--ids", str(study_out), "--out", str(project_out)]) == 0
    project = json.loads(project_out.read_text())
    assert project["protocol"] == "project" and project["item_ids"] == res["item_ids"]
    assert isinstance(seen[0][0][0], list)  # chat messages: the project's prompt through the template
    assert main(["merge", str(study_out), str(project_out), "--out", str(both_out)]) == 0
    both = json.loads(both_out.read_text())
    assert both["views"] == ["cot", "study", "study_project_parser"]
    row = both["variants"]["base"]["predictions"]["medqa"][0]
    assert set(row["views"]) == {"cot", "study", "study_project_parser"}
    assert protocol_label(both) == "study protocol (the original notebooks) + project protocol"
    assert decoding_note(both, "study_project_parser").startswith("raw prompt, no chat template, temperature 0.01")
    for view in both["views"]:
        header, table = summary_table(both, view)
        assert table and header


def test_study_refuses_what_it_did_not_do(study_env, capsys):
    from eval.run import main

    assert main(["run", "--protocol", "study", "--mode", "loglik", "--profile", "reference"]) == 2
    assert main(["run", "--protocol", "study", "--think_budget", "64", "--profile", "reference"]) == 2
    assert "mode cot" in capsys.readouterr().err


def test_study_rag_asks_with_the_whole_prompt_for_two_snippets(study_env, monkeypatch):
    """The study's RAG: the whole benchmark prompt is the query, top-k 2, the documents around the prompt."""
    import eval.evaluate as ev
    from eval.run import main
    from eval.study import rag_prompt
    from medadapt.retrieval.rag import Snippet

    asked, sent = [], []

    def retrieve(cfg, samples, k, query=None, mode=None):
        out = {}
        for name, items in samples.items():
            for it in items:
                asked.append((query(name, it), k, mode))
            out[name] = {it.id: [Snippet(f"s{i}", f"Book {i}", "Book", f"fact {i}", 0.5) for i in range(k)]
                         for it in items}
        return out

    real = ev.eval_engine

    def spy(cfg, kind="local"):
        engine = real(cfg, kind)
        start = engine.start
        engine.start = lambda requests, settings: (sent.extend(p for p, _ in requests), start(requests, settings))[1]
        return engine
    monkeypatch.setattr(ev, "retrieve_all", retrieve)
    monkeypatch.setattr(ev, "eval_engine", spy)
    out = study_env / "rag.json"
    assert main(["run", "--protocol", "study", "--variants", "rag", "--benchmarks", "pubmedqa", "--n", "2",
                 "--max_new_tokens", "4", "--profile", "reference", "--dtype", "float32", "--out", str(out)]) == 0
    prompts = notebook_samples(2, 1)["pubmedqa"]["prompts"]
    assert asked == [(p, 2, "dense") for p in prompts]
    assert sent == [rag_prompt(p, ["Book 0. fact 0", "Book 1. fact 1"]) for p in prompts]
    assert json.loads(out.read_text())["retrieval"]["k"] == 2
