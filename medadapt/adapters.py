"""Where a fine-tuned variant comes from.

A variant (``sft``, ``msft``, ``cpt``) is a PEFT adapter on the base model, of one of three origins:

- **shipped**: the profile's release in the repository (:mod:`medadapt.shipped`), trained and evaluated by
  ``python -m medadapt.release``; the Benchmarks tab's results were measured on exactly these files;
- **trained**: a finished run in the runs dir (see docs/ARCHITECTURE.md, "Run directory contract"), newest first;
- **published**: a full fine-tuned model (a local folder or a Hub model id, e.g. the seed's published merged models
  listed in ``adapters.models``) turned once into a low-rank delta adapter against the base (:mod:`medadapt.delta`),
  published as a ``delta-<time>`` run in the runs dir by the first-run setup or ``python -m medadapt.delta_job
  prepare`` (:mod:`medadapt.delta_job`), so every variant still batches on one base.

``adapters.<kind>: auto`` (the default) serves the shipped adapter when the profile ships one, else the newest
trained one, else the first prepared published model (:func:`resolve_adapter`). :func:`list_adapters` lists all of
them; each carries its origin and a ``ref``, a name relative to the configured folders that the Compare tab uses as
its choice's value (:func:`medadapt.refs.to_ref`: no absolute server path), and the tab accepts only listed refs, so a
request can never name an arbitrary path or id.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medadapt.config import AppConfig
from medadapt.jobs.rundir import DELTA_JOB, runs_root
from medadapt.refs import to_ref
from medadapt.serve.api import AdapterLoadError

log = logging.getLogger(__name__)

ORIGINS = ("shipped", "trained", "published", "configured")


@dataclass(frozen=True)
class AdapterInfo:
    kind: str  # sft | msft | cpt
    path: Path
    run_dir: Path
    created: float  # mtime of the published adapter
    source: str = ""  # the full model (folder or Hub id) a delta adapter was extracted from; "" otherwise
    origin: str = "trained"  # shipped | trained | published | configured (adapters.<kind> names a folder or model)
    ref: str = ""  # the choice's value: the folder's name under a configured folder (medadapt.refs.to_ref)
    rank: int = 0  # a delta's rank

    @property
    def label(self) -> str:
        """What the Compare tab's adapter choice reads: the origin first, then what identifies the adapter."""
        from medadapt.shipped import adapter_checksum, short

        what = "CPT only, " if self.kind == "cpt" else ""
        if self.origin == "shipped":
            return f"{what}shipped · {self.kind} {short(adapter_checksum(self.path))}"
        if self.origin == "published":
            return f"{what}published · {self.source} (rank-{self.rank} delta)"
        if self.origin == "configured":
            return f"{what}configured · {self.path.name}"
        return f"{what}trained here · {self.run_dir.name}"


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").exists() and any(path.glob("adapter_model.*"))


def _meta(adapter: Path) -> dict:
    try:
        data = json.loads((adapter / "medadapt.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_adapters(cfg: AppConfig, kind: str) -> list[AdapterInfo]:
    """Every adapter of ``kind`` for the active profile: the shipped one, the trained ones (newest first), then the
    profile's published models (``adapters.models``) whose delta is prepared."""
    found = [a for a in (shipped_info(cfg, kind),) if a is not None] + trained_adapters(cfg, kind)
    return found + [a for a in (prepared_delta(cfg, kind, s) for s in published(cfg, kind)) if a is not None]


def shipped_info(cfg: AppConfig, kind: str) -> AdapterInfo | None:
    from medadapt.shipped import shipped_adapter

    path = shipped_adapter(cfg, kind)
    if path is None:
        return None
    return AdapterInfo(kind, path, path, path.stat().st_mtime, origin="shipped", ref=to_ref(cfg, path))


def _run_adapters(cfg: AppConfig) -> list[tuple[Path, dict]]:
    """(adapter folder, its medadapt.json) of every published adapter in the profile's runs dir."""
    out = []
    for adapter in runs_root(cfg).glob("*/adapter"):
        if is_adapter_dir(adapter):
            meta = _meta(adapter)
            meta.setdefault("job", adapter.parent.name.split("-")[0])
            out.append((adapter, meta))
    return out


def trained_adapters(cfg: AppConfig, kind: str) -> list[AdapterInfo]:
    """Finished adapters of ``kind`` trained in the profile's runs dir, newest first (published deltas excluded)."""
    found = [AdapterInfo(kind, a, a.parent, a.stat().st_mtime, ref=to_ref(cfg, a))
             for a, meta in _run_adapters(cfg) if meta.get("job") == kind and not meta.get("source")]
    return sorted(found, key=lambda a: a.created, reverse=True)


def resolve_adapter(cfg: AppConfig, kind: str) -> Path | None:
    """The configured adapter for variant ``kind``: an adapter folder, a full model (folder or Hub id: its delta,
    extracted on first use), or with ``auto`` the default (:func:`default_adapter`); None if none."""
    setting = getattr(cfg.adapters, kind, "auto")
    if setting and setting != "auto":
        return resolve_source(cfg, kind, setting)
    info = default_adapter(cfg, kind)
    return info.path if info is not None else None


def default_adapter(cfg: AppConfig, kind: str) -> AdapterInfo | None:
    """What ``auto`` serves: the shipped adapter, else the newest trained one, else the first prepared published
    model (the CPT kind: a prepared published model only)."""
    if kind == "cpt":
        return next((a for a in list_adapters(cfg, kind) if a.origin == "published"), None)
    found = list_adapters(cfg, kind)
    return found[0] if found else None


# ---------------------------------------------------------------- full models as delta adapters

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def published(cfg: AppConfig, kind: str) -> list[str]:
    """The full models (folders or Hub ids) the profile offers for ``kind`` (``adapters.models``)."""
    return list((cfg.adapters.models or {}).get(kind) or [])


def source_key(source: str) -> str:
    """How a full model is named in a delta's record: a folder by its absolute path, a Hub id as it is."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def delta_dir(cfg: AppConfig, source: str) -> Path:
    """Where earlier versions cached the delta of full model ``source`` at the configured rank (still read)."""
    slug = re.sub(r"[^\w.-]+", "__", source_key(source)).strip("_")
    return cfg.paths.resolve("cache_dir") / "deltas" / f"{slug}-r{cfg.adapters.delta_rank}"


def prepared_delta(cfg: AppConfig, kind: str, source: str) -> AdapterInfo | None:
    """The newest prepared delta of full model ``source`` at the configured rank: a ``delta-*`` run in the runs dir,
    else the legacy cache folder; None when none is prepared."""
    key, rank = source_key(source), cfg.adapters.delta_rank
    runs = [(a, m) for a, m in _run_adapters(cfg) if m.get("source") == key and m.get("job") == kind
            and (m.get("delta") or {}).get("rank") == rank]
    if runs:
        adapter = max(runs, key=lambda am: am[0].stat().st_mtime)[0]
        return AdapterInfo(kind, adapter, adapter.parent, adapter.stat().st_mtime, source, "published",
                           to_ref(cfg, adapter), rank)
    path = delta_dir(cfg, source)
    if not is_adapter_dir(path):
        return None
    return AdapterInfo(kind, path, path, path.stat().st_mtime, source, "published", to_ref(cfg, path), rank)


def resolve_source(cfg: AppConfig, kind: str, source: str) -> Path | None:
    """An adapter folder as it is; a full model folder or Hub model id as its delta adapter (extracted once); None
    when ``source`` is none of these (logged)."""
    from medadapt.delta import is_full_model

    path = Path(source).expanduser()
    if is_adapter_dir(path):
        return path
    if is_full_model(path) or (not path.exists() and HUB_ID.match(source)):
        try:
            return prepare_delta(cfg, kind, source)
        except Exception as e:  # noqa: BLE001 — unreachable Hub, not a model: the variant is unavailable
            log.warning("%s model %s: %s: %s", kind, source, type(e).__name__, e)
            return None
    log.warning("%s: %s is neither an adapter folder, a full model folder nor a Hub model id", kind, source)
    return None


def model_folder_of(source: str, progress: Callable[[int, int], None] | None = None) -> Path:
    """A local folder holding full model ``source`` (a Hub id: its snapshot from the Hub or the HF cache);
    ``progress(bytes done, bytes total)`` while a download runs."""
    from medadapt.delta import is_full_model
    from medadapt.hub import cached_snapshot

    path = Path(source).expanduser()
    if is_full_model(path):
        return path
    cached = cached_snapshot(source)
    if cached is not None and is_full_model(cached):
        return Path(cached)
    from medadapt.config import hub_reachable

    if hub_reachable():
        from huggingface_hub import snapshot_download

        kwargs = {"tqdm_class": _progress_bar(progress)} if progress else {}
        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
                                      **kwargs))
    raise AdapterLoadError(f"model {source} is not in the Hugging Face cache and the Hub is unreachable")


def _progress_bar(progress: Callable[[int, int], None]):
    """A tqdm class for ``snapshot_download`` that reports its byte counts to ``progress``."""
    from tqdm.auto import tqdm

    class Reporting(tqdm):  # type: ignore[misc,valid-type]
        def update(self, n=1):
            out = super().update(n)
            if self.unit == "B" and self.total:
                progress(int(self.n), int(self.total))
            return out

    return Reporting


def prepare_delta(cfg: AppConfig, kind: str, source: str, run_dir: Path | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> Path:
    """The delta adapter of full model ``source`` against the profile's base (``<run_dir>/adapter``, a new
    ``delta-<time>`` run when not given), extracted on first use; ``progress(stage, done, total)`` with stage
    ``download`` (bytes) or ``extract`` (tensors)."""
    found = prepared_delta(cfg, kind, source)
    if found is not None:
        return found.path
    from medadapt.delta import extract_delta
    from medadapt.models import base_model_path
    from medadapt.jobs.rundir import RunDir, new_run_dir

    say = progress or (lambda stage, done, total: None)
    base = model_folder_of(base_model_path(cfg))
    tuned = model_folder_of(source, lambda done, total: say("download", done, total))
    run = RunDir(run_dir or new_run_dir(runs_root(cfg), DELTA_JOB)).create()
    log.info("extracting the rank-%d delta of %s against %s into %s", cfg.adapters.delta_rank, source, base,
             run.adapter)
    dtype = cfg.model.dtype if cfg.model.dtype in ("float32", "bfloat16", "float16") else "float32"
    extract_delta(base, tuned, run.adapter, cfg.adapters.delta_rank, dtype=dtype, source=source_key(source),
                  kind=kind, progress=lambda done, total: say("extract", done, total))
    return run.adapter

