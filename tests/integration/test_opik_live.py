"""A trace sent to a real Opik and read back through its REST API.

Runs only when ``OPIK_URL_OVERRIDE`` (self-hosted Opik, e.g. ``http://localhost:5173/api``) or
``OPIK_API_KEY`` (Opik Cloud; with ``OPIK_WORKSPACE``) is set in the environment that starts
pytest; the values are read here at import, because the suite removes them from every other
test's environment so nothing reaches a real Opik by accident. ``OPIK_PROJECT_NAME`` picks the
project (default ``obs-connector-live-test``).

The same scenario also runs against the suite's local receiver, so the read-back code is
exercised on every run, not only when someone has an Opik at hand.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import (
    ObservabilitySettings,
    build_deliveries,
    load_registry,
)
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.mlops import OpikConfig, opik_span_id, opik_trace_id
from src.mlops.opik_settings import OPIK_ENV_VARS
from src.mlops.opik_sink import OpikSink
from src.mlops.opik_wire import load_rest_client
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.opik_receiver import OpikReceiver

LIVE_ENV: dict[str, str] = {name: os.environ[name] for name in OPIK_ENV_VARS if os.environ.get(name)}
LIVE = bool(LIVE_ENV.get("OPIK_URL_OVERRIDE") or LIVE_ENV.get("OPIK_API_KEY"))
SKIP_REASON = (
    "live Opik test: set OPIK_URL_OVERRIDE (self-hosted Opik) or OPIK_API_KEY and OPIK_WORKSPACE (Opik Cloud) "
    "to send a trace to a real Opik and read it back"
)


async def send_and_read_back(environ: Mapping[str, str], tmp_path: Path, read_timeout: float) -> None:
    project = environ.get("OPIK_PROJECT_NAME") or "obs-connector-live-test"
    settings = ObservabilitySettings(
        opik={"project_name": project},
        batching={"max_batch_size": 100, "max_batch_wait_s": 0.2, "spool_path": str(tmp_path / "spool.db")},
    )
    config = OpikConfig.from_settings(settings, {**environ, "OPIK_PROJECT_NAME": project})
    registry = load_registry()
    store = ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "live.db"))
    built = build_deliveries(store, settings, registry, opik=OpikSink(config, tier_names=registry.tier_names))
    connector = built.connector
    context = ConnectorContext(
        store=store, settings=settings, registry=registry,
        store_delivery=built.store, opik_delivery=built.opik, opik=connector,
    )  # fmt: skip
    obs = ObservabilityConnectorAgent(context=context)
    try:
        async with obs.span("route_request", "orchestrator") as root:
            root.set_input({"question": "live test"})
            llm = obs.record_llm_call("gap_analyzer", "gpt-4o-mini", 21, 7, duration_ms=12, provider="openai")
            root.set_output({"answer": 42})
        assert await connector.flush(30), connector.get_status()
        status = connector.get_status()
        assert status["spans_sent"] == 2 and status["spans_rejected"] == 0, status
    finally:
        await obs.aclose()

    async_api, _api_error, _httpx = load_rest_client()
    api = async_api(base_url=config.url, api_key=config.api_key, workspace_name=config.workspace, timeout=30)
    trace_id = opik_trace_id(root.trace_id)
    deadline = time.monotonic() + read_timeout
    while True:  # Opik writes asynchronously: poll until both spans are readable
        try:
            trace: Any = await api.traces.get_trace_by_id(trace_id)
            page = await api.spans.get_spans_by_project(project_name=project, trace_id=trace_id, size=10)
            spans = {s.id: s for s in page.content or []}
            if len(spans) == 2:
                break
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"trace {trace_id} was not readable from {config.url} within {read_timeout} s")
        await asyncio.sleep(1.0)

    assert trace.name == "route_request"
    llm_span = spans[opik_span_id(root.trace_id, llm.span_id)]
    assert llm_span.parent_span_id == opik_span_id(root.trace_id, root.span_id)
    assert llm_span.type == "llm" and llm_span.model == "gpt-4o-mini" and llm_span.provider == "openai"
    assert llm_span.usage is not None and llm_span.usage.get("total_tokens") == 28


@pytest.mark.skipif(not LIVE, reason=SKIP_REASON)
async def test_live_opik_receives_a_trace_and_returns_it(tmp_path: Path) -> None:
    await send_and_read_back(LIVE_ENV, tmp_path, read_timeout=60)


async def test_the_live_scenario_against_the_local_receiver(opik_receiver: OpikReceiver, tmp_path: Path) -> None:
    await send_and_read_back({"OPIK_URL_OVERRIDE": opik_receiver.url}, tmp_path, read_timeout=5)
