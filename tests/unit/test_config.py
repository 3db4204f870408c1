"""Configuration: defaults without files, env over file, errors that name file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.config import (
    ConfigError,
    load_registry,
    load_settings,
    store_backend,
)


def test_no_file_gives_working_defaults(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "missing.yaml")
    assert settings.batching.max_batch_size == 100
    assert settings.batching.max_batch_wait_s == 5.0
    assert settings.retention.days == 90


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text("batching:\n  max_batch_size: 50\n  max_batch_wait_s: 2\n")
    assert load_settings(file).batching.max_batch_size == 50
    monkeypatch.setenv("OBS_BATCHING__MAX_BATCH_SIZE", "500")
    settings = load_settings(file)
    assert settings.batching.max_batch_size == 500
    assert settings.batching.max_batch_wait_s == 2


def test_invalid_value_names_file_key_and_value(tmp_path: Path) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text("sampling:\n  default_rate: 1.5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(file)
    message = str(caught.value)
    assert str(file) in message and "sampling.default_rate" in message and "1.5" in message


def test_registry_has_the_18_agents_in_6_tiers() -> None:
    registry = load_registry()
    assert len(registry.agents) == 18
    assert sorted(registry.by_tier()) == [0, 1, 2, 3, 4, 5]
    assert registry.tier_of("gap_analyzer") == 2
    assert registry.tier_of("somebody_new") == -1


def test_store_selection_from_the_environment() -> None:
    settings = load_settings()
    assert store_backend(settings, {}) == "sqlite"
    assert store_backend(settings, {"DATABASE_URL": "postgresql://u@h/db"}) == "postgres"
    assert store_backend(settings, {"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_SERVICE_KEY": "k"}) == "supabase"
