"""Disk trouble under the spool, in a real process: a read-only directory, a full disk.

* A spool in a read-only directory is reported once, at start, with the path and what to change;
  the store keeps being written without a spool. (The suite runs as root, for whom no directory
  is read-only: the process then runs without the capabilities that let root write anywhere.)
* A file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored so a write fails with ``EFBIG``
  instead of killing the process) stands for a full disk: every local write fails, the store's
  and the spool's. Nothing raises into the code making spans, the flusher keeps running, Opik
  (remote, unaffected) receives every span, and the spans the spool could not keep are counted
  and said in one log line, not one per batch.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.opik_receiver import OpikReceiver

REPO = Path(__file__).resolve().parents[2]


def run(
    script: str, cwd: Path, *, honour_permissions: bool = False, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter; ``honour_permissions``: as root, without the capabilities
    that let root write anywhere (so a read-only directory is read-only for it too)."""
    command = [sys.executable, "-c", textwrap.dedent(script)]
    if honour_permissions and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: no directory is read-only for this process")
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, "--bounding-set", drop, "--inh-caps", drop, *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_a_spool_in_a_read_only_directory_is_said_at_start_and_the_store_keeps_working(tmp_path: Path) -> None:
    store_dir, spool_dir = tmp_path / "store", tmp_path / "readonly"
    store_dir.mkdir()
    spool_dir.mkdir()
    spool_dir.chmod(0o555)
    script = f"""
        import asyncio, json, logging
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings

        settings = ObservabilitySettings(
            store={{"sqlite_path": {str(store_dir / "spans.db")!r}}},
            batching={{"spool_path": {str(spool_dir / "spool.db")!r}, "max_batch_wait_s": 0.05}},
        )

        async def main():
            obs = ObservabilityConnectorAgent(settings)
            for _ in range(200):
                async with obs.span("step", "data_preparer"):
                    pass
            ok = await obs.flush(timeout=30)
            status = obs.get_status()
            await obs.aclose()
            print("RESULT " + json.dumps({{"ok": ok, "running": status["flusher_running"], "spool": status["spool"]}}))

        asyncio.run(main())
    """
    done = run(script, tmp_path, honour_permissions=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["ok"] is True and result["spool"] is None  # working, without a spool
    lines = [line for line in done.stderr.splitlines() if "spool" in line and line.startswith("ERROR")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert f"the spool {spool_dir / 'spool.db'} cannot be written: its directory is read-only" in lines[0]
    assert "OBS_BATCHING__SPOOL_PATH" in lines[0]  # what to do
    with sqlite3.connect(store_dir / "spans.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM ml_observability_spans").fetchone()[0] == 200
    assert list(spool_dir.iterdir()) == []


def test_a_full_disk_counts_the_lost_spans_logs_once_and_opik_still_gets_everything(tmp_path: Path) -> None:
    receiver = OpikReceiver()
    receiver.validate_bodies = False
    receiver.start()
    data = tmp_path / "data"
    script = f"""
        import asyncio, json, logging, resource, signal
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings

        settings = ObservabilitySettings(
            store={{"sqlite_path": {str(data / "spans.db")!r}}},
            opik={{"enabled": True, "url": {receiver.url!r}, "request_timeout_s": 20.0, "wait_s": 0.0}},
            circuit_breaker={{"failure_threshold": 3, "recovery_timeout_s": 0.2}},
            batching={{"spool_path": {str(data / "spool.db")!r}, "max_batch_size": 50, "max_batch_wait_s": 0.02,
                       "retry_initial_s": 0.05, "retry_max_s": 0.2}},
        )

        async def spans(obs, n):
            for _ in range(n):
                async with obs.span("step", "data_preparer") as span:
                    span.set_attribute("payload", "x" * 200)

        async def main():
            obs = ObservabilityConnectorAgent(settings)
            await spans(obs, 50)
            assert await obs.flush(timeout=30)  # the files exist, the schema is in place
            obs._context.store_delivery.spool.has_pending("store")
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            for _ in range(20):  # the disk is full now: 1,000 more spans, flushed in rounds
                await spans(obs, 50)
                await obs.flush(timeout=30)
            opik = obs._context.opik_delivery
            while opik.in_flight:
                await asyncio.sleep(0.01)
            status = obs.get_status()
            await obs.aclose()
            print("RESULT " + json.dumps({{"running": status["flusher_running"], "spool": status["spool"],
                                           "store_sink": status["store_sink"]}}, default=str))

        asyncio.run(main())
    """
    try:
        done = run(script, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        result = json.loads(done.stdout.split("RESULT ", 1)[1])
        assert result["running"] is True  # the flusher lives on
        assert len(receiver.spans) == 1_050  # Opik, which needs no local disk, got every span
        assert receiver.duplicate_span_ids() == []
        lost = result["spool"]["unwritten"]
        assert lost["spans"] > 0 and lost["batches"] > 0, result
        lines = [line for line in done.stderr.splitlines() if "cannot be written" in line]
        assert len(lines) == 1, done.stderr[-3000:]  # one line a minute, with the counts
        assert str(data / "spool.db") in lines[0] and "free disk space" in lines[0]
    finally:
        receiver.close()
