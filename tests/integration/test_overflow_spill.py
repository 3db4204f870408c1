"""Spans spilled under overload go through the whole pipeline when replayed (issue 15, item 2).

An agent built from settings (a temporary SQLite store, its spool) with a 50-span buffer and a
flusher that starts only at ``flush()``: 3,000 spans are handed over first, so all but the
first 50 find the buffer full and wait in the side lane; the flusher spills them to the spool's
overflow lane and replays them through the graph. Each is stored exactly once, redacted like any
other span, and sent to the Opik test receiver once; ``status`` says how many were spilled.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.mlops.opik_connector import set_opik_connector
from tests.fixtures.opik_receiver import OpikReceiver

SPANS = 3_000
SECRET = "sk-proj-" + "Zq7" * 12


@pytest.fixture
def opik_url(opik_receiver: OpikReceiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("OPIK_URL_OVERRIDE", opik_receiver.url)
    set_opik_connector(None)  # the process-wide sink is built from this environment
    yield opik_receiver.url
    set_opik_connector(None)


def _settings(tmp_path: Path, **batching: object) -> ObservabilitySettings:
    return ObservabilitySettings(
        store={"sqlite_path": str(tmp_path / "spans.db")},
        batching={"max_queue_size": 50, "max_batch_size": 50, "max_batch_wait_s": 0.05, **batching},
    )


def _emit(obs: ObservabilityConnectorAgent) -> None:
    for i in range(SPANS):
        with obs.span("spill", "gap_analyzer") as span:
            span.set_attribute("i", i)
            span.set_attribute("api_key", SECRET)
            span.set_input(f"call with {SECRET}")


async def test_spilled_spans_are_stored_once_redacted_and_reach_opik(
    tmp_path: Path, opik_receiver: OpikReceiver, opik_url: str
) -> None:
    obs = ObservabilityConnectorAgent(settings=_settings(tmp_path), start=False)
    try:
        _emit(obs)
        assert len(obs._flusher.collector) == SPANS  # nothing dropped, nothing waited for
        assert await obs.flush(120)
        status = obs.get_status()
        opik = obs.context.opik
        assert opik is not None and await opik.wait_until_sent(60), opik.get_status()
    finally:
        await obs.aclose()

    assert status["spans_spilled"] >= SPANS - 50 and status["spans_replayed"] == status["spans_spilled"]
    assert status["spans_dropped"] == 0 and status["spans_delivered"] == SPANS
    assert status["spool"]["pending_by_sink"].get("overflow", 0) == 0
    with sqlite3.connect(tmp_path / "spans.db") as conn:
        rows = conn.execute("SELECT * FROM ml_observability_spans").fetchall()
        ids = [r[0] for r in conn.execute("SELECT span_id FROM ml_observability_spans")]
        attributes = [r[0] for r in conn.execute("SELECT attributes FROM ml_observability_spans")]
    assert len(rows) == SPANS and len(set(ids)) == SPANS  # each exactly once
    assert not any(SECRET in str(row) for row in rows)  # redacted like any span (attributes and input)
    assert all("[REDACTED]" in text for text in attributes)
    assert len(opik_receiver.spans) == SPANS and opik_receiver.duplicate_span_ids() == []
    assert not any(SECRET in str(body) for body in opik_receiver.spans.values())


async def test_a_spool_at_its_disk_bound_drops_with_a_count_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    obs = ObservabilityConnectorAgent(settings=_settings(tmp_path, spool_max_mb=0.001), start=False)
    try:
        with caplog.at_level(logging.ERROR):
            _emit(obs)
            assert await obs.flush(120) is False  # flush() says spans were lost
        status = obs.get_status()
        report = obs.last_flush
    finally:
        await obs.aclose()
    lost = status["spans_dropped_for_disk"]
    assert lost > 0 and status["spans_dropped"] == lost
    assert report is not None and report.dropped == lost and report.delivered == SPANS - lost
    assert len([r for r in caplog.records if "could not be spilled" in r.getMessage()]) == 1
    assert _stored(tmp_path / "spans.db") == SPANS - lost  # every span not counted as dropped is stored


def _stored(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM ml_observability_spans").fetchone()[0])
    except sqlite3.OperationalError:  # no table: nothing was ever written
        return 0
