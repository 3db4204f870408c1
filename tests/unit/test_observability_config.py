"""The host's configuration names: ``ObservabilityConfig`` and ``get_observability_config()``,
one process-wide settings object built by ``load_settings``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.config import (
    ConfigError,
    ObservabilityConfig,
    ObservabilitySettings,
    get_observability_config,
    load_settings,
    reset_observability_config,
)


@pytest.fixture(autouse=True)
def _fresh_process_settings() -> Iterator[None]:
    reset_observability_config()
    yield
    reset_observability_config()


def test_one_settings_class_under_both_names() -> None:
    assert ObservabilityConfig is ObservabilitySettings


def test_no_arguments_on_a_fresh_machine_give_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBS_CONFIG_DIR", str(tmp_path))  # no observability.yaml anywhere
    config = get_observability_config()
    assert isinstance(config, ObservabilityConfig)
    assert config == load_settings(tmp_path / "missing.yaml")
    assert (config.batching.max_batch_size, config.circuit_breaker.failure_threshold) == (100, 5)
    assert config.opik.project_name == "e2i-causal-analytics" and config.cache.backend == "memory"


def test_loaded_once_per_process_until_reloaded_or_reset(tmp_path: Path) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text("batching:\n  max_batch_size: 42\n")
    first = get_observability_config(file)
    assert first.batching.max_batch_size == 42
    file.write_text("batching:\n  max_batch_size: 7\n")
    assert get_observability_config() is first  # the path of a later call is not read
    assert get_observability_config(file) is first

    reloaded = get_observability_config(file, force_reload=True)
    assert reloaded is not first and reloaded.batching.max_batch_size == 7
    assert get_observability_config() is reloaded

    reset_observability_config()
    assert get_observability_config(file) is not reloaded


def test_environment_overrides_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("OBS_CIRCUIT_BREAKER__FAILURE_THRESHOLD", "9")
    assert get_observability_config().circuit_breaker.failure_threshold == 9


def test_a_broken_file_is_a_clear_error_and_nothing_is_cached(tmp_path: Path) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text("cache:\n  ttl_short_s: -1\n")
    with pytest.raises(ConfigError, match=r"cache\.ttl_short_s: -1"):
        get_observability_config(file)
    file.write_text("cache:\n  ttl_short_s: 5\n")
    assert get_observability_config(file).cache.ttl_short_s == 5
