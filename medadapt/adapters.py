"""Where a fine-tuned variant comes from, and the error raised when an adapter folder cannot be loaded.

A variant (``sft``, ``msft``, ``cpt``) is a PEFT adapter on the base model: a trained one in the runs dir (see
docs/ARCHITECTURE.md, "Run directory contract"), an adapter folder, or a full fine-tuned model (a local folder or a
Hub model id, e.g. the seed's published merged models) turned once into a low-rank delta adapter against the base
(:mod:`medadapt.delta`, cached under ``<cache_dir>/deltas/``), so every variant still batches on one base.
``adapters.models`` lists the full models a profile offers; :func:`list_adapters` lists them (once prepared by
``python -m medadapt.adapters prepare``) with the runs dir's adapters, and the Compare tab accepts only listed
choices, so a request can never name an arbitrary path or id.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from medadapt.config import AppConfig
from medadapt.rundir import runs_root


log = logging.getLogger(__name__)


class AdapterLoadError(RuntimeError):
    """An adapter folder is missing, corrupt, or does not fit the base model."""


@dataclass(frozen=True)
class AdapterInfo:
    kind: str  # sft | msft | cpt
    path: Path
    run_dir: Path
    created: float  # mtime of the published adapter

    source: str = ""  # the full model (folder or Hub id) a delta adapter was extracted from; "" for trained ones

    @property
    def label(self) -> str:
        return f"{self.kind}: {self.source} (rank-{self.run_dir.name.rsplit('-r', 1)[-1]} delta)" if self.source else \
            f"{self.kind}: {self.run_dir.name}"


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").exists() and any(path.glob("adapter_model.*"))


def list_adapters(cfg: AppConfig, kind: str) -> list[AdapterInfo]:
    """Finished adapters of ``kind`` for the active profile, newest first, then the profile's published full models
    (``adapters.models``) whose delta is prepared."""
    return trained_adapters(cfg, kind) + [a for a in map(lambda s: prepared_delta(cfg, kind, s), published(cfg, kind))
                                          if a is not None]


def trained_adapters(cfg: AppConfig, kind: str) -> list[AdapterInfo]:
    """Finished adapters of ``kind`` in the profile's runs dir, newest first."""
    root = runs_root(cfg)
    found = []
    for adapter in root.glob("*/adapter"):
        meta_file = adapter / "medadapt.json"
        try:
            job = json.loads(meta_file.read_text()).get("job") if meta_file.exists() else adapter.parent.name.split("-")[0]
        except (OSError, json.JSONDecodeError):
            continue
        if job == kind and is_adapter_dir(adapter):
            found.append(AdapterInfo(kind, adapter, adapter.parent, adapter.stat().st_mtime))
    return sorted(found, key=lambda a: a.created, reverse=True)


def resolve_adapter(cfg: AppConfig, kind: str) -> Path | None:
    """The configured adapter for variant ``kind``: an adapter folder, a full model (folder or Hub id: its delta,
    extracted on first use), or the newest trained one (``auto``); None if none."""
    setting = getattr(cfg.adapters, kind, "auto")
    if setting and setting != "auto":
        return resolve_source(cfg, kind, setting)
    found = trained_adapters(cfg, kind) if kind != "cpt" else []
    return found[0].path if found else None


# ---------------------------------------------------------------- full models as delta adapters

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def published(cfg: AppConfig, kind: str) -> list[str]:
    """The full models (folders or Hub ids) the profile offers for ``kind`` (``adapters.models``)."""
    return list((cfg.adapters.models or {}).get(kind) or [])


def delta_dir(cfg: AppConfig, source: str) -> Path:
    """Where the delta of full model ``source`` at the configured rank is cached."""
    slug = re.sub(r"[^\w.-]+", "__", str(Path(source).expanduser().resolve()) if Path(source).expanduser().exists()
                  else source).strip("_")
    return cfg.paths.resolve("cache_dir") / "deltas" / f"{slug}-r{cfg.adapters.delta_rank}"


def prepared_delta(cfg: AppConfig, kind: str, source: str) -> AdapterInfo | None:
    path = delta_dir(cfg, source)
    if not is_adapter_dir(path):
        return None
    return AdapterInfo(kind, path, path, path.stat().st_mtime, source)


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


def model_folder_of(source: str) -> Path:
    """A local folder holding full model ``source`` (a Hub id: its snapshot from the Hub or the HF cache)."""
    from medadapt.delta import is_full_model
    from medadapt.hub import cached_snapshot

    path = Path(source).expanduser()
    if is_full_model(path):
        return path
    from medadapt.config import hub_reachable

    if hub_reachable():
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    cached = cached_snapshot(source)
    if cached is None:
        raise AdapterLoadError(f"model {source} is not in the Hugging Face cache and the Hub is unreachable")
    return Path(cached)


def prepare_delta(cfg: AppConfig, kind: str, source: str) -> Path:
    """The delta adapter of full model ``source`` against the profile's base, extracted on first use."""
    found = prepared_delta(cfg, kind, source)
    if found is not None:
        return found.path
    from medadapt.delta import extract_delta
    from medadapt.models import base_model_path

    base = model_folder_of(base_model_path(cfg))
    out = delta_dir(cfg, source)
    log.info("extracting the rank-%d delta of %s against %s into %s", cfg.adapters.delta_rank, source, base, out)
    dtype = cfg.model.dtype if cfg.model.dtype in ("float32", "bfloat16", "float16") else "float32"
    extract_delta(base, model_folder_of(source), out, cfg.adapters.delta_rank, dtype=dtype, source=source, kind=kind)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m medadapt.adapters prepare [--profile P]``: extract the delta of every published model the
    profile offers (``adapters.models``), so Compare lists them."""
    import argparse

    from medadapt.config import load_config

    p = argparse.ArgumentParser(prog="python -m medadapt.adapters", description=main.__doc__.split("\n")[0])
    p.add_argument("cmd", choices=["prepare", "list"])
    p.add_argument("--profile", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.profile)
    failed = 0
    for kind, sources in (cfg.adapters.models or {}).items():
        for source in sources:
            if args.cmd == "list":
                info = prepared_delta(cfg, kind, source)
                print(f"{kind}: {source}: {info.path if info else 'not prepared'}")
                continue
            try:
                print(f"{kind}: {source} -> {prepare_delta(cfg, kind, source)}")
            except Exception as e:  # noqa: BLE001 — report each and go on
                failed += 1
                print(f"{kind}: {source}: failed: {type(e).__name__}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
