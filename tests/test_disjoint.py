"""No evaluated benchmark item may appear in a training set: the check itself, and the real offline SFT rows."""
from __future__ import annotations

from types import SimpleNamespace

from medadapt.data.sft import SftRow, check_disjoint, evaluated_items, load_sft_rows


def item(id_, question, bench="medmcqa"):
    return SimpleNamespace(id=id_, question=question, benchmark=bench)


ROWS = [
    SftRow("medmcqa:aaa", "medmcqa", "Which nerve supplies the deltoid muscle of the shoulder?\n\nA. x\nB. y", "c", "a"),
    SftRow("pubmedqa:42", "pubmedqa", "Context: ...\n\nQuestion: Is aspirin useful?", "c", "a"),
    SftRow("medical_o1:0", "medical_o1", "A 40-year-old man presents with chest pain radiating to the back.", "c", "a"),
]


def test_planted_overlap_by_id_is_caught():
    found = check_disjoint(ROWS, {"pubmedqa": [item("42", "something else entirely", "pubmedqa")]})
    assert [(o.row_id, o.by, o.benchmark) for o in found] == [("pubmedqa:42", "id", "pubmedqa")]


def test_planted_overlap_by_text_is_caught():
    eval_items = {"medqa": [item("medqa-7", "Which nerve supplies the DELTOID muscle of the shoulder?", "medqa")],
                  "mmlu_medical": [item("anatomy-1", "A 40-year-old man presents with chest pain radiating "
                                                     "to the back.", "mmlu_medical")]}
    found = check_disjoint(ROWS, eval_items)
    assert {(o.row_id, o.item_id, o.by) for o in found} == {("medmcqa:aaa", "medqa-7", "text"),
                                                            ("medical_o1:0", "anatomy-1", "text")}


def test_disjoint_rows_pass():
    assert check_disjoint(ROWS, [item("zzz", "An unrelated question about renal physiology and GFR?")]) == []


def test_offline_sft_rows_are_disjoint_from_evaluated_items(cfg):
    items = evaluated_items(cfg)
    assert sum(len(v) for v in items.values()) > 0
    rows = load_sft_rows(cfg)
    assert rows and check_disjoint(rows, items) == []
    ids = {str(i.id) for group in items.values() for i in group}
    assert not any(r.id.split(":", 1)[1] in ids for r in rows)


def test_adapter_overlap_found_when_the_eval_reaches_past_the_excluded_sample(cfg):
    from medadapt.data.benchmarks import evaluated_items as sample
    from medadapt.data.sft import trained_overlap

    meta = {"sources": ["medical_o1", "medmcqa"],
            "excluded_eval_items": {"benchmarks": ["medmcqa"], "n": 20, "seed": 7}}
    assert trained_overlap(cfg, meta, sample(cfg, ["medmcqa"], n=20, seed=7)) == []  # the excluded sample itself
    wider = sample(cfg, ["medmcqa"], n=60, seed=7)  # a prefix-consistent superset: 40 items were trainable
    found = {o.item_id for o in trained_overlap(cfg, meta, wider)}
    ids = [it.id for it in wider["medmcqa"]]
    assert found and found <= set(ids[20:])
    assert {o.item_id for o in trained_overlap(cfg, {"sft": meta}, wider)} == found  # MSFT nests its SFT stage
    assert trained_overlap(cfg, {"sources": ["medical_o1"]}, wider) == []  # no benchmark-derived rows


def test_eval_results_flag_items_seen_in_training(cfg):
    from medadapt.data.benchmarks import evaluated_items as sample
    from eval.evaluate import seen_in_training
    from eval.report import summary_table
    from eval.variants import Variant

    meta = {"sources": ["medmcqa"], "excluded_eval_items": {"benchmarks": ["medmcqa"], "n": 20, "seed": 7}}
    wider = sample(cfg, ["medmcqa"], n=60, seed=7)
    seen = seen_in_training(cfg, Variant("sft", "/adapter", meta={"data": meta}), wider)
    assert seen and all(s.startswith("medmcqa/") for s in seen)
    assert seen_in_training(cfg, Variant("old", "/adapter", meta={}), wider) == []
    results = {"items": {"medmcqa": []}, "variants": {
        "sft": {"status": "ok", "predictions": {"medmcqa": [{"views": {"letter": {"correct": True}}}]},
                "seen_in_training": seen},
        "base": {"status": "ok", "predictions": {"medmcqa": [{"views": {"letter": {"correct": False}}}]}}}}
    labels = [row[0] for row in summary_table(results)[1]]
    assert any(f"⚠ {len(seen)} items seen in training" in x for x in labels)
    assert not any("⚠" in x for x in labels if "SFT" not in x and "sft" not in x)


def test_validation_items_touch_neither_the_eval_sample_nor_training_rows():
    """scripts/validation_ids.py (how the offline recipe was chosen) picks items outside both."""
    import importlib.util

    from medadapt.config import REPO_ROOT, load_config
    from medadapt.data.benchmarks import select_ids
    from medadapt.data.sft import load_local_rows

    spec = importlib.util.spec_from_file_location("validation_ids", REPO_ROOT / "scripts" / "validation_ids.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ids = module.validation_ids(per=50, seed=777)
    cfg = load_config("offline")
    assert all(len(v) == 50 for v in ids.values())
    evaluated = evaluated_items(cfg)
    for bench, chosen in ids.items():
        assert not set(chosen) & {str(i.id) for i in evaluated[bench]}, bench
    assert check_disjoint(load_local_rows(cfg), select_ids(cfg, ids)) == []
