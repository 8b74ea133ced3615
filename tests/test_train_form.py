"""Training form ↔ TrainConfig: validation messages, YAML, the equivalent CLI, config files."""
from __future__ import annotations

import shlex

import pytest
import yaml

from medadapt.config import TrainConfig
from medadapt.jobs.train_form import (FIELDS, FORM_KEYS, FormError, cli_command, config_to_form, config_yaml,
                                 form_to_config, list_configs, load_base, save_config)
from trainers.cli import parse_overrides


@pytest.fixture
def dirs(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    (data / "medqa").mkdir(parents=True)
    (data / "medqa" / "train.jsonl").write_text("{}\n")
    runs.mkdir()
    return data, runs


def good_values() -> dict:
    return config_to_form(TrainConfig(max_steps=20, dataset=["local:medical_o1"]))


def test_round_trip_keeps_every_form_value(dirs):
    values = good_values()
    assert set(values) == set(FORM_KEYS)
    tcfg = form_to_config("sft", values, {}, *dirs)
    assert config_to_form(tcfg) == values and tcfg.dataset == ["local:medical_o1"]


def test_form_values_are_applied_over_the_base_config(dirs):
    base = {"job": "sft", "lora": {"r": 4, "target_modules": ["q_proj"]}, "seed": 7}
    values = {**good_values(), "lora.r": 32.0, "learning_rate": "1e-4", "packing": True, "dataset": "local:medqa, org/ds"}
    tcfg = form_to_config("sft", values, base, *dirs)
    assert (tcfg.lora.r, tcfg.lora.target_modules, tcfg.seed) == (32, ["q_proj"], 7)
    assert isinstance(tcfg.lora.r, int) and tcfg.learning_rate == 1e-4 and tcfg.packing is True
    assert tcfg.dataset == ["local:medqa", "org/ds"]


@pytest.mark.parametrize("key, value, message", [
    ("lora.r", 0, "LoRA rank r: must be between 1 and 512 (got 0)"),
    ("lora.r", 8.5, "LoRA rank r: must be a whole number"),
    ("lora.alpha", None, "LoRA alpha: a value is required"),
    ("lora.dropout", 0.95, "LoRA dropout: must be between 0 and 0.9"),
    ("learning_rate", "fast", "Learning rate: 'fast' is not a number"),
    ("learning_rate", 0.5, "Learning rate: must be between 1e-07 and 0.1"),
    ("learning_rate", float("nan"), "Learning rate: must be a finite number"),
    ("num_epochs", 0, "Epochs: must be between 0.01 and 100"),
    ("max_steps", 0, "Max steps: use -1"),
    ("max_steps", -5, "Max steps: must be between -1 and"),
    ("per_device_batch_size", 0, "Batch size: must be between 1 and 512"),
    ("gradient_accumulation_steps", 5000, "Gradient accumulation: must be between 1 and 1024"),
    ("max_length", 8, "Max sequence length: must be between 32 and 32768"),
    ("max_samples", -1, "Max training samples: must be between 0"),
    ("eval_steps", 0, "Eval every (steps): must be between 1"),
    ("dataset", "local:../../etc", "Datasets: 'local:../../etc' must name something inside the data dir"),
    ("dataset", "/etc/passwd", "Datasets: '/etc/passwd' is outside the data dir and the runs dir"),
    ("dataset", "~/secrets.json", "is outside the data dir and the runs dir"),
    ("dataset", "not a dataset", "is neither local:<name> (data dir) nor a Hub dataset id"),
    ("dataset", "org/../x", "is neither local:<name>"),
])
def test_bad_values_are_refused_with_one_message_each(dirs, key, value, message):
    with pytest.raises(FormError) as err:
        form_to_config("sft", {**good_values(), key: value}, {}, *dirs)
    assert len(err.value.messages) == 1
    assert message in err.value.messages[0]


def test_every_bad_value_gets_its_own_message(dirs):
    values = {**good_values(), "lora.r": -1, "learning_rate": "x", "dataset": "/etc, local:ok, bad name"}
    with pytest.raises(FormError) as err:
        form_to_config("sft", values, {}, *dirs)
    text = str(err.value)
    assert "LoRA rank r" in text and "Learning rate" in text and "'/etc'" in text and "'bad name'" in text
    assert "local:ok" not in text


def test_paths_inside_data_and_runs_dirs_are_allowed(dirs):
    data, runs = dirs
    (runs / "extra.jsonl").write_text("{}\n")
    values = {**good_values(), "dataset": f"{data / 'medqa' / 'train.jsonl'}, {runs / 'extra.jsonl'}"}
    assert len(form_to_config("sft", values, {}, *dirs).dataset) == 2
    with pytest.raises(FormError, match="does not exist"):
        form_to_config("sft", {**good_values(), "dataset": str(data / "missing.jsonl")}, {}, *dirs)


def test_unknown_job_and_unknown_base_keys_are_refused(dirs):
    with pytest.raises(FormError, match="Job: 'dpo'"):
        form_to_config("dpo", good_values(), {}, *dirs)
    with pytest.raises(FormError, match="unknown key"):
        form_to_config("sft", good_values(), {"lora_rank": 8}, *dirs)


def test_cli_command_sets_exactly_the_changed_keys(dirs, tmp_path):
    base_path = tmp_path / "base.yaml"
    base = {"job": "sft", "max_steps": 20, "dataset": ["local:medical_o1"], "lora": {"r": 16}}
    values = {**good_values(), "lora.r": 8, "learning_rate": 3e-4, "dataset": "local:medqa, local:pubmedqa"}
    tcfg = form_to_config("sft", values, base, *dirs)
    cmd = cli_command(tcfg, base_path, base)
    argv = shlex.split(cmd)
    assert argv[:5] == ["python", "-m", "trainers.sft", "--config", str(base_path)]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert len(sets) == 3
    # the trainers' own override parser reads them back to the form's values
    assert parse_overrides(sets) == {"lora": {"r": 8}, "learning_rate": 3e-4, "dataset": ["local:medqa", "local:pubmedqa"]}
    assert cli_command(form_to_config("sft", good_values(), base, *dirs), base_path, base).count("--set") == 0


def test_yaml_preview_loads_back_to_the_same_config(dirs):
    tcfg = form_to_config("cpt", {**good_values(), "packing": True}, {}, *dirs)
    data = yaml.safe_load(config_yaml(tcfg))
    assert data["job"] == "cpt" and data["packing"] is True and "output_dir" not in data
    assert TrainConfig(**{k: v for k, v in data.items() if k != "lora"}).max_steps == 20


def test_save_list_and_load_configs(dirs):
    _, runs = dirs
    tcfg = form_to_config("msft", {**good_values(), "lora.r": 4}, {}, *dirs)
    path = save_config(tcfg, "my-run.v1", runs)
    assert path == runs / "configs" / "my-run.v1.yaml"
    labels = [label for label, _ in list_configs("offline", runs, "msft")]
    assert "saved/my-run.v1.yaml" in labels
    assert "saved/my-run.v1.yaml" not in [label for label, _ in list_configs("offline", runs, "sft")]
    assert load_base(path, "offline", runs)["lora"]["r"] == 4
    for bad in ("../escape", "a b", ""):
        with pytest.raises(FormError, match="Config name"):
            save_config(tcfg, bad, runs)
    with pytest.raises(FormError, match="is not a config in"):
        load_base("/etc/hosts.yaml", "offline", runs)


def test_fields_cover_the_main_hyperparameters():
    keys = {f.key for f in FIELDS}
    assert {"lora.r", "lora.alpha", "lora.dropout", "learning_rate", "num_epochs", "max_steps", "packing",
            "per_device_batch_size", "gradient_accumulation_steps", "max_length", "dataset"} <= keys
