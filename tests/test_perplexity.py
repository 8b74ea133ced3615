"""Per-token perplexity of base, CPT and MSFT on CPT's held-out passages and a general-text control (issue 35)."""
from __future__ import annotations

import json
import math

import pytest

from medadapt.config import REPO_ROOT, load_config
from tests.conftest import make_random_adapter


def test_general_control_is_seeded_prose_from_the_interpreters_own_docs():
    from eval.perplexity_run import general_passages

    a, b = general_passages(30), general_passages(30)
    assert a == b and len(a) == 30 and len({p["id"] for p in a}) == 30
    assert all(len(p["text"].split()) >= 40 and ">>>" not in p["text"] for p in a)


def test_perplexity_statistics_on_planted_losses():
    from eval.perplexity import bootstrap_ci, paired_ratio, perplexity, summarize

    base = [(2.0 * n, n) for n in range(10, 40)]  # 2 nats per token
    better = [(nll - 0.1 * n, n) for nll, n in base]  # 0.1 nats per token lower on every passage
    assert perplexity(base) == pytest.approx(math.exp(2.0))
    lo, hi = bootstrap_ci([(nll + (0.3 if i % 2 else -0.3) * n, n) for i, (nll, n) in enumerate(base)])
    assert lo < math.exp(2.0) < hi
    r = paired_ratio(base, better)
    assert r["ratio"] == pytest.approx(math.exp(-0.1)) and r["ci"][1] < 1 and r["p_not_lower"] == 0
    s = summarize({"base": {"heldout": base}, "cpt": {"heldout": better}, "msft": {"heldout": base}})
    assert set(s["paired"]) == {"cpt/base", "msft/base", "msft/cpt"}
    assert s["models"]["cpt"]["heldout"]["tokens"] == sum(n for _, n in base)


def test_passage_nll_batched_equals_one_passage_at_a_time(cfg, tiny_model_dir):
    import torch

    from eval.perplexity_run import passage_nll
    from medadapt.models import load_model, load_tokenizer

    model, tok = load_model(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir)
    texts = ["Scurvy follows a lack of vitamin C.", "Insulin lowers blood glucose by moving it into cells, "
             "mostly muscle and fat.", "Short."]
    got = passage_nll(model, tok, texts, max_tokens=12, batch_size=3)
    for text, (nll, n) in zip(texts, got):
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[:, :12]
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        assert n == ids.shape[1] - 1
        assert nll == pytest.approx(-float(logp.gather(1, ids[0, 1:, None]).sum()), rel=1e-4)


def test_cli_scores_the_held_out_passages_the_adapter_recorded(cfg, tiny_model_dir, tmp_path, capsys):
    from eval.perplexity import is_perplexity
    from eval.run import main

    fixture = load_config("offline", {"paths": {"data_dir": str(REPO_ROOT / "tests" / "fixtures")}})
    cpt = make_random_adapter(tiny_model_dir, tmp_path / "cpt", seed=3)
    rec = {"split": ["Cardio_Notes_1", "Endo_Infect_Notes_2"], "unsampled": ["Cardio_Notes_5", "Cardio_Notes_6",
                                                                          "Endo_Infect_Notes_9"],
           "unsampled_of": 3, "sources": ["local:corpus"]}
    (cpt / "medadapt.json").write_text(json.dumps({"job": "cpt", "data": {"heldout": rec}}))
    profile = tmp_path / "p.yaml"
    profile.write_text(json.dumps({"profile": "offline", "model": {"name_or_path": tiny_model_dir},
                                   "paths": {"data_dir": fixture.paths.data_dir, "results_dir": str(tmp_path / "r"),
                                             "runs_dir": str(tmp_path / "runs")},
                                   "rag": {"corpus": ["local:corpus"]}}))
    out = tmp_path / "ppl.json"
    assert main(["perplexity", "--profile", str(profile), "--variants", f"base,cpt={cpt}", "--general", "5",
                 "--max_tokens", "32", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert is_perplexity(res) and res["heldout_source"] == "recorded with the adapter"
    assert res["sets"]["heldout"]["passages"] == rec["split"] and len(res["sets"]["unsampled"]["passages"]) == 3
    assert len(res["sets"]["general"]["passages"]) == 5
    for v in ("base", "cpt"):
        for name in ("heldout", "unsampled", "general"):
            m = res["models"][v][name]
            assert m["ci"][0] <= m["ppl"] <= m["ci"][1] and m["tokens"] > 0
    assert res["models"]["base"]["heldout"]["ppl"] != res["models"]["cpt"]["heldout"]["ppl"]
    assert set(res["paired"]) == {"cpt/base"} and "CPT's held-out split" in capsys.readouterr().out

    from eval.results_files import list_perplexity
    from medadapt.charts.results import perplexity_figure
    from medadapt.ui.benchmarks_view import perplexity_markdown

    (tmp_path / "r" / "offline").mkdir(parents=True)
    (tmp_path / "r" / "offline" / "perplexity-20261207-000000.json").write_text(out.read_text())
    assert [p for _, p in list_perplexity(tmp_path / "r")] == ["offline/perplexity-20261207-000000.json"]
    fig = perplexity_figure(res)
    assert [t.name for t in fig.data] == ["Base", "CPT"] and len(fig.data[0].x) == 3
    assert fig.data[1].y[0] == pytest.approx(res["models"]["cpt"]["heldout"]["ppl"])
    md = perplexity_markdown(res)
    assert "**CPT / BASE** perplexity ratio (paired, 95% CI)" in md and "pydoc_data" in md
