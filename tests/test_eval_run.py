"""Log-likelihood scoring on a tiny model with a planted answer, and `python -m eval` end to end (loglik and cot)."""
from __future__ import annotations

import json

import pytest

from medadapt.data.benchmarks import evaluated_items
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from medadapt.models import load_model, load_tokenizer

    return load_model(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir)


def _plant(model, token_id: int, bias: float = 30.0):
    """Give the LM head a bias that makes ``token_id`` overwhelmingly likely everywhere."""
    import torch

    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[token_id] = bias
    model.lm_head = biased
    return head


def _requests(cfg, tok, target: str, n: int = 3):
    from eval.loglik import encode
    from eval.prompting import continuations, loglik_prompt

    render = lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    items = [it for v in evaluated_items(cfg, ["medqa", "pubmedqa"], n=n).values() for it in v]
    return items, [encode(tok, loglik_prompt(it, "chat", render), continuations(it, target), False, 2048) for it in items]


def test_loglik_picks_planted_letter_and_text(cfg, tiny):
    from eval.loglik import score_requests
    from eval.scoring import choose

    model, tok = tiny
    items, reqs = _requests(cfg, tok, "letter")
    assert all(len(c) == 1 for r in reqs for c in r.continuations)
    original = _plant(model, tok(" C", add_special_tokens=False).input_ids[-1])
    try:
        scores = score_requests(model, reqs, batch_size=4, pad_id=tok.pad_token_id)
        assert [list(it.options)[choose(s)] for it, s in zip(items, scores)] == ["C"] * len(items)
        pubmed = [it for it in items if it.benchmark == "pubmedqa"]
        _plant_text = tok(" maybe", add_special_tokens=False).input_ids
        model.lm_head = original
        _plant(model, _plant_text[0])
        _, treqs = _requests(cfg, tok, "text")
        tscores = score_requests(model, treqs[-len(pubmed):], batch_size=2, pad_id=tok.pad_token_id)
        assert [choose(s) for s in tscores] == [2] * len(pubmed)  # " maybe" is option C
    finally:
        model.lm_head = original


def test_batched_equals_one_at_a_time_and_unpadded(cfg, tiny):
    import torch

    from eval.loglik import score_requests

    model, tok = tiny
    _, reqs = _requests(cfg, tok, "text", n=2)
    batched = score_requests(model, reqs, batch_size=8, pad_id=tok.pad_token_id)
    single = score_requests(model, reqs, batch_size=1, pad_id=tok.pad_token_id)
    for a, b in zip(batched, single):
        assert a == pytest.approx(b, abs=1e-3)
    r, o = reqs[0], 1  # direct sum of log-probs for one multi-token continuation, no padding
    cont = r.continuations[o]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([r.context + cont])).logits[0].float(), -1)
    direct = sum(lp[len(r.context) - 1 + i, t].item() for i, t in enumerate(cont))
    assert batched[0][o] == pytest.approx(direct, abs=1e-3)


@pytest.fixture
def cli_env(tmp_path, monkeypatch, tiny_model_dir):
    """Env for the CLI's own load_config: tiny model, temp dirs, and a random (non-identity) SFT LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    from medadapt.models import load_model

    for var, val in {"MEDADAPT_MODEL": tiny_model_dir, "MEDADAPT_RUNS_DIR": str(tmp_path / "runs"),
                     "MEDADAPT_RESULTS_DIR": str(tmp_path / "results"), "MEDADAPT_INDEX_DIR": str(tmp_path / "index"),
                     "MEDADAPT_DATA_DIR": str(DATA_DIR)}.items():
        monkeypatch.setenv(var, val)
    adapter = tmp_path / "runs" / "offline" / "sft-20260101-000000" / "adapter"
    peft_model = get_peft_model(load_model(tiny_model_dir, device="cpu"),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(adapter)
    (adapter / "medadapt.json").write_text(json.dumps({"job": "sft", "steps": 1}))
    return tmp_path


def _fake_retrieve(cfg, samples, k):
    from medadapt.retrieval.rag import Snippet

    snip = Snippet("Book_1", "Book", "Book", "Aspirin irreversibly inhibits cyclooxygenase.", 0.9)
    return {name: {it.id: [snip] for it in items} for name, items in samples.items()}


def test_cli_loglik_end_to_end(cli_env, monkeypatch, capsys):
    import eval.evaluate
    from eval.run import main

    monkeypatch.setattr(eval.evaluate, "retrieve_all", _fake_retrieve)
    out, run_dir = cli_env / "res.json", cli_env / "job"
    rc = main(["run", "--variants", "base,rag,sft,msft", "--n", "3", "--benchmarks", "medqa,pubmedqa",
               "--profile", "offline", "--out", str(out), "--output_dir", str(run_dir), "--option_queries", "option",
               "--option_top_k", "1"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["config"]["rag"]["option_queries"] == res["retrieval"]["option_queries"] == "option"
    assert res["retrieval"]["option_top_k"] == 1
    v = res["variants"]
    assert [v[k]["status"] for k in ("base", "rag", "sft", "msft")] == ["ok", "ok", "ok", "skipped"]
    assert "no finished msft adapter" in v["msft"]["reason"]
    assert res["item_ids"]["medqa"] == [it.id for it in evaluated_items_from_env(["medqa"])["medqa"]]
    for name in ("base", "rag", "sft"):
        preds = v[name]["predictions"]
        assert [len(preds[b]) for b in ("medqa", "pubmedqa")] == [3, 3]
        assert v[name]["timing"]["wall_s"] > 0
    # the adapter changes the scores, RAG changes the prompt
    lp = lambda name: [p["logprobs"] for p in v[name]["predictions"]["medqa"]]  # noqa: E731
    assert lp("sft") != lp("base") and lp("rag") != lp("base")
    assert res["retrieval"]["snippets"]["medqa"][res["item_ids"]["medqa"][0]][0]["id"] == "Book_1"
    assert res["summary"]["base"]["average"]["n"] == 6
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished" and status["results"] == str(out)
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == lines[-1]["total_steps"] == 18 and {"eta_s", "variant", "benchmark"} <= set(lines[-1])
    assert "McNemar base vs sft" in capsys.readouterr().out


def evaluated_items_from_env(benchmarks):
    from medadapt.config import load_config

    return evaluated_items(load_config("offline", {"eval": {"n": 3}}), benchmarks)


def test_cli_cot_rag_skipped_without_index_and_merge(cli_env, capsys):
    from eval.run import main
    from medadapt.reasoning import extract_answer

    out = cli_env / "cot.json"
    rc = main(["run", "--variants", "base,rag,sft", "--mode", "cot", "--n", "2", "--benchmarks", "pubmedqa",
               "--max_new_tokens", "6", "--profile", "offline", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["variants"]["rag"]["status"] == "skipped" and "retrieval unavailable" in res["variants"]["rag"]["reason"]
    items = {it["id"]: it for it in res["items"]["pubmedqa"]}
    for name in ("base", "sft"):
        for p in res["variants"][name]["predictions"]["pubmedqa"]:
            assert isinstance(p["raw"], str)
            assert (p["pred"], p["filter"]) == extract_answer(p["raw"], items[p["id"]]["options"])
            assert p["invalid"] == (p["pred"] is None)
    # merge two runs of different variants on the same items
    other = json.loads(out.read_text())
    other["variants"] = {"extra": res["variants"]["base"]}
    (cli_env / "other.json").write_text(json.dumps(other))
    assert main(["merge", str(out), str(cli_env / "other.json"), "--out", str(cli_env / "merged.json")]) == 0
    merged = json.loads((cli_env / "merged.json").read_text())
    assert {"base", "sft", "extra"} <= set(merged["summary"])


def test_cli_cot_decoding_flags_reach_the_engine_and_the_results(cli_env, monkeypatch, capsys):
    """--temperature/--top_p/--repetition_penalty drive the cot decode and are recorded; out of bounds is refused."""
    from eval.run import main
    from medadapt.serve.engine import Engine

    seen, real = [], Engine.start

    def start(self, requests, settings):
        seen.append(settings)
        return real(self, requests, settings)

    monkeypatch.setattr(Engine, "start", start)
    out = cli_env / "cot-sampled.json"
    args = ["run", "--variants", "base", "--mode", "cot", "--n", "1", "--benchmarks", "pubmedqa",
            "--max_new_tokens", "4", "--profile", "offline", "--out", str(out)]
    assert main(args + ["--temperature", "0.7", "--top_p", "0.9", "--repetition_penalty", "1.3"]) == 0
    assert seen and all((s.temperature, s.top_p, s.repetition_penalty) == (0.7, 0.9, 1.3) for s in seen)
    recorded = json.loads(out.read_text())["config"]["eval"]
    assert (recorded["temperature"], recorded["top_p"], recorded["repetition_penalty"]) == (0.7, 0.9, 1.3)
    assert main(args + ["--repetition_penalty", "0.5"]) != 0
    assert "Repetition penalty: must be between 1 and 2" in capsys.readouterr().err
    assert main(args + ["--think_budget", "2"]) == 0  # a thinking budget is its own view of the items
    res = json.loads(out.read_text())
    assert seen[-1].think_budget == 2 and res["config"]["eval"]["think_budget"] == 2 and res["views"] == ["cot_budget"]
    row = res["variants"]["base"]["predictions"]["pubmedqa"][0]
    assert set(row["views"]) == {"cot_budget"} and row["budget_closed"] is False  # SmolLM2's prompt opens no <think>
    assert main(args + ["--think_budget", "-1"]) != 0
    assert "must be between 0 and" in capsys.readouterr().err


def test_merge_unions_items_and_pairs_on_common_ones():
    from eval.report import paired_tests, summarize
    from eval.run import merge_results

    def res(variant, ids, correct, mode="loglik"):
        items = [{"id": i, "question": "q", "options": {"A": "a", "B": "b"}, "answer": "A", "subject": ""} for i in ids]
        view = "cot" if mode == "cot" else "letter"
        preds = [{"id": i, "views": {view: {"pred": "A" if c else "B", "correct": c, "invalid": False}}}
                 for i, c in zip(ids, correct)]
        return {"mode": mode, "views": [view], "created": variant, "item_ids": {"medqa": ids}, "items": {"medqa": items},
                "variants": {variant: {"status": "ok", "predictions": {"medqa": preds}, "timing": {}}}}

    big = res("base", ["q1", "q2", "q3", "q4"], [True, False, True, False])
    small = res("sft", ["q1", "q2"], [False, True])
    merged = merge_results([big, small])
    assert merged["item_ids"]["medqa"] == ["q1", "q2", "q3", "q4"]
    assert summarize(merged)["sft"]["medqa"]["n"] == 2 and summarize(merged)["base"]["medqa"]["n"] == 4
    t = [t for t in paired_tests(merged) if t["benchmark"] == "medqa"][0]
    assert (t["n"], t["only_a"], t["only_b"]) == (2, 1, 1)
    cot = merge_results([big, res("sft", ["q1", "q2"], [False, True], "cot")])  # another mode: its view sits next to the loglik one
    assert cot["views"] == ["letter", "cot"] and summarize(cot, "cot")["sft"]["medqa"]["n"] == 2
    assert "sft" not in summarize(cot, "letter")
    # the same variant run on the rest of the items (--ids) is extended, not replaced
    rest = res("sft", ["q3", "q4"], [True, True])
    rest["variants"]["sft"]["timing"] = {"wall_s": 2.0, "per_benchmark_s": {"medqa": 2.0}}
    merged["variants"]["sft"]["timing"] = {"wall_s": 1.0, "per_benchmark_s": {"medqa": 1.0}}
    full = merge_results([merged, rest])
    assert [r["id"] for r in full["variants"]["sft"]["predictions"]["medqa"]] == ["q1", "q2", "q3", "q4"]
    assert full["summary"]["sft"]["medqa"]["correct"] == 3 and full["variants"]["sft"]["timing"]["wall_s"] == 3.0
    other_adapter = res("sft", ["q3"], [False])
    other_adapter["variants"]["sft"]["adapter"] = "/another/adapter"
    assert len(merge_results([merged, other_adapter])["variants"]["sft"]["predictions"]["medqa"]) == 1  # replaced


@pytest.mark.parametrize("mode", ["loglik", "cot"])
def test_stop_file_stops_the_run(cli_env, mode):
    from eval.run import main

    run_dir = cli_env / "job"
    run_dir.mkdir()
    (run_dir / "STOP").touch()
    rc = main(["run", "--variants", "base", "--mode", mode, "--n", "1", "--benchmarks", "medqa", "--max_new_tokens", "4",
               "--profile", "offline", "--out", str(cli_env / "r.json"), "--output_dir", str(run_dir)])
    status = json.loads((run_dir / "status.json").read_text())
    assert rc == 1 and status["status"] == "stopped" and "stopped during base" in status["error"]
