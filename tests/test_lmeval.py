"""lm-evaluation-harness beside the project's scorer: the same prompts, log-likelihoods and predictions (fp32, tiny
model, 20 items per benchmark); ``--backend lm-eval`` end to end with a PEFT adapter; acc_norm per character and the
re-scoring of a stored results file; the loglik path's torch threads."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from medadapt.data.benchmarks import BenchItem, evaluated_items  # noqa: E402,I001
from tests.conftest import DATA_DIR  # noqa: E402

N_AGREE = 20


@pytest.fixture(scope="module")
def agreement(tiny_model_dir):
    """Per benchmark: items, lm-eval's logged samples (by item id), the project's scores on the plain prompts."""
    from lm_eval.tasks import TaskManager

    from medadapt.config import load_config
    from eval.lmeval import make_lm, run_tasks, task_specs
    from eval.loglik import encode_multi, score_multi
    from eval.prompting import continuations, plain_prompt
    from eval.variants import Variant, load_for_variants

    cfg = load_config("offline", {"model": {"name_or_path": tiny_model_dir, "dtype": "float32"},
                                  "paths": {"data_dir": str(DATA_DIR)}})
    samples = evaluated_items(cfg, n=N_AGREE)
    manager = TaskManager()
    lm, kind = make_lm(cfg, None, 8)
    assert kind == "hf"
    model, tok = load_for_variants(cfg, [Variant("base")])
    out = {}
    for bench, items in samples.items():
        specs = task_specs(items, manager)
        logged = run_tasks(lm, specs, manager, cfg.eval.seed)
        by_id = {s["doc"]["_medadapt_id"]: s for task in specs for s in logged[task]}
        reqs = [encode_multi(tok, plain_prompt(it), {t: continuations(it, t, "plain") for t in ("letter", "text")},
                             True, cfg.model.max_context) for it in items]
        out[bench] = (items, by_id, score_multi(model, reqs, 8, tok.pad_token_id))
    return out


def test_plain_prompts_are_lm_evals_default_prompts(agreement):
    from eval.prompting import continuations, plain_prompt

    assert set(agreement) == {"medmcqa", "medqa", "mmlu_medical", "pubmedqa"}
    for bench, (items, by_id, _) in agreement.items():
        assert len(items) == N_AGREE
        for it in items:
            args = by_id[it.id]["arguments"]
            assert {a[0] for a in args} == {plain_prompt(it)}, bench
            assert [a[1] for a in args] == continuations(it, "letter", "plain")
    pub = agreement["pubmedqa"][0][0]
    assert continuations(pub, "letter", "plain") == [" yes", " no", " maybe"]
    assert "\nA. " not in plain_prompt(pub) and plain_prompt(pub).startswith("Abstract: ")
    mmlu = agreement["mmlu_medical"][0][0]
    assert plain_prompt(mmlu).startswith(
        f"The following are multiple choice questions (with answers) about {mmlu.subject.replace('_', ' ')}.\n\n")


def test_project_scorer_agrees_with_lm_eval_within_1e_4(agreement):
    from eval.lmeval import sample_row
    from eval.views import text_norm_view

    worst = 0.0
    for bench, (items, by_id, scores) in agreement.items():
        for it, sc in zip(items, scores):
            sample = by_id[it.id]
            lls = [float(r[0]) for r in sample["filtered_resps"]]
            worst = max(worst, *(abs(a - b) for a, b in zip(lls, sc["letter"])))
            row = sample_row(it, sample)
            letters = list(it.options)
            mine = letters[max(range(len(lls)), key=lambda i: (sc["letter"][i], -i))]
            assert mine == row["views"]["letter"]["pred"], (bench, it.id, lls, sc["letter"])
            assert row["views"]["letter"]["correct"] == (mine == it.answer)
            if bench == "pubmedqa":  # lm-eval's acc_norm over yes/no/maybe = the project's text_norm view
                assert text_norm_view(sc["text"], it.options, it.answer) == row["views"]["text_norm"]
                assert row["views"]["text_norm"]["correct"] == bool(sample["acc_norm"])
    assert worst <= 1e-4, worst


def test_cli_lm_eval_backend_writes_results_the_benchmarks_tab_reads(tmp_path, monkeypatch, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from eval.report import summary_table
    from eval.run import main
    from medadapt.models import load_model
    from eval.results_files import list_results

    for var, val in {"MEDADAPT_MODEL": tiny_model_dir, "MEDADAPT_RUNS_DIR": str(tmp_path / "runs"),
                     "MEDADAPT_RESULTS_DIR": str(tmp_path / "results"), "MEDADAPT_DATA_DIR": str(DATA_DIR)}.items():
        monkeypatch.setenv(var, val)
    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(load_model(tiny_model_dir, device="cpu"), lora).save_pretrained(adapter)
    out = tmp_path / "results" / "offline" / "lmeval-test.json"
    argv = ["run", "--backend", "lm-eval", "--variants", f"base,rag,mine={adapter}", "--n", "2", "--benchmarks",
            "medqa,pubmedqa", "--profile", "offline", "--out", str(out), "--threads", "1"]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    v = res["variants"]
    assert res["backend"] == "lm-eval" and res["lm_eval"]["model"] == "hf" and res["views"] == ["letter", "text_norm"]
    assert res["lm_eval"]["tasks"] == {"medqa": ["medqa_4options"], "pubmedqa": ["pubmedqa"]}
    assert v["base@lm-eval"]["status"] == v["mine@lm-eval"]["status"] == "ok"
    assert v["rag@lm-eval"]["status"] == "skipped"
    lp = lambda name: [r["logprobs"] for r in v[name]["predictions"]["medqa"]]  # noqa: E731
    assert lp("base@lm-eval") != lp("mine@lm-eval")  # the PEFT adapter was applied
    assert res["item_ids"]["medqa"] == [it.id for it in evaluated_items(_env_cfg(), ["medqa"], n=2)["medqa"]]
    pub = v["base@lm-eval"]["predictions"]["pubmedqa"][0]
    assert set(pub["views"]) == {"letter", "text_norm"} and len(pub["logprobs"]["text"]) == 3
    _, rows = summary_table(res)
    assert [r[0] for r in rows][:2] == ["base@lm-eval", "mine@lm-eval"]
    assert any("lmeval-test.json" in label for label, _ in list_results(tmp_path / "results"))


def _env_cfg():
    from medadapt.config import load_config

    return load_config("offline")


# ---------------------------------------------------------------- acc_norm, re-scoring, threads (no model)

def test_text_norm_divides_by_characters_not_utf8_bytes():
    from eval.views import text_norm_view

    options = {"A": "yes", "B": "no", "C": "maybe"}
    # per character: -9/3, -2/2, -4.6/5 = -3, -1, -0.92 → C; per UTF-8 byte of " "+text: -2.25, -0.67, -0.77 → B
    assert text_norm_view([-9.0, -2.0, -4.6], options, "C") == {"pred": "C", "correct": True, "invalid": False}
    # one character each (é is 2 bytes): -1 vs -0.9 → B; per byte of " é" / " e": -0.33 vs -0.45 → A
    assert text_norm_view([-1.0, -0.9], {"A": "é", "B": "e"}, "A")["pred"] == "B"


def _stored_file() -> dict:
    items = {"pubmedqa": [{"id": "1", "question": "q", "options": {"A": "yes", "B": "no", "C": "maybe"},
                           "answer": "C", "subject": ""}]}
    row = {"id": "1", "pred": "A", "correct": False, "invalid": False,
           "views": {"letter": {"pred": "A", "correct": False, "invalid": False},
                     "text_norm": {"pred": "B", "correct": False, "invalid": False},
                     "cot": {"pred": "C", "correct": True, "invalid": False, "filter": "x", "raw": "r"}},
           "logprobs": {"letter": [-0.5, -1.0, -2.0], "text": [-9.0, -2.0, -4.6]}}
    return {"mode": "loglik", "views": ["letter", "letter_cal", "text_norm", "cot"], "items": items,
            "item_ids": {"pubmedqa": ["1"]},
            "variants": {"base": {"status": "ok", "predictions": {"pubmedqa": [row]}}}}


def test_rescore_cli_rewrites_text_norm_from_stored_logprobs(tmp_path, capsys):
    from eval.run import main

    src = tmp_path / "old.json"
    src.write_text(json.dumps(_stored_file()))
    assert main(["rescore", str(src), "--out", str(tmp_path / "new.json")]) == 0
    assert "1 predictions changed" in capsys.readouterr().out
    new = json.loads((tmp_path / "new.json").read_text())
    row = new["variants"]["base"]["predictions"]["pubmedqa"][0]
    assert row["views"]["text_norm"] == {"pred": "C", "correct": True, "invalid": False}
    assert row["views"]["letter"]["pred"] == row["pred"] == "A" and row["views"]["cot"]["raw"] == "r"
    assert new["text_norm_unit"] == "chars"
    assert new["summary_by_view"]["text_norm"]["base"]["pubmedqa"]["acc"] == 1.0
    assert json.loads(src.read_text()) == _stored_file()  # --out leaves the source alone
    assert row["views"]["text_sum"]["pred"] == "B"  # the summed log-likelihood (lm-eval's acc): no length division
    assert "letter_batch_cal" in row["views"] and "text_sum" in new["views"] and "circular" not in new["views"]
    batch = new["variants"]["base"]["calibration"]["pubmedqa"]["batch_prior"]  # the rows' mean letter distribution
    assert batch[0] > batch[1] > batch[2] and sum(batch) == pytest.approx(1.0, abs=1e-3)


def test_loglik_path_uses_model_num_threads(cfg, monkeypatch):
    import torch

    from eval import evaluate as ev
    from eval.variants import Variant

    item = BenchItem("medqa", "x", "q?", {"A": "a", "B": "b", "C": "c", "D": "d"}, "A")
    seen = {}

    def fake_load(cfg_, todo):
        seen["threads"] = torch.get_num_threads()
        raise RuntimeError("stop here")

    monkeypatch.setattr(ev, "load_for_variants", fake_load)
    before = torch.get_num_threads()
    cfg.model.num_threads = 1
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="stop here"):
            ev.evaluate(cfg, [Variant("base")], {"medqa": [item]}, "loglik")
        assert seen["threads"] == 1
    finally:
        torch.set_num_threads(before)
