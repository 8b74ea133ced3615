"""Issue 33 point 2: a fresh reference-profile setup prepares the seed's published models as deltas (download from the
Hugging Face cache, extract, publish as adapters in the runs dir) and all four Compare columns answer, no training.

Stand-ins, loaded through the same code path as the Hub ids: the base is a tiny random Qwen2 with the real
DeepSeek-R1-Distill tokenizer (``tiny_r1_model_dir``), and each published model (SFT, MSFT, the two CPT ids) a
modified copy of it, all saved in the standard Hugging Face cache layout under their real repo ids, with
``HF_HUB_OFFLINE=1`` (``medadapt.hub.cached_snapshot``). The RAG index is the prebuilt-index path a Space uses
(``MEDADAPT_INDEX_REPO``: a dataset repo in the same cache), since the profile's embedder is not on this machine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medadapt.config import REPO_ROOT, GenSettings, load_config
from tests.merged_model import merged_model

REF = {"base": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
       "sft": "MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-sft-merged",
       "msft": "MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-msft-merged",
       "cpt": "MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-continual-pretrain-merged",
       "cpt_f32": "MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-continual-pretrain-merged-f32"}
INDEX_REPO = "medadapt-test/reference-index"


def cache_repo(cache: Path, repo_id: str, folder: Path, kind: str = "models") -> None:
    """Put ``folder``'s files into the HF cache as ``repo_id``'s snapshot (refs/main -> a commit hash)."""
    commit = f"{abs(hash(repo_id)):040x}"[-40:]
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_r1_model_dir) -> Path:
    """The HF cache of a machine that downloaded the reference base, the published models and a prebuilt index."""
    tmp = tmp_path_factory.mktemp("published")
    cache = tmp / "hf"
    base = Path(tiny_r1_model_dir)
    cache_repo(cache, REF["base"], base)
    cpt = merged_model(base, tmp / "cpt-f32", 2, embed=0.01, lm_head=0.01)
    cache_repo(cache, REF["cpt_f32"], cpt)
    cache_repo(cache, REF["cpt"], merged_model(cpt, tmp / "cpt", 2, rounded=True))
    cache_repo(cache, REF["sft"], merged_model(base, tmp / "sft", 1))
    cache_repo(cache, REF["msft"], merged_model(cpt, tmp / "msft", 3))
    from medadapt.retrieval.rag import build_index

    table = load_config("reference").rag.table
    corpus_cfg = load_config("offline", {"rag": {"table": table, "corpus": ["local:corpus"]},
                                         "paths": {"index_dir": str(tmp / "built"),
                                                   "data_dir": str(REPO_ROOT / "tests" / "fixtures")}})
    assert build_index(corpus_cfg) > 0  # the reference profile's table, from the fixture corpus, offline embedder
    cache_repo(cache, INDEX_REPO, tmp / "built", kind="datasets")
    return cache


def test_fresh_reference_setup_prepares_the_published_models_and_all_columns_answer(hub_cache, tmp_path,
                                                                                        monkeypatch):
    env = dict(os.environ, MEDADAPT_PROFILE="reference", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache),
               MEDADAPT_RUNS_DIR=str(tmp_path / "runs"), MEDADAPT_INDEX_DIR=str(tmp_path / "index"),
               MEDADAPT_RESULTS_DIR=str(tmp_path / "results"), MEDADAPT_CACHE_DIR=str(tmp_path / "cache"),
               MEDADAPT_INDEX_REPO=INDEX_REPO, MEDADAPT_SETUP_CONFIGS=str(tmp_path / "no-configs"),
               WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    for var in ("MEDADAPT_MODEL", "MEDADAPT_SETUP", "MEDADAPT_SETUP_TRAIN", "MEDADAPT_SHIPPED_DIR"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-m", "medadapt", "setup"], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "RAG index: done, prebuilt index pulled" in out.stdout
    assert "SFT adapter: done, published model" in out.stdout and "MSFT adapter: done, published model" in out.stdout
    runs = Path(env["MEDADAPT_RUNS_DIR"]) / "reference"
    assert not list(runs.glob("sft-*")) and not list(runs.glob("msft-*")) and not list(runs.glob("cpt-*"))  # untrained
    deltas = {json.loads((r / "status.json").read_text())["source"]: r for r in runs.glob("delta-*")}
    assert set(deltas) == {REF["sft"], REF["msft"], REF["cpt"], REF["cpt_f32"]}  # each published model, once
    log = [json.loads(x) for x in (deltas[REF["msft"]] / "log.jsonl").read_text().splitlines()]
    assert log[-1]["stage"] == "extract" and log[-1]["step"] == log[-1]["total_steps"]  # progress, as training
    setup = json.loads((runs / "setup.json").read_text())["steps"]
    assert setup["msft"]["task"].startswith("delta:cpt:") and setup["msft"]["how"] == "published"

    for key in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "MEDADAPT_RUNS_DIR", "MEDADAPT_INDEX_DIR", "MEDADAPT_CACHE_DIR",
                "MEDADAPT_RESULTS_DIR"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("MEDADAPT_ENGINE", "local")  # the in-process engine (a CPU machine's reference profile would
    # otherwise pick its cpu: section's engine, issue 34's, which is not what this test is about)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    from medadapt.state import AppState

    monkeypatch.setenv("MEDADAPT_ENGINE", "local")  # this box has no GPU: the profile would pick the CPU engine
    cfg = load_config("reference")
    state = AppState.create(cfg)
    assert state.default_label("sft") == f"default: published · {REF['sft']} (rank-64 delta)"
    assert state.default_label("msft") == f"default: published · {REF['msft']} (rank-64 delta)"
    labels = [label for label, _ in state.adapter_choices("msft")]
    assert f"CPT only, published · {REF['cpt_f32']} (rank-64 delta)" in labels  # the CPT models are selectable
    cpt_ref = next(ref for label, ref in state.adapter_choices("msft") if REF["cpt_f32"] in label)
    adapters = {"sft": state.checked_adapter("sft", ""), "msft": state.checked_adapter("msft", cpt_ref)}
    final = list(state.pipeline.compare("Which vitamin is only in animal food?",
                                        GenSettings(max_new_tokens=16), adapters))[-1]
    assert {v: a.status for v, a in final.answers.items()} == {v: "done" for v in ("base", "rag", "sft", "msft")}, \
        {v: a.message for v, a in final.answers.items()}
    assert final.answers["rag"].snippets and final.answers["msft"].adapter.endswith("adapter")
