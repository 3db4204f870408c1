"""Configuration: defaults without files, env over file, errors that name file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.config import (
    ConfigError,
    build_redactor,
    build_sampler,
    load_registry,
    load_settings,
    store_backend,
)

ROOT = Path(__file__).resolve().parents[2]


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


# --- every kind of invalid value names where it came from, its key, the value and what is accepted


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("sampling:\n  default_rate: 1.5\n", "sampling.default_rate: 1.5 is not between 0 and 1"),
        ("sampling:\n  production_rate: -0.5\n", "sampling.production_rate: -0.5 is not between 0 and 1"),
        (
            "sampling:\n  agent_rates:\n    gap_analyzer: 2\n",
            "sampling.agent_rates.gap_analyzer: 2 is not between 0 and 1",
        ),
        (
            "sampling:\n  always_sample_agents: orchestrator\n",
            "sampling.always_sample_agents: 'orchestrator' is not a list",
        ),
        ("sampling:\n  always_sample_errors: maybe\n", "sampling.always_sample_errors: 'maybe' is not true or false"),
        ("batching:\n  max_batch_size: 0\n", "batching.max_batch_size: 0 is not between 1 and 100000"),
        ("batching:\n  max_batch_size: abc\n", "batching.max_batch_size: 'abc' is not an integer"),
        (
            "batching:\n  max_batch_wait_s: 0\n",
            "batching.max_batch_wait_s: 0 is out of range: accepted values are greater than 0",
        ),
        (
            "store:\n  backend: mysql\n",
            "store.backend: 'mysql' is not one of: 'auto', 'sqlite', 'postgres' or 'supabase'",
        ),
        ("opik:\n  workspace: [1]\n", "opik.workspace: [1] is not a string"),
        ("sampling:\n  bogus: 1\n", "sampling.bogus: unknown key; accepted keys: default_rate, always_sample_errors"),
        ("bogus_section: {}\n", "bogus_section: unknown section; accepted sections: batching, store, sampling"),
        ("sampling: 5\n", "sampling: 5 is not a mapping of keys to values"),
        (
            "circuit_breaker:\n  failure_threshold: 0\n",
            "circuit_breaker.failure_threshold: 0 is not between 1 and 1000",
        ),
        ("circuit_breaker:\n  recovery_timeout_s: -1\n", "circuit_breaker.recovery_timeout_s: -1 is out of range"),
        ("redaction:\n  max_value_bytes: 10\n", "redaction.max_value_bytes: 10 is not between 256 and"),
        ("redaction:\n  enabled: sometimes\n", "redaction.enabled: 'sometimes' is not true or false"),
        (
            "redaction:\n  max_value_bytes: 100000\n  max_span_bytes: 50000\n",
            "redaction: max_span_bytes (50000) must be at least max_value_bytes (100000)",
        ),
        (
            "redaction:\n  extra_patterns: ['(']\n",
            "redaction.extra_patterns: extra_patterns[0] '(' is not a valid regular",
        ),
        ("sampling:\n  default_rate: 0.5\n  default_rate: 0.6\n", "key 'default_rate' appears twice"),
        ("sampling: [\n", "not valid YAML"),
    ],
)
def test_each_invalid_value_names_file_key_value_and_what_is_accepted(
    tmp_path: Path, yaml_text: str, expected: str
) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_settings(file)
    message = str(caught.value)
    assert str(file) in message
    assert expected in message, message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text("sampling:\n  default_rate: 7\nbatching:\n  max_batch_size: -1\nstore:\n  color: blue\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(file)
    message = str(caught.value)
    for key in ("sampling.default_rate: 7", "batching.max_batch_size: -1", "store.color: unknown key"):
        assert key in message


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("OBS_SAMPLING__DEFAULT_RATE", "1.5", "sampling.default_rate: 1.5 is not between 0 and 1"),
        ("OBS_BATCHING__MAX_BATCH_SIZE", "lots", "batching.max_batch_size: lots is not an integer"),
        ("OBS_STORE__BACKEND", "mysql", "store.backend: mysql is not one of"),
        ("OBS_SAMPLING__BOGUS", "1", "sampling.bogus: unknown key"),
        ("OBS_SAMPLNG__DEFAULT_RATE", "0.1", "'samplng' is an unknown section; accepted sections: batching"),
        ("OBS_SAMPLING__AGENT_RATES", "gap_analyzer=0.5", "sampling.agent_rates: gap_analyzer=0.5 is not valid JSON"),
        ("OBS_SAMPLING__AGENT_RATES", '{"gap_analyzer": 3}', "sampling.agent_rates.gap_analyzer: 3 is not between 0"),
        ("OBS_SAMPLING", '{"default_rate": 3}', "sampling.default_rate: 3 is not between 0 and 1"),
    ],
)
def test_errors_caused_by_the_environment_name_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "missing.yaml")
    message = str(caught.value)
    assert f"environment variable {var}: " in message and expected in message, message


def test_a_value_echoed_in_an_error_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBS_STORE__BACKEND", "postgresql://svc:hunter2hunter2@db/app")
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "missing.yaml")
    message = str(caught.value)
    assert "hunter2hunter2" not in message and "postgresql://svc:[REDACTED]@db/app" in message


def test_env_overrides_win_over_the_file_for_every_kind_of_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text(
        "sampling:\n  default_rate: 0.5\n  agent_rates: {explainer: 0.2, orchestrator: 0.9}\n"
        "redaction:\n  extra_sensitive_keys: [ssn]\n  max_value_bytes: 4096\n"
    )
    monkeypatch.setenv("OBS_SAMPLING__DEFAULT_RATE", "0.1")
    monkeypatch.setenv("OBS_SAMPLING__ALWAYS_SAMPLE_AGENTS", '["orchestrator"]')
    monkeypatch.setenv("OBS_SAMPLING__AGENT_RATES", '{"drift_monitor": 0.3, "explainer": 0.7}')
    monkeypatch.setenv("OBS_CIRCUIT_BREAKER__FAILURE_THRESHOLD", "9")
    monkeypatch.setenv("OBS_REDACTION__ENABLED", "false")
    settings = load_settings(file)
    assert settings.sampling.default_rate == 0.1
    assert settings.sampling.always_sample_agents == ["orchestrator"]
    # A mapping from the environment is merged into the file's, key by key, the environment winning.
    assert settings.sampling.agent_rates == {"explainer": 0.7, "orchestrator": 0.9, "drift_monitor": 0.3}
    assert settings.circuit_breaker.failure_threshold == 9
    assert settings.redaction.enabled is False
    assert settings.redaction.extra_sensitive_keys == ["ssn"] and settings.redaction.max_value_bytes == 4096


def test_no_files_at_all_give_working_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "config"
    empty.mkdir()
    monkeypatch.setenv("OBS_CONFIG_DIR", str(empty))
    settings = load_settings()
    assert settings.sampling.default_rate == 1.0 and settings.sampling.agent_rates == {}
    assert settings.circuit_breaker.failure_threshold == 5 and settings.circuit_breaker.recovery_timeout_s == 30
    assert settings.redaction.enabled and settings.redaction.max_value_bytes == 32_768
    assert settings.redaction.max_span_bytes == 262_144
    assert load_registry().tier_of("gap_analyzer") == -1
    from src.agents.ml_foundation.observability_connector.wiring import build_context

    context = build_context()
    assert build_sampler(context.settings).rate == 1.0 and build_redactor(context.settings).enabled


def test_the_shipped_file_has_every_section() -> None:
    import yaml

    data = yaml.safe_load((ROOT / "config" / "observability.yaml").read_text())
    assert set(data) >= {"opik", "sampling", "batching", "circuit_breaker", "retention", "cache", "store", "redaction"}
    assert data["circuit_breaker"] == {"failure_threshold": 5, "recovery_timeout_s": 30}
    assert data["redaction"]["max_value_bytes"] == 32768 and data["redaction"]["max_span_bytes"] == 262144
    assert data["redaction"]["enabled"] is True and data["redaction"]["extra_sensitive_keys"] == []
    load_settings(ROOT / "config" / "observability.yaml")  # and it validates


def test_nothing_but_config_file_py_reads_yaml() -> None:
    package = ROOT / "src"
    readers = [
        path.relative_to(ROOT)
        for path in package.rglob("*.py")
        if path.name != "config_file.py" and ("import yaml" in path.read_text() or "from yaml" in path.read_text())
    ]
    assert readers == []


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "tiers: {0: a, 1: b}\nagents:\n  x: {tier: 9}\n",
            "agents.x.tier: 9 is not a known tier; accepted tiers: 0 (a), 1 (b)",
        ),
        ("tiers: {0: a}\nagents:\n  x: {tier: two}\n", "agents.x.tier: 'two' is not an integer; accepted tiers: 0 (a)"),
        ("tiers: {0: a}\nagents:\n  x: {tier: 1.5}\n", "agents.x.tier: 1.5 is not an integer"),
        ("tiers: {0: a}\nagents:\n  x: {}\n", "agents.x.tier: is required"),
        ("tiers: {0: a}\nagents:\n  x: {tier: 0, colour: red}\n", "agents.x.colour: unknown key; accepted keys: tier"),
        ("tiers: {0: a}\nagents:\n  x: 3\n", "agents.x: 3 is not a mapping like {tier: 2}"),
        ("tiers: {zero: a}\n", "tiers.zero: 'zero' is not an integer tier number"),
        (
            "tiers: {0: a}\nteams: {}\n",
            "teams: unknown section; accepted sections: tiers, agents, observability_connector",
        ),
    ],
)
def test_agent_registry_errors_name_file_key_value_and_what_is_accepted(
    tmp_path: Path, yaml_text: str, expected: str
) -> None:
    file = tmp_path / "agent_config.yaml"
    file.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_registry(file)
    message = str(caught.value)
    assert str(file) in message and expected in message, message


# --- configuration files are size-limited and parsed safely


def _bomb(levels: int = 9) -> str:
    """The "billion laughs": each level is nine aliases of the one before (9**levels values)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("loader", [load_settings, load_registry])
def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path, loader: object) -> None:
    import time

    from src.agents.ml_foundation.observability_connector.config import MAX_CONFIG_BYTES

    file = tmp_path / "big.yaml"
    with file.open("w") as handle:
        handle.write("sampling:\n  always_sample_agents:\n")
        handle.write("  - agent\n" * (50_000_000 // 10))
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        loader(file)  # type: ignore[operator]
    assert time.perf_counter() - started < 1.0
    assert str(caught.value) == (
        f"{file}: {file.stat().st_size:,} bytes is too large for a configuration file "
        f"(at most {MAX_CONFIG_BYTES:,} bytes); is this the right file?"
    )


def test_a_file_stat_cannot_size_is_still_bounded() -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    with pytest.raises(ConfigError, match=r"/dev/zero: more than 1,048,576 bytes is too large"):
        load_settings("/dev/zero")


@pytest.mark.parametrize("loader", [load_settings, load_registry])
def test_a_yaml_alias_bomb_is_refused_quickly_instead_of_exhausting_memory(tmp_path: Path, loader: object) -> None:
    import time

    file = tmp_path / "bomb.yaml"
    file.write_text(_bomb())
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        loader(file)  # type: ignore[operator]
    assert time.perf_counter() - started < 1.0
    assert f"{file}: refused: it stands for more than 100,000 values once its aliases (*name) are expanded" in str(
        caught.value
    )


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text("sampling: &loop\n  agent_rates: *loop\n")
    with pytest.raises(ConfigError, match="contains an alias \\(\\*name\\) to itself"):
        load_settings(file)


def test_ordinary_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    file = tmp_path / "agent_config.yaml"
    file.write_text(
        "tiers: {0: foundation, 1: analysis}\n"
        "agents:\n"
        "  scope_definer: &foundation {tier: 0}\n"
        "  data_preparer: *foundation\n"
        "  explainer: {<<: *foundation, tier: 1}\n"
    )
    registry = load_registry(file)
    assert registry.agents == {"scope_definer": 0, "data_preparer": 0, "explainer": 1}


def test_a_large_but_honest_file_under_the_limits_loads(tmp_path: Path) -> None:
    file = tmp_path / "observability.yaml"
    names = [f"agent_{i}" for i in range(5_000)]
    file.write_text("sampling:\n  always_sample_agents:\n" + "".join(f"    - {n}\n" for n in names))
    assert load_settings(file).sampling.always_sample_agents == names


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d, "is a directory, not a YAML configuration file"),
        (
            lambda d: _write(d / "latin1.yaml", "sampling:\n  default_rate: 0.5  # caf\xe9\n".encode("latin-1")),
            "not UTF-8",
        ),
        (lambda d: _write(d / "deep.yaml", ("[" * 5_000 + "]" * 5_000).encode()), "not valid YAML"),
        (lambda d: _write(d / "list.yaml", b"- 1\n- 2\n"), "expected a mapping of sections at the top, got list"),
    ],
)
def test_unreadable_or_odd_files_are_one_clear_config_error(tmp_path: Path, make: object, expected: str) -> None:
    file = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ConfigError) as caught:
        load_settings(file)
    assert str(file) in str(caught.value) and expected in str(caught.value), str(caught.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_path_too_long_for_the_os_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot be read: File name too long"):
        load_settings("/tmp/" + "x" * 5_000 + ".yaml")


def test_retired_opik_backlog_keys_still_load_with_a_warning() -> None:
    """A file written for the former in-memory Opik backlog keeps loading; the keys are named as ignored."""
    import warnings

    from src.agents.ml_foundation.observability_connector.settings import ObservabilitySettings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = ObservabilitySettings(opik={"replay_backlog_max_mb": 16, "retry_backoff_s": 0.5, "wait_s": 2})
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert messages == [
        "retired setting(s) ignored: opik.replay_backlog_max_mb, opik.retry_backoff_s; Opik's retries, backoff "
        "and overflow are the delivery layer's (batching.retry_*, batching.spool_*)"
    ]
    assert settings.opik.wait_s == 2  # the keys that still mean something are read as before
