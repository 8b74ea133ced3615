"""Training form values ↔ ``TrainConfig``: validation (one clear message per bad value), YAML, the equivalent CLI.

Pure apart from reading and saving config files. The form edits a few keys (``FIELDS``) on top of a base config
file: ``configs/<profile>/*.yaml`` shipped with the repo, or one the user saved under ``<runs_dir>/configs/``. Labels,
bounds and number checks come from the config tree (:func:`medadapt.config.setting`, :func:`~medadapt.config.check_value`).
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medadapt.config import (REPO_ROOT, ConfigError, Setting, TrainConfig, check_value, from_dict, merge, read_yaml,
                             setting, to_dict)
from medadapt.jobs.launcher import Launcher
from medadapt.jobs.rundir import TRAIN_JOBS

JOBS = TRAIN_JOBS  # the jobs the form can launch
JOB_LABELS = {"sft": "SFT (Q → CoT → answer)", "cpt": "Continual pretraining", "msft": "MSFT (CPT, then SFT)"}
SAVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class FormError(ValueError):
    """One or more form values are invalid; ``messages`` holds one line per bad value."""

    def __init__(self, messages: list[str]):
        self.messages = messages
        super().__init__("\n".join(messages))


@dataclass(frozen=True)
class FormField:
    """One form input for a dotted ``TrainConfig`` key; label, bounds and note come from the config's setting."""

    key: str
    kind: str = "number"  # number | bool | list
    note: str = ""  # form-specific help instead of the setting's own note

    @property
    def setting(self) -> Setting:
        return setting(TrainConfig, self.key)

    @property
    def label(self) -> str:
        return self.setting.label

    @property
    def lo(self) -> float | None:
        return self.setting.lo

    @property
    def hi(self) -> float | None:
        return self.setting.hi

    @property
    def info(self) -> str:
        return self.note or self.setting.info


FIELDS = (
    *(FormField(k) for k in ("lora.r", "lora.alpha", "lora.dropout", "learning_rate", "num_epochs", "max_steps",
                             "per_device_batch_size", "gradient_accumulation_steps", "max_length", "max_samples",
                             "eval_steps", "save_steps")),
    FormField("packing", "bool", "concatenate short examples"),
    FormField("dataset", "list", "comma-separated: local:<name> (data dir) or a Hub id org/name; "
                                 "empty: the profile's default"),
)
FORM_KEYS = tuple(f.key for f in FIELDS)


def get_key(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return data


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


# ---------------------------------------------------------------- validation

def is_inside(path: Path, roots: list[Path]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one, by its name alone (``..`` folded; nothing on disk is read,
    so the answer tells a visitor nothing about the server's files)."""
    path = Path(os.path.normpath(os.path.abspath(os.path.expanduser(path))))
    return any(path == r or r in path.parents for r in (Path(os.path.normpath(os.path.abspath(r))) for r in roots))


def check_dataset(entry: str, data_dir: Path, runs_dir: Path, probe: bool = True) -> str | None:
    """Why a dataset entry is refused, or None if it is fine. Only paths inside the data dir or the runs dir are
    allowed, and only those are looked up on disk, and only with ``probe`` (public mode's preview does not probe:
    a visitor learns nothing about which files exist; a launch, behind the admin secret, does)."""
    if entry.startswith("local:"):
        name = entry.removeprefix("local:")
        if not name or not is_inside(data_dir / name, [data_dir]):
            return f"Datasets: {entry!r} must name something inside the data dir ({data_dir})"
        return None
    if entry.startswith(("/", "~", ".")):
        if not is_inside(Path(entry), [data_dir, runs_dir]):
            return f"Datasets: {entry!r} is outside the data dir and the runs dir; only paths inside them are allowed"
        if probe and not Path(entry).expanduser().exists():
            return f"Datasets: {entry!r} does not exist"
        return None
    if HUB_ID.match(entry) and ".." not in entry:
        return None
    return f"Datasets: {entry!r} is neither local:<name> (data dir) nor a Hub dataset id like org/name"


def parse_value(f: FormField, raw: Any, data_dir: Path, runs_dir: Path, probe: bool = True) -> tuple[Any, str | None]:
    """(value, None) or (None, message) for one form field (``probe``: see :func:`check_dataset`)."""
    if f.kind == "bool":
        if isinstance(raw, str):
            raw = raw.strip().lower() in ("1", "true", "yes", "on")
        return bool(raw), None
    if f.kind == "list":
        items = raw if isinstance(raw, list) else re.split(r"[,\n]", str(raw or ""))
        items = [str(i).strip() for i in items if str(i).strip()]
        errors = [m for m in (check_dataset(i, data_dir, runs_dir, probe) for i in items) if m]
        return (None, "\n".join(errors)) if errors else (items, None)
    try:
        return check_value(TrainConfig, f.key, raw), None
    except ConfigError as e:
        return None, str(e)


def form_to_config(job: str, values: dict[str, Any], base: dict[str, Any], data_dir: Path,
                   runs_dir: Path, probe: bool = True) -> TrainConfig:
    """Apply form ``values`` (keyed by ``FORM_KEYS``) to the ``base`` config dict; raises :class:`FormError`
    (``probe=False``: dataset paths are checked by name only, :func:`check_dataset`)."""
    if job not in JOBS:
        raise FormError([f"Job: {job!r} is not one of {', '.join(JOBS)}"])
    data, errors = merge(copy.deepcopy(base), {"job": job}), []
    for f in FIELDS:
        if f.key not in values:
            continue
        value, err = parse_value(f, values[f.key], data_dir, runs_dir, probe)
        if err:
            errors.append(err)
        else:
            set_key(data, f.key, value)
    if errors:
        raise FormError(errors)
    try:
        return from_dict(TrainConfig, data)
    except ConfigError as e:
        raise FormError([f"Config: {m}" for m in e.messages]) from e


def config_to_form(tcfg: TrainConfig) -> dict[str, Any]:
    """Form values (keyed by ``FORM_KEYS``) of a config; the dataset list becomes a comma-separated string."""
    data = to_dict(tcfg)
    return {f.key: ", ".join(get_key(data, f.key)) if f.kind == "list" else get_key(data, f.key) for f in FIELDS}


# ---------------------------------------------------------------- YAML and CLI

def config_yaml(tcfg: TrainConfig) -> str:
    data = to_dict(tcfg)
    data.pop("output_dir", None)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-3].strip() if text.endswith("...") else text


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def cli_command(tcfg: TrainConfig, base_path: Path | None, base: dict[str, Any],
                launcher: Launcher | None = None) -> str:
    """``python -m trainers.<job> --config <base> --set k=v ...`` for the form keys that differ from ``base``; under
    an accelerate ``launcher``: ``accelerate launch --config_file … --num_processes N -m trainers.<job> …``."""
    data = to_dict(tcfg)
    base_cfg = to_dict(from_dict(TrainConfig, merge(base, {"job": tcfg.job})))
    sets = [f"{f.key}={yaml_scalar(get_key(data, f.key))}" for f in FIELDS
            if get_key(data, f.key) != get_key(base_cfg, f.key)]
    parts = ["python", "-m", f"trainers.{tcfg.job}", "--config",
             display_path(base_path) if base_path else f"configs/{tcfg.profile}/{tcfg.job}.yaml"]
    for s in sets:
        parts += ["--set", s]
    return (launcher or Launcher()).command(parts)


# ---------------------------------------------------------------- config files

def config_roots(profile: str, runs_dir: Path) -> tuple[Path, Path]:
    """(shipped configs dir, saved user configs dir)."""
    return REPO_ROOT / "configs" / profile, runs_dir / "configs"


def config_job(path: Path) -> str:
    try:
        return str(read_yaml(path).get("job") or path.stem)
    except ConfigError:
        return ""


def list_configs(profile: str, runs_dir: Path, job: str) -> list[tuple[str, str]]:
    """(label, name) of the shipped and saved configs of ``job``: shipped first, the ``<job>.yaml`` at the top. The
    name (``<profile>/<file>`` or ``saved/<file>``, also the label) is what the form carries; :func:`config_path`
    turns it back into the file on the server."""
    shipped, saved = config_roots(profile, runs_dir)
    out = []
    for root, tag in ((shipped, profile), (saved, "saved")):
        files = sorted(root.glob("*.yaml"), key=lambda p: (p.stem != job, p.name)) if root.is_dir() else []
        out += [(f"{tag}/{p.name}", f"{tag}/{p.name}") for p in files if config_job(p) == job]
    return out


CONFIG_NAME = re.compile(r"^(?P<tag>[\w-]+)/(?P<file>[A-Za-z0-9][\w.-]*\.ya?ml)$")


def config_path(name: str | Path, profile: str, runs_dir: Path) -> Path:
    """The file a config name (:func:`list_configs`) stands for; a path inside the config folders is taken as is."""
    shipped, saved = config_roots(profile, runs_dir)
    m = CONFIG_NAME.match(str(name))
    if m and m["tag"] in (profile, "saved") and ".." not in m["file"]:
        return (shipped if m["tag"] == profile else saved) / m["file"]
    return Path(name)


def load_base(path: str | Path | None, profile: str, runs_dir: Path) -> dict[str, Any]:
    """The dict of a config file from the shipped or saved dirs, by name or path ({} for none); others are refused."""
    if not path:
        return {}
    path = config_path(path, profile, runs_dir)
    if path.suffix not in (".yaml", ".yml") or not is_inside(path, list(config_roots(profile, runs_dir))):
        raise FormError([f"Config: {path} is not a config in configs/{profile}/ or {runs_dir / 'configs'}"])
    try:
        return read_yaml(path)
    except ConfigError as e:
        raise FormError([f"Config: {e}"]) from e


def save_config(tcfg: TrainConfig, name: str, runs_dir: Path) -> Path:
    """Write ``tcfg`` to ``<runs_dir>/configs/<name>.yaml``; the name is letters, digits, ``_.-`` only."""
    name = name.strip().removesuffix(".yaml")
    if not SAVE_NAME.match(name):
        raise FormError([f"Config name: {name!r} must be 1-64 letters, digits, '_', '.' or '-'"])
    path = runs_dir / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(tcfg), encoding="utf-8")
    return path
