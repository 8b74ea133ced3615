"""The profile's shipped release: adapters, retrieval index and the results measured on them, in the repository.

``python -m medadapt.release`` (:mod:`medadapt.release`) writes ``<paths.shipped_dir>/`` (``assets/shipped/offline``
for the offline profile) and the results file it names::

    release.json                 the manifest: base model, each adapter's sha256, the index, the results file
    sft/ msft/                   PEFT adapters in half precision (adapter_config.json, adapter_model.safetensors,
                                 README.md model card with recipe, data, results and checksum, medadapt.json)
    index/<table>.lance          the LanceDB table the RAG column and the RAG evaluation used

The app serves these by default (:mod:`medadapt.adapters`), the first-run setup copies the index instead of embedding
the corpus and skips training (:mod:`medadapt.setup_chain`), and the Benchmarks tab names each result's adapter by
checksum. An adapter is identified by the sha256 of its ``adapter_model.safetensors`` (:func:`adapter_checksum`):
the results file, the manifest, the model card and the tests compare those. Stdlib only: the web server reads it.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from medadapt.config import OFFLINE_MODEL, OFFLINE_MODEL_HUB_ID, AppConfig

MANIFEST = "release.json"
WEIGHTS = "adapter_model.safetensors"
KINDS = ("sft", "msft")
SHORT = 12  # hex digits of a checksum shown in labels


# ---------------------------------------------------------------- checksums

_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (remembered per path, size and mtime, so the UI can ask at every refresh)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASHES[key] = digest
    return digest


def adapter_checksum(adapter_dir: str | Path | None) -> str | None:
    """The identity of a PEFT adapter folder: sha256 of its weights file; None when there is none."""
    if not adapter_dir:
        return None
    weights = Path(adapter_dir) / WEIGHTS
    try:
        return file_sha256(weights)
    except OSError:
        return None


def short(checksum: str | None) -> str:
    return (checksum or "")[:SHORT] or "unknown"


# ---------------------------------------------------------------- the shipped release of a profile

def shipped_root(cfg: AppConfig) -> Path | None:
    """The profile's shipped-release folder (``paths.shipped_dir``), or None when the profile ships none."""
    if not getattr(cfg.paths, "shipped_dir", ""):
        return None
    return cfg.paths.resolve("shipped_dir")


def base_model_id(cfg: AppConfig) -> str:
    """The base model as a release names it: the offline GGUF is SmolLM2-135M-Instruct, anything else as configured."""
    name = cfg.model.name_or_path
    return OFFLINE_MODEL_HUB_ID if name == OFFLINE_MODEL else name


def read_manifest(root: Path | None) -> dict[str, Any]:
    if root is None:
        return {}
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def manifest(cfg: AppConfig) -> dict[str, Any]:
    """The profile's release manifest when it exists and was made for the configured base model, else {}."""
    data = read_manifest(shipped_root(cfg))
    return data if data and data.get("base_model") == base_model_id(cfg) else {}


def shipped_adapter(cfg: AppConfig, kind: str) -> Path | None:
    """The shipped adapter folder of ``kind`` for the configured base model, or None."""
    entry = manifest(cfg).get("adapters", {}).get(kind)
    if not entry:
        return None
    path = shipped_root(cfg) / entry["path"]  # type: ignore[operator]
    return path if (path / WEIGHTS).is_file() and (path / "adapter_config.json").is_file() else None


def shipped_checksums(cfg: AppConfig) -> dict[str, str]:
    """``{kind: sha256}`` as the manifest records them (what the shipped results were measured on)."""
    return {k: v["sha256"] for k, v in manifest(cfg).get("adapters", {}).items() if v.get("sha256")}


def shipped_index(cfg: AppConfig) -> Path | None:
    """The shipped LanceDB folder holding the profile's table, when it was built with the profile's embedder."""
    entry = manifest(cfg).get("index") or {}
    if not entry or entry.get("table") != cfg.rag.table or entry.get("embedder") != cfg.rag.embedder:
        return None
    folder = shipped_root(cfg) / entry["path"]  # type: ignore[operator]
    return folder if (folder / f"{cfg.rag.table}.lance").is_dir() else None


def shipped_results(cfg: AppConfig) -> Path | None:
    """The results file the release measured its adapters in (repository-relative in the manifest)."""
    from medadapt.config import REPO_ROOT

    rel = manifest(cfg).get("results")
    path = REPO_ROOT / rel if rel else None
    return path if path is not None and path.is_file() else None
