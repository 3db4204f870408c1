"""A producer is killed with SIGKILL mid-load; after a restart every span it had handed to
the spool is in the store.

The store really fails in the producer (its folder cannot be created: a file stands where
the folder should be), so every batch goes to the on-disk spool; the restarted process has a
working store and replays the spool on start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from tests.fixtures.waiting import wait_until, wait_until_async

REPO = Path(__file__).resolve().parents[2]


def producer_script(store_path: Path, spool_path: Path, acked: Path) -> str:
    return textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
        settings = ObservabilitySettings(
            store={{"sqlite_path": {str(store_path)!r}}},
            batching={{"spool_path": {str(spool_path)!r}, "max_batch_wait_s": 60, "retry_initial_s": 30}},
        )
        obs = ObservabilityConnectorAgent(settings)
        async def main():
            with open({str(acked)!r}, "a", buffering=1) as out:
                while True:
                    ids = []
                    for _ in range(50):
                        async with obs.span("step", "data_preparer") as span:
                            span.set_attribute("payload", "x" * 200)
                        ids.append(span.span_id)
                    await obs.flush()          # returns once the batch is stored or spooled
                    out.write(" ".join(ids) + "\\n")
        asyncio.run(main())
        """
    )


def test_spooled_spans_survive_sigkill_and_reach_the_store_after_restart(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the store's folder should be")
    spool_path = tmp_path / "spool.db"
    acked_file = tmp_path / "acked.txt"
    proc = subprocess.Popen(
        [sys.executable, "-c", producer_script(blocker / "spans.db", spool_path, acked_file)],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:

        def twenty_batches_acked() -> bool:
            assert proc.poll() is None, "the producer died on its own"
            return acked_file.exists() and len(acked_file.read_text().splitlines()) >= 20

        wait_until(twenty_batches_acked, 60, interval=0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    acked = {span_id for line in acked_file.read_text().splitlines() for span_id in line.split()}
    assert len(acked) >= 1000

    good_store = tmp_path / "good" / "spans.db"
    settings = ObservabilitySettings(
        store={"sqlite_path": str(good_store)},
        batching={"spool_path": str(spool_path), "retry_initial_s": 0.01, "retry_max_s": 0.05},
    )

    async def restart() -> dict[str, object]:
        obs = ObservabilityConnectorAgent(settings)
        obs.start()  # resume the spool now: the constructor opens nothing
        try:

            def spool_drained() -> bool:
                spool = obs.get_status()["spool"]
                assert isinstance(spool, dict)
                return spool["batches"] == 0

            await wait_until_async(spool_drained, 60, "the spool to drain into the good store", interval=0.05)
            return obs.get_status()
        finally:
            await obs.aclose()

    status = asyncio.run(restart())
    assert status["spool"]["batches"] == 0, status  # type: ignore[index]
    with sqlite3.connect(good_store) as conn:
        stored = {row[0] for row in conn.execute("SELECT span_id FROM ml_observability_spans")}
    assert acked <= stored
