"""Profiles, env overrides and validation of the one config tree."""
import pytest

from medadapt.config import OFFLINE_MODEL, ConfigError, load_config, load_train_config


def test_auto_picks_offline_when_hub_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config("auto")
    assert cfg.profile == "offline" and not cfg.hub_available
    assert cfg.model.name_or_path == OFFLINE_MODEL
    text = cfg.describe()
    assert "offline" in text and "SmolLM2-135M-Instruct" in text and "unreachable" in text


def test_reference_profile_has_seed_settings():
    cfg = load_config("reference")
    assert cfg.model.name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" and cfg.model.reasoning_template
    assert (cfg.generation.temperature, cfg.generation.top_p) == (0.6, 0.95)
    assert "MilyaShams/MedRAG_statpearls" in cfg.rag.corpus


def test_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDADAPT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDADAPT_MAX_NEW_TOKENS", "77")
    cfg = load_config("offline")
    assert cfg.paths.resolve("data_dir") == tmp_path and cfg.generation.max_new_tokens == 77
    monkeypatch.setenv("MEDADAPT_MAX_NEW_TOKENS", "lots")
    with pytest.raises(ConfigError, match="MEDADAPT_MAX_NEW_TOKENS"):
        load_config("offline")


def test_public_mode_forces_safe_defaults(monkeypatch):
    monkeypatch.setenv("MEDADAPT_PUBLIC", "1")
    cfg = load_config("offline", {"model": {"trust_remote_code": True}})
    assert cfg.public and cfg.model.trust_remote_code is False


@pytest.mark.parametrize("over,msg", [({"modell": {}}, "unknown key"), ({"rag": {"topk": 3}}, "rag")])
def test_unknown_keys_rejected(over, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config("offline", over)


def test_unknown_profile_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: sft\n  lora: [")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_train_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_train_config(bad)


@pytest.mark.parametrize("value, public", [("0", False), ("false", False), ("", False), ("1", True), ("yes", True)])
def test_public_flag_values(monkeypatch, value, public):
    from medadapt.ui.common import is_public

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("MEDADAPT_PUBLIC", value)
    cfg = load_config("offline")
    assert cfg.public is public and is_public(cfg) is public
