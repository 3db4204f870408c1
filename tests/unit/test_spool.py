"""The on-disk spool: durable before acknowledged, per-sink cursors, bounded with counted drops."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.spool import Spool
from tests.fixtures.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def rows(start: int, n: int = 3) -> list[dict[str, object]]:
    return [{"span_id": f"s{i}", "trace_id": "t", "attributes": {"i": i}} for i in range(start, start + n)]


def test_each_sink_replays_its_own_backlog_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    a = spool.append(rows(0), ["store", "opik"])
    b = spool.append(rows(3), ["opik"])
    c = spool.append(rows(6), ["store", "opik"])
    assert [x.id for x in spool.pending("store", limit=10)] == [a, c]
    assert [x.id for x in spool.pending("opik", limit=10)] == [a, b, c]
    assert spool.pending("opik")[0].rows == rows(0)

    spool.ack("store", a)
    assert spool.stats().batches == 3  # opik still owes batch a
    spool.ack("opik", a)
    stats = spool.stats()
    assert stats.batches == 2 and stats.spans == 6
    assert stats.pending_by_sink == {"store": 1, "opik": 2}


def test_retry_later_hides_a_batch_until_due_and_make_due_brings_it_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    a = spool.append(rows(0), ["opik"])
    spool.retry_later("opik", a, "HTTP 500", delay_s=60)
    assert spool.pending("opik") == []
    assert spool.pending("opik", now=time.time() + 61)[0].attempts == 1
    spool.make_due("opik")
    assert [x.id for x in spool.pending("opik")] == [a]


def test_the_bound_drops_oldest_batches_and_counts_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=2_000)
    big = [{"span_id": f"s{i}", "blob": os.urandom(400).hex()} for i in range(2)]
    with caplog.at_level(logging.ERROR):
        ids = [spool.append(big, ["store"]) for _ in range(5)]
    stats = spool.stats()
    assert stats.bytes <= 2_000
    assert stats.dropped_batches >= 1 and stats.dropped_spans == 2 * stats.dropped_batches
    remaining = [x.id for x in spool.pending("store", limit=10)]
    assert remaining == ids[-len(remaining) :]  # the newest survive, oldest went first
    assert "spool over its bound" in caplog.text


def test_contents_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    first = Spool(path)
    batch = first.append(rows(0, 100), ["store"])
    first.close()
    again = Spool(path)
    assert [x.id for x in again.pending("store")] == [batch]
    assert again.stats().spans == 100


def test_an_acknowledged_batch_survives_sigkill(tmp_path: Path) -> None:
    """A producer is killed mid-stream; every batch whose append returned is on disk."""
    path = tmp_path / "spool.db"
    marker = tmp_path / "acked.txt"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.spool import Spool
        spool = Spool({str(path)!r})
        with open({str(marker)!r}, "a", buffering=1) as out:
            i = 0
            while True:
                bid = spool.append([{{"span_id": f"s{{i}}", "n": i}}], ["store"])
                out.write(f"{{bid}}\\n")
                i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_until(lambda: marker.exists() and len(marker.read_text().splitlines()) >= 200, 20, "200 acked appends")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    acked = {int(x) for x in marker.read_text().splitlines() if x.strip()}
    assert len(acked) >= 200
    stored = {b.id for b in Spool(path).pending("store", limit=1_000_000)}
    assert acked <= stored


def test_empty_batches_are_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    with pytest.raises(ValueError):
        spool.append([], ["store"])
