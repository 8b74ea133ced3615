"""A Hugging Face cache in the standard layout, as a Space that reached the Hub would hold it, written from local
copies: the offline model and embedder as Hub model repos (``hub/models--ORG--NAME``: blobs, snapshots, refs/main)
and slices of the data dir as the Hub datasets (``datasets/ORG___NAME/CONFIG/0.0.0/HASH``: Arrow files and
``dataset_info.json``, what ``load_dataset`` leaves behind) with the Hub datasets' column names and types. With
``HF_HUB_OFFLINE=1`` and ``HF_HOME`` pointing here, the app's own ``from_pretrained`` / ``load_dataset`` calls on
the Hub ids resolve from it. Used by ``tests/test_space.py`` and ``bench/space_boot.py``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from medadapt.data.benchmark_items import MMLU_SUBJECTS
from medadapt.data.benchmarks import DEFINITIONS
from medadapt.data.corpus import HUB_TWINS
from medadapt.data.sft import HUB_DATASET


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def write_model_repo(hf_home: Path, repo_id: str, folder: Path, repo_type: str = "model") -> Path:
    """``folder``'s files as the cached snapshot of Hub repo ``repo_id`` (a model repo, or ``repo_type``
    ``dataset``); returns the snapshot dir."""
    repo = hf_home / "hub" / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    commit = _sha(repo_id)
    snap = repo / "snapshots" / commit
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = src.relative_to(folder)
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            try:
                os.link(src, blob)
            except OSError:
                shutil.copyfile(src, blob)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def write_dataset(hf_home: Path, repo_id: str, config: str, splits: dict[str, list[dict]],
                  features: Any = None) -> Path:
    """Rows as the prepared Arrow cache of Hub dataset ``repo_id`` / ``config``; returns its folder."""
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from datasets.naming import camelcase_to_snakecase

    ns, name = repo_id.split("/")
    snake = camelcase_to_snakecase(name)
    folder = hf_home / "datasets" / f"{ns}___{snake}" / config / "0.0.0" / _sha(repo_id + config)
    folder.mkdir(parents=True, exist_ok=True)
    split_dict = datasets.SplitDict(dataset_name=snake)
    for split, rows in splits.items():
        ds = datasets.Dataset.from_list(rows, features=features)
        features = ds.features
        with ArrowWriter(path=str(folder / f"{snake}-{split}.arrow")) as writer:
            writer.write_table(ds.data.table)
            n, size = writer.finalize()
        split_dict.add(datasets.SplitInfo(name=split, num_bytes=size, num_examples=n, dataset_name=snake))
    datasets.DatasetInfo(features=features, dataset_name=snake, config_name=config, version="0.0.0",
                         splits=split_dict).write_to_directory(str(folder))
    return folder


def _jsonl(path: Path, n: int) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= n:
                break
    return rows


def write_datasets(hf_home: Path, data_dir: Path, snippets: int = 300, items: int = 240) -> dict[str, int]:
    """Slices of the data dir as the Hub datasets the app reads without a data dir; returns rows per dataset."""
    import datasets

    counts: dict[str, int] = {}
    books = sorted((data_dir / "medrag_textbooks").glob("*.jsonl"))
    corpus = [r for b in books for r in _jsonl(b, snippets // len(books) + 1)][:snippets]
    textbooks = HUB_TWINS["medrag_textbooks"]
    write_dataset(hf_home, textbooks, "default",
                  {"train": [{k: r[k] for k in ("id", "title", "content", "contents")} for r in corpus]})
    counts[textbooks] = len(corpus)

    med = [dict(r, cop=int(r["cop"]) - 1) for r in _jsonl(data_dir / "medmcqa" / "dev.json", items)]
    keys = ("id", "question", "opa", "opb", "opc", "opd", "cop", "choice_type", "exp", "subject_name", "topic_name")
    feats = datasets.Features({k: datasets.Value("string") for k in keys if k != "cop"})
    feats["cop"] = datasets.ClassLabel(names=["a", "b", "c", "d"])
    repo, _, split = DEFINITIONS["medmcqa"].hub
    write_dataset(hf_home, repo, "default", {split: [{k: r.get(k) for k in keys} for r in med]},
                  datasets.Features(feats))
    counts[repo] = len(med)

    medqa = _jsonl(data_dir / "medqa" / "US_4_options_phrases_no_exclude_test.jsonl", items)
    repo, _, split = DEFINITIONS["medqa"].hub
    write_dataset(hf_home, repo, "default", {split: medqa})
    counts[repo] = len(medqa)

    mmlu_feats = datasets.Features({"question": datasets.Value("string"), "subject": datasets.Value("string"),
                                    "choices": datasets.Sequence(datasets.Value("string")),
                                    "answer": datasets.ClassLabel(names=["A", "B", "C", "D"])})
    for subject in MMLU_SUBJECTS:
        with open(data_dir / "mmlu_medical" / f"{subject}_test.csv", encoding="utf-8", newline="") as f:
            rows = [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5].strip())}
                    for r in list(csv.reader(f))[:items // len(MMLU_SUBJECTS) + 1]]
        repo, _, split = DEFINITIONS["mmlu_medical"].hub
        write_dataset(hf_home, repo, subject, {split: rows}, mmlu_feats)
        counts[f"{repo}/{subject}"] = len(rows)

    pqal = json.loads((data_dir / "pubmedqa" / "ori_pqal.json").read_text(encoding="utf-8"))
    kept = list(pqal.items())[:2 * items]
    repo, config, split = DEFINITIONS["pubmedqa"].hub
    write_dataset(hf_home, repo, config, {split: [
        {"pubid": int(k), "question": r["QUESTION"],
         "context": {"contexts": r["CONTEXTS"], "labels": r["LABELS"], "meshes": r["MESHES"],
                     "reasoning_required_pred": r["reasoning_required_pred"],
                     "reasoning_free_pred": r["reasoning_free_pred"]},
         "long_answer": r["LONG_ANSWER"], "final_decision": r["final_decision"]} for k, r in kept]})
    counts[repo] = len(kept)
    o1 = json.loads((data_dir / "medical_o1_sft" / "medical_o1_sft_en_first10.json").read_text(encoding="utf-8"))
    write_dataset(hf_home, HUB_DATASET, "en", {"train": o1})
    counts[HUB_DATASET] = len(o1)
    return counts


def write_hf_cache(hf_home: Path, data_dir: Path, model_dir: Path, embedder_dir: Path, **slices: int) -> dict:
    """The whole cache: the offline model and embedder under their Hub ids, and the data slices."""
    from medadapt.config import OFFLINE_MODEL_HUB_ID
    from medadapt.retrieval.index import OFFLINE_EMBEDDER_HUB_ID

    write_model_repo(hf_home, OFFLINE_MODEL_HUB_ID, model_dir)
    write_model_repo(hf_home, OFFLINE_EMBEDDER_HUB_ID, embedder_dir)
    return write_datasets(hf_home, data_dir, **slices)
