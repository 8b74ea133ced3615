"""Find trained LoRA adapters in the runs dir (see docs/ARCHITECTURE.md, "Run directory contract"), and the error
raised when an adapter folder cannot be loaded (by :mod:`medadapt.multilora` and :mod:`medadapt.engine`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medadapt.config import AppConfig
from medadapt.rundir import runs_root


class AdapterLoadError(RuntimeError):
    """An adapter folder is missing, corrupt, or does not fit the base model."""


@dataclass(frozen=True)
class AdapterInfo:
    kind: str  # sft | msft | cpt
    path: Path
    run_dir: Path
    created: float  # mtime of the published adapter

    @property
    def label(self) -> str:
        return f"{self.kind}: {self.run_dir.name}"


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").exists() and any(path.glob("adapter_model.*"))


def list_adapters(cfg: AppConfig, kind: str) -> list[AdapterInfo]:
    """Finished adapters of ``kind`` for the active profile, newest first."""
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
    """The configured adapter for variant ``kind``: an explicit path, or the newest one (``auto``); None if none."""
    setting = getattr(cfg.adapters, kind, "auto")
    if setting and setting != "auto":
        path = Path(setting).expanduser()
        return path if is_adapter_dir(path) else None
    found = list_adapters(cfg, kind)
    return found[0].path if found else None
