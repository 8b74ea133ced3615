"""The shared command line of the trainers: ``--config``, ``--output_dir``, ``--resume``, ``--max_steps``, overrides.

Overrides are ``key=value`` (positional or ``--set``), dotted for nested keys (``lora.r=8``); values are parsed as
YAML (``true``, ``3e-4``, ``[q_proj, v_proj]``); the config tree coerces and bounds-checks them
(:class:`medadapt.config.Validated`). Nothing heavy is imported here, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
from typing import Any

import yaml

from medadapt.config import ConfigError, TrainConfig, load_train_config, merge, read_yaml


def make_parser(job: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m trainers.{job}", description=description)
    p.add_argument("--config", required=True, help=f"trainer YAML, e.g. configs/offline/{job}.yaml")
    p.add_argument("--output_dir", default=None, help="run directory (default <runs_dir>/<profile>/<job>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output_dir "
                   "(without --output_dir: the newest unfinished run of this job)")
    p.add_argument("--max_steps", type=int, default=None, help="override max_steps")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set lora.r=8")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more overrides, e.g. learning_rate=1e-4")
    return p


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lora.r=8", "packing=true"]`` → ``{"lora": {"r": 8}, "packing": True}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not KEY=VALUE")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {pair!r}: {e}") from e
        value = _number(value)
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` as a string; numbers are what such a value means here."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def config_from_args(args: argparse.Namespace, job: str) -> TrainConfig:
    over = parse_overrides(list(args.sets) + list(args.overrides))
    if args.max_steps is not None:
        over["max_steps"] = args.max_steps
    if args.output_dir:
        over["output_dir"] = args.output_dir
    if "job" not in read_yaml(args.config):
        over = merge({"job": job}, over)
    tcfg = load_train_config(args.config, over)
    if tcfg.job != job:
        raise ConfigError(f"{args.config} is a {tcfg.job!r} config; run it with python -m trainers.{tcfg.job}")
    return tcfg
