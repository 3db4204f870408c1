"""Shared fixtures: every test gets its own SQLite store and a clean process-wide context."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LANGGRAPH_CLI_NO_ANALYTICS", "1")

from src.agents.ml_foundation.observability_connector.config import (
    ObservabilitySettings,
    load_registry,
)
from src.agents.ml_foundation.observability_connector.runtime import (
    ConnectorContext,
    set_default_context,
)
from src.mlops.opik_connector import OPIK_ENV_VARS, reset_opik_connector
from src.mlops.otlp_settings import OTLP_ENV_VARS
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository

# Fixture plugins: real servers the suite starts itself (extend this list, don't replace it).
pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.opik_receiver",
    "tests.fixtures.postgres_server",
    "tests.fixtures.otlp_receiver",
    "tests.fixtures.phoenix_server",
]


@pytest.fixture(autouse=True)
def _isolated_default_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nodes called without a runtime use the process-wide context: point it at tmp_path."""
    monkeypatch.setenv("OBS_STORE__SQLITE_PATH", str(tmp_path / "default-spans.db"))
    for var in ("SUPABASE_URL", "SUPABASE_SERVICE_KEY", "OBS_DATABASE_URL", "DATABASE_URL", "OBS_BATCHING__SPOOL_PATH"):
        monkeypatch.delenv(var, raising=False)
    for var in ("OBS_CACHE__BACKEND", "OBS_CACHE__REDIS_URL", "REDIS_URL"):  # the metrics cache stays in memory
        monkeypatch.delenv(var, raising=False)
    # No test reaches a real Opik by accident (the live test reads these at import, and opts in).
    for var in OPIK_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    for var in OTLP_ENV_VARS:  # nor an OTLP endpoint configured on the machine
        monkeypatch.delenv(var, raising=False)
    set_default_context(None)
    yield
    set_default_context(None)
    reset_opik_connector()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ObservabilitySpanRepository]:
    repo = ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "spans.db"))
    yield repo
    await repo.close()


@pytest.fixture
def settings() -> ObservabilitySettings:
    return ObservabilitySettings(batching={"max_batch_size": 100, "max_batch_wait_s": 0.2})


@pytest.fixture
def connector_context(store: ObservabilitySpanRepository, settings: ObservabilitySettings) -> ConnectorContext:
    return ConnectorContext(store=store, settings=settings, registry=load_registry())
