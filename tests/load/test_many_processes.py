"""Many processes, one data directory: every span stored once and sent to Opik once.

Four worker processes share a working directory (the SQLite store and the spool) and the Opik
test receiver. Opik fails for part of the run, so every worker spools Opik's batches and the
backlog is replayed through the spool's per-sink lease: one process at a time, whichever holds
it. Each worker, once its own spans are flushed, stays until the shared spool is empty, so the
lease changes hands as workers leave. Then: 100,000 rows in the store, 100,000 spans at the
receiver, no id written twice.

The crash variant kills one worker with SIGKILL while Opik is down: everything it acknowledged
(a flush returned, no Opik send in flight, so each span is stored and, for Opik, on disk) is
delivered by the workers that keep running, the lease it may have held taken over at once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.spool import Spool, SpoolError
from src.mlops import opik_span_id
from tests.fixtures.opik_receiver import OpikReceiver
from tests.fixtures.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def worker_script(data: Path, opik_url: str, n_spans: int, acked: Path | None, report: Path) -> str:
    """A worker: ``n_spans`` spans in traces of 10, flushed every 500; then it waits until the
    shared spool is empty (replaying it whenever it holds the lease) and reports its counters."""
    return textwrap.dedent(
        f"""
        import asyncio, json, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
        from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings

        settings = ObservabilitySettings(
            store={{"sqlite_path": {str(data / "spans.db")!r}}},
            opik={{"enabled": True, "url": {opik_url!r}, "request_timeout_s": 20.0, "wait_s": 0.0}},
            circuit_breaker={{"failure_threshold": 3, "recovery_timeout_s": 0.3}},
            batching={{
                "spool_path": {str(data / "spool.db")!r}, "max_batch_size": 500, "max_batch_wait_s": 0.05,
                "max_queue_size": 100_000, "retry_initial_s": 0.05, "retry_max_s": 0.3, "sink_timeout_s": 30.0,
            }},
        )
        acked_path = {str(acked) if acked else None!r}

        async def main():
            obs = ObservabilityConnectorAgent(settings)
            out = open(acked_path, "a", buffering=1) if acked_path else None
            done = 0
            while done < {n_spans}:
                ids = []
                for _ in range(50):
                    async with obs.span("route", "orchestrator") as root:
                        for _ in range(9):
                            with obs.span("step", "gap_analyzer") as child:
                                pass
                            ids.append(f"{{child.trace_id}} {{child.span_id}}")
                    ids.append(f"{{root.trace_id}} {{root.span_id}}")
                done += len(ids)
                assert await obs.flush(timeout=120), obs.last_flush
                if out is not None:  # acknowledged: stored, and Opik's copy sent or on disk
                    opik = obs._context.opik_delivery
                    while opik.in_flight:
                        await asyncio.sleep(0.005)
                    out.write("\\n".join(ids) + "\\n")
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                status = obs.get_status()
                if status["spool"]["batches"] == 0 and obs._context.opik_delivery.in_flight == 0:
                    break
                await asyncio.sleep(0.05)
            status = obs.get_status()
            await obs.aclose()
            with open({str(report)!r}, "w") as f:
                json.dump({{"spool": status["spool"], "opik": status["opik"]}}, f, default=str)

        asyncio.run(main())
        """
    )


class SpansOutage(OpikReceiver):
    """The test receiver, whose outage can refuse span requests only (``spans_down``).

    The Opik sink sends a batch's spans and its traces as two concurrent requests and retries the
    whole batch when either fails. An outage that began between the two (spans taken, traces
    refused) would resend spans the receiver already counted: a sink matter, not a replay one.
    Refusing span requests only, the outage tests what this file is about: spooled batches
    replayed by several processes, each exactly once.
    """

    spans_down = False

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if self.spans_down and method == "POST" and path.endswith("/spans/batch"):
            return 500, {"code": 500, "message": "There was an error processing your request."}
        return super()._answer(method, path, body)


@pytest.fixture
def receiver() -> Iterator[SpansOutage]:
    # Bodies are checked by the receiver's other tests; here it only counts ids (a CPU to spare).
    server = SpansOutage()
    server.validate_bodies = False
    server.start()
    try:
        yield server
    finally:
        server.close()


def start_worker(data: Path, receiver: OpikReceiver, n: int, name: str, acked: Path | None = None) -> subprocess.Popen:
    report = data / f"{name}.json"
    log = open(data / f"{name}.log", "w")  # noqa: SIM115 - closed with the process's end
    return subprocess.Popen(
        [sys.executable, "-c", worker_script(data, receiver.url, n, acked, report)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def watch_leases(spool_path: Path, holders: set[int]) -> None:
    """Note which processes hold Opik's replay lease (for the report: the replay changes hands)."""
    try:
        spool = Spool(spool_path, read_only=True)
        try:
            holders.update(lease.pid for lease in spool.replay_leases().values())
        finally:
            spool.close()
    except SpoolError:
        pass


def stored_keys(data: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data / "spans.db") as conn:
        return list(conn.execute("SELECT trace_id, span_id FROM ml_observability_spans"))


def finish(procs: list[subprocess.Popen], data: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for path in data.glob("*.log"):
        assert "Traceback" not in path.read_text(), path.read_text()[-3000:]
    assert [p.returncode for p in procs] == [0] * len(procs), [p.returncode for p in procs]


def test_four_processes_25000_spans_each_into_one_data_directory(receiver: SpansOutage, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    started = time.monotonic()
    procs = [start_worker(data, receiver, 25_000, f"w{i}") for i in range(4)]
    holders: set[int] = set()
    try:
        # Opik fails for a stretch of the run, once every worker is sending: each one spools.
        wait_until(lambda: len(receiver.spans) >= 20_000, 90, "20,000 spans at Opik")
        receiver.spans_down = True
        t_error = time.monotonic() - started
        spool = data / "spool.db"

        def opik_backlog() -> int:
            watch_leases(spool, holders)
            try:
                reader = Spool(spool, read_only=True)
                try:
                    return reader.stats().pending_by_sink.get("opik", 0)
                finally:
                    reader.close()
            except SpoolError:
                return 0

        wait_until(lambda: opik_backlog() >= 40, 60, "Opik's batches to wait in the spool", interval=0.05)
        receiver.spans_down = False
        t_ok = time.monotonic() - started
        while any(p.poll() is None for p in procs) and time.monotonic() - started < 170:
            watch_leases(spool, holders)
            time.sleep(0.05)
        finish(procs, data, 10)
    finally:
        for p in procs:
            p.kill()
    elapsed = time.monotonic() - started

    keys = stored_keys(data)
    assert len(keys) == 100_000 and len(set(keys)) == 100_000
    assert len(receiver.spans) == 100_000
    dups = receiver.duplicate_span_ids()
    assert dups == [], (len(dups), receiver.stats()["by_status"], [receiver.span_writes[d] for d in dups[:20]])
    assert set(receiver.spans) == {opik_span_id(t, s) for t, s in keys}
    reports = [json.loads((data / f"w{i}.json").read_text()) for i in range(4)]
    spooled = [r["opik"].get("delivery", r["opik"]).get("spans_spooled", 0) for r in reports]
    print(
        f"\n4 x 25,000 spans in {elapsed:.1f} s; Opik spans spooled per worker {spooled}; lease holders {holders}; "
        f"Opik failing from {t_error:.1f} s to {t_ok:.1f} s"
    )
    assert holders, "nobody replayed the spool"


def test_a_worker_killed_with_sigkill_loses_nothing_it_acknowledged(receiver: OpikReceiver, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    acked_file = data / "acked.txt"
    spool = data / "spool.db"
    receiver.mode = "error"  # Opik down while the victim lives: its Opik spans wait on disk
    victim = start_worker(data, receiver, 1_000_000, "victim", acked_file)
    try:

        def acked_and_replaying() -> bool:
            assert victim.poll() is None, (data / "victim.log").read_text()[-3000:]
            holders: set[int] = set()
            watch_leases(spool, holders)
            lines = len(acked_file.read_text().splitlines()) if acked_file.exists() else 0
            return lines >= 2_000 and victim.pid in holders

        wait_until(
            acked_and_replaying, 60, "the victim to acknowledge 2,000 spans and hold Opik's lease", interval=0.02
        )
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    killed_at = time.monotonic()
    receiver.mode = "ok"
    acked = [tuple(line.split()) for line in acked_file.read_text().splitlines() if line.strip()]
    assert len(acked) >= 2_000
    survivors = [start_worker(data, receiver, 5_000, f"s{i}") for i in range(2)]
    holders: set[int] = set()
    taken_over_after: float | None = None
    try:
        while any(p.poll() is None for p in survivors) and time.monotonic() - killed_at < 120:
            watch_leases(spool, holders)
            if taken_over_after is None and holders & {p.pid for p in survivors}:
                taken_over_after = time.monotonic() - killed_at
            time.sleep(0.02)
        finish(survivors, data, 10)
    finally:
        for p in survivors:
            p.kill()

    # The dead victim's lease (valid for far longer) was taken over as soon as a survivor asked.
    assert taken_over_after is not None and taken_over_after < 60, taken_over_after  # the lease ran 85 s
    keys = stored_keys(data)
    assert len(keys) == len(set(keys))
    assert set(acked) <= set(keys), "a span the victim acknowledged is not in the store"
    missing = {opik_span_id(t, s) for t, s in acked} - set(receiver.spans)
    assert not missing, f"{len(missing)} acknowledged span(s) never reached Opik"
    assert receiver.duplicate_span_ids() == []
    assert Spool(spool, read_only=True).stats().batches == 0
    print(f"\nvictim acknowledged {len(acked):,} spans; its lease taken over {taken_over_after:.1f} s after SIGKILL")
