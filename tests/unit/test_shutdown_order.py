"""One owner of shutdown order: producers, then flushers, then sinks, whatever order they were
registered in; at a real interpreter exit, spans still queued reach the store before it closes."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.lifecycle import (
    FLUSHERS,
    PRODUCERS,
    SINKS,
    ShutdownOrder,
)

REPO = Path(__file__).resolve().parents[2]


def test_stages_run_in_order_whatever_the_registration_order() -> None:
    order = ShutdownOrder()
    ran: list[str] = []
    order.add(SINKS, lambda: ran.append("store closed"))
    order.add(FLUSHERS, lambda: ran.append("flushed"))
    sink_two = lambda: ran.append("opik closed")  # noqa: E731
    order.add(SINKS, sink_two)
    order.add(PRODUCERS, lambda: ran.append("handler ended its runs"))
    assert order.add(SINKS, sink_two) is False  # the same callback twice runs once
    order.run()
    assert ran == ["handler ended its runs", "flushed", "store closed", "opik closed"]


def test_a_failing_callback_does_not_stop_the_later_stages(caplog: pytest.LogCaptureFixture) -> None:
    order = ShutdownOrder()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("flusher exploded")

    order.add(FLUSHERS, broken)
    order.add(SINKS, lambda: ran.append("closed"))
    order.run()
    assert ran == ["closed"]
    assert "flusher exploded" in caplog.text


def test_a_registered_method_does_not_keep_its_object_alive() -> None:
    order = ShutdownOrder()
    closed: list[int] = []

    class Sink:
        def close_now(self) -> None:
            closed.append(1)

    kept, dropped = Sink(), Sink()
    order.add(SINKS, kept.close_now)
    order.add(SINKS, dropped.close_now)
    assert order.add(SINKS, kept.close_now) is False
    del dropped
    gc.collect()
    order.run()
    assert closed == [1]


def _exit_script(store: Path, out: Path) -> str:
    return textwrap.dedent(
        f"""
        import json, sqlite3, sys
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
        from src.agents.ml_foundation.observability_connector.lifecycle import PRODUCERS, SINKS, on_shutdown

        seen = []

        def producer():
            seen.append("producer")
            with obs.span("last_words", "data_preparer"):  # a span made during shutdown is delivered too
                pass

        def close_store():
            # Registered before any flusher existed: the stage, not the registration order, decides.
            with sqlite3.connect({str(store)!r}) as db:
                stored = db.execute("SELECT count(*) FROM ml_observability_spans").fetchone()[0]
            seen.append("sink")
            with open({str(out)!r}, "w") as f:
                json.dump({{"stored_when_the_sink_closed": stored, "seen": seen,
                           "queued_at_exit": queued}}, f)

        on_shutdown(SINKS, close_store)
        on_shutdown(PRODUCERS, producer)
        settings = ObservabilitySettings(
            store={{"sqlite_path": {str(store)!r}}},
            batching={{"max_batch_size": 1000, "max_batch_wait_s": 60}},
        )
        obs = ObservabilityConnectorAgent(settings)
        for i in range(300):
            with obs.span("step", "data_preparer") as span:
                span.set_attribute("i", i)
        queued = len(obs._flusher.collector)
        # No flush, no close: the process just ends with its spans queued.
        """
    )


def test_spans_queued_at_exit_are_flushed_before_the_store_closes(tmp_path: Path) -> None:
    store, out = tmp_path / "spans.db", tmp_path / "exit.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBS_")}
    proc = subprocess.run(
        [sys.executable, "-c", _exit_script(store, out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["queued_at_exit"] == 300  # nothing was delivered before the exit began
    assert report["seen"] == ["producer", "sink"]
    assert report["stored_when_the_sink_closed"] == 301  # the producer's last span included
