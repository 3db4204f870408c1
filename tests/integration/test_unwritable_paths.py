"""A store or spool path that cannot be written, met at run time: nothing raises into the caller.

The paths fail for root too (the suite runs as root): a directory under ``/proc`` cannot be
created, nor one below a regular file. Each entry point is driven as the host drives it — the
node function ``emit_spans`` with the process-wide context read from ``OBS_*`` variables,
``graph.ainvoke`` with and without a context, and the agent's first span — against the real
SQLite store and spool; the answer is in the returned state (``error`` / ``error_type``, or the
spool's warning saying why the batch waits), in one log line per failed write.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.agents.ml_foundation.observability_connector.graph import graph
from src.agents.ml_foundation.observability_connector.nodes.span_emitter import emit_spans
from src.agents.ml_foundation.observability_connector.runtime import set_default_context
from src.agents.ml_foundation.observability_connector.wiring import build_context
from src.repositories.sqlite import SQLiteSpanRepository

UNDER_PROC = "/proc/obs-connector-test/spans.db"
UNDER_A_FILE = "/etc/passwd/obs/spans.db"


def _event(i: int = 0) -> dict[str, Any]:
    return {
        "span_id": f"s{i}",
        "trace_id": "t-unwritable",
        "agent_name": "explainer",
        "operation": "explain",
        "status": "ok",
        "started_at": datetime.now(UTC).isoformat(),
        "duration_ms": 3.0,
    }


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("path", [UNDER_PROC, UNDER_A_FILE])
async def test_emit_spans_with_an_unwritable_store_returns_the_error(
    path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OBS_STORE__SQLITE_PATH", path)  # the process-wide context reads it
    set_default_context(None)
    caplog.set_level(logging.WARNING)

    out = await emit_spans({"events_to_log": [_event()]})

    assert out["emission_successful"] is False and out["db_writes_successful"] is False
    assert out["error_type"] == "store_unavailable"
    assert f"the SQLite store {path} cannot be created" in out["error"]
    assert out["span_ids_logged"] == []
    # The spool beside it cannot be made either: said once, when the context is built.
    spool_lines = [r for r in _errors(caplog) if "spool" in r.getMessage() and "without a spool" in r.getMessage()]
    assert len(spool_lines) == 1
    write_lines = [r for r in _errors(caplog) if "writing 1 span(s)" in r.getMessage()]
    assert len(write_lines) == 1 and write_lines[0].exc_info is None  # one line, no traceback

    caplog.clear()
    again = await emit_spans({"events_to_log": [_event(1)]})
    assert again["error_type"] == "store_unavailable"
    assert not [r for r in _errors(caplog) if "without a spool" in r.getMessage()], "the spool is reported once"
    assert len(_errors(caplog)) == 1


async def test_graph_ainvoke_with_an_unwritable_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBS_STORE__SQLITE_PATH", UNDER_PROC)
    set_default_context(None)

    state = await graph.ainvoke({"events_to_log": [_event()], "skip_metrics": True})

    assert state["db_writes_successful"] is False and state["emission_successful"] is False
    assert state["error_type"] == "store_unavailable"
    assert UNDER_PROC in state["error"]
    assert any(UNDER_PROC in line for line in state["emission_errors"])


async def test_graph_ainvoke_with_metrics_still_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The metrics node after a failed write meets the same store: an answer, not an exception."""
    monkeypatch.setenv("OBS_STORE__SQLITE_PATH", UNDER_A_FILE)
    set_default_context(None)

    state = await graph.ainvoke({"events_to_log": [_event()]})

    assert state["db_writes_successful"] is False
    assert state.get("error_type")
    assert any("/etc/passwd is a file, not a directory" in line for line in state["emission_errors"])


async def test_graph_ainvoke_with_a_context_built_from_unwritable_settings(tmp_path: Path) -> None:
    settings = ObservabilitySettings(store={"sqlite_path": UNDER_A_FILE})
    context = build_context(settings)  # never raises on a path
    assert context.store_delivery is None  # the spool beside it could not be opened

    state = await graph.ainvoke({"events_to_log": [_event()], "skip_metrics": True}, context=context)

    assert state["error_type"] == "store_unavailable"
    assert "/etc/passwd is a file, not a directory" in state["error"]


async def test_an_unwritable_spool_leaves_the_store_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "spans.db"
    monkeypatch.setenv("OBS_STORE__SQLITE_PATH", str(db))
    monkeypatch.setenv("OBS_BATCHING__SPOOL_PATH", "/proc/obs-connector-test/spool.db")
    set_default_context(None)
    caplog.set_level(logging.WARNING)

    out = await emit_spans({"events_to_log": [_event()]})

    assert out["emission_successful"] is True and out["db_writes_successful"] is True
    assert out["span_ids_logged"] == ["s0"]
    errors = _errors(caplog)
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "the spool /proc/obs-connector-test/spool.db cannot be created or opened" in message
    assert "OBS_BATCHING__SPOOL_PATH" in message  # says what to change
    repo = SQLiteSpanRepository(db, read_only=True)
    try:
        assert await repo.count_spans() == 1
    finally:
        await repo.close()


async def test_an_unwritable_store_with_a_working_spool_keeps_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBS_STORE__SQLITE_PATH", UNDER_PROC)
    monkeypatch.setenv("OBS_BATCHING__SPOOL_PATH", str(tmp_path / "spool.db"))
    set_default_context(None)

    out = await emit_spans({"events_to_log": [_event()]})

    assert out["spans_spooled"] == 1 and out["db_writes_successful"] is False
    assert out["span_ids_logged"] == ["s0"]  # durably accepted: it waits on disk for the store
    assert any(f"the SQLite store {UNDER_PROC} cannot be created" in w for w in out["warnings"])
    from src.agents.ml_foundation.observability_connector.runtime import default_context

    await default_context().store_delivery.stop()
    default_context().store_delivery.spool.close()


async def test_the_agents_first_span_on_an_unwritable_store_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    settings = ObservabilitySettings(
        store={"sqlite_path": UNDER_PROC}, batching={"max_batch_wait_s": 0.05, "shutdown_timeout_s": 2}
    )
    agent = ObservabilityConnectorAgent(settings=settings)  # no I/O here
    async with agent.span("explain", "explainer"):
        pass
    with agent.span("explain_again", "explainer"):
        pass

    assert await agent.flush(timeout=10) is False  # the truth: nothing was stored
    report = agent.last_flush
    assert report is not None and report.failed == 2 and report.delivered == 0
    await agent.aclose()
    # Each failed batch is said once, where it failed: no traceback, no echo from the flusher.
    failures = [r for r in caplog.records if "failed" in r.getMessage() and r.levelno >= logging.WARNING]
    assert failures and all(r.exc_info is None for r in failures)
    assert not [r for r in caplog.records if "delivering a batch" in r.getMessage()]


# --------------------------------------------------------------------------- the store and spool themselves


async def test_a_read_only_store_creates_nothing_and_names_what_is_wrong(tmp_path: Path) -> None:
    from src.repositories.base import StoreUnavailableError
    from src.repositories.sqlite import StoreCorruptError, StoreNotFoundError

    missing = SQLiteSpanRepository(tmp_path / "a" / "b" / "spans.db", read_only=True)
    with pytest.raises(StoreNotFoundError, match=r"^no store at .*/a/b/spans\.db$"):
        await missing.count_spans()
    await missing.close()
    assert list(tmp_path.iterdir()) == []

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\x01not sqlite" * 1000)
    corrupt = SQLiteSpanRepository(garbage, read_only=True)
    with pytest.raises(StoreCorruptError, match="is not a readable database: file is not a database"):
        await corrupt.count_spans()
    await corrupt.close()

    unwritable = SQLiteSpanRepository(UNDER_PROC)
    with pytest.raises(
        StoreUnavailableError, match="cannot be created: No such file or directory: /proc/obs-connector-test"
    ):
        await unwritable.open()
    await unwritable.close()


async def test_a_read_only_store_reads_what_a_writer_stored(tmp_path: Path) -> None:
    from tests.fixtures.span_rows import make_span

    db = tmp_path / "spans.db"
    writer = SQLiteSpanRepository(db)
    reader = SQLiteSpanRepository(db, read_only=True)
    try:
        await writer.insert_spans_batch([make_span(start=datetime.now(UTC), agent="explainer", span_id="w1")])
        assert await reader.count_spans() == 1  # while the writer's connection is open (WAL)
    finally:
        await reader.close()
        await writer.close()


def test_a_read_only_spool_is_never_created_and_a_bad_path_is_a_spool_error(tmp_path: Path) -> None:
    from src.agents.ml_foundation.observability_connector.spool import Spool, SpoolError, SpoolMissingError

    looking = Spool(tmp_path / "x" / "spool.db", read_only=True)
    with pytest.raises(SpoolMissingError):
        looking.stats()
    assert list(tmp_path.iterdir()) == []

    below_a_file = Spool("/etc/passwd/spool.db")
    with pytest.raises(SpoolError, match="cannot be created or opened: /etc/passwd is a file, not a directory"):
        below_a_file.has_pending("store")
