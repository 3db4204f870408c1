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


# --------------------------------------------------------------------------- replay leases


def test_a_sinks_replay_lease_has_one_holder_until_released_or_expired(tmp_path: Path) -> None:
    first, second = Spool(tmp_path / "spool.db"), Spool(tmp_path / "spool.db")  # as two processes
    assert first.acquire_replay("opik", ttl_s=60)
    assert first.acquire_replay("opik", ttl_s=60)  # renewing is taking again
    assert not second.acquire_replay("opik", ttl_s=60)
    assert second.acquire_replay("store", ttl_s=60)  # one lease per sink
    lease = second.stats().replay_leases["opik"]
    assert lease.pid == os.getpid() and not lease.mine
    assert first.stats().replay_leases["opik"].mine

    first.release_replay("opik")
    assert second.acquire_replay("opik", ttl_s=0.05)
    second.release_replay("store")
    assert set(first.replay_leases()) == {"opik"}
    # A holder that stops renewing (hung, or on another host) loses the lease when it expires.
    wait_until(lambda: first.acquire_replay("opik", ttl_s=60), 5, "the expired lease to be free")
    assert not second.acquire_replay("opik", ttl_s=60)
    first.close()  # closing gives back what it held
    assert second.acquire_replay("opik", ttl_s=60)


def test_a_lease_held_by_a_process_killed_with_sigkill_is_free_at_once(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    marker = tmp_path / "held"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.spool import Spool
        spool = Spool({str(path)!r})
        assert spool.acquire_replay("opik", ttl_s=3600)
        open({str(marker)!r}, "w").close()
        time.sleep(3600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_until(marker.exists, 20, "the other process to hold the lease")
        here = Spool(path)
        assert not here.acquire_replay("opik", ttl_s=60)  # alive: its lease holds
        assert here.replay_leases()["opik"].pid == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert here.acquire_replay("opik", ttl_s=60)  # dead: no waiting out its hour


def test_a_forked_child_never_inherits_its_parents_lease(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    assert spool.acquire_replay("store", ttl_s=60)
    pid = os.fork()
    if pid == 0:  # the child: the same object, but a new owner that holds nothing
        code = 0 if not spool.acquire_replay("store", ttl_s=60) and spool.acquire_replay("opik", 60) else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert spool.acquire_replay("store", ttl_s=60)  # the parent still holds its own


# --------------------------------------------------------------------------- a disk that cannot take a batch


def test_a_batch_the_spool_cannot_write_is_counted_and_said_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    from src.agents.ml_foundation.observability_connector.spool import SpoolWriteError

    caplog.set_level(logging.ERROR)
    spool = Spool("/proc/obs-connector-test/spool.db")  # cannot be created, even by root
    for _ in range(3):
        with pytest.raises(SpoolWriteError, match="could not keep 3 span"):
            spool.append(rows(0), ["store"])
    lost = spool.unwritten.stats()
    assert (lost.batches, lost.spans) == (3, 9)
    lines = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "/proc/obs-connector-test/spool.db" in lines[0] and "OBS_BATCHING__SPOOL_PATH" in lines[0]


def test_cli_status_says_which_process_replays_which_sink(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from src.agents.ml_foundation.observability_connector.cli import app

    spool = Spool(tmp_path / "spool.db")  # beside --store: where the connector looks by default
    spool.append(rows(0), ["opik"])
    assert spool.acquire_replay("opik", ttl_s=60)
    shown = CliRunner().invoke(app, ["--store", str(tmp_path / "spans.db"), "status"], env={"COLUMNS": "300"})
    assert f"replayed now: opik by pid {os.getpid()}" in shown.output, shown.output
    spool.close()


def test_cli_replay_leaves_a_backlog_another_process_replays_and_says_who(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from src.agents.ml_foundation.observability_connector.cli import app

    store = ["--store", str(tmp_path / "spans.db")]
    assert CliRunner().invoke(app, [*store, "migrate"]).exit_code == 0
    other = Spool(tmp_path / "spool.db")  # another process, replaying the store's backlog now
    other.append(rows(0), ["store"])
    assert other.acquire_replay("store", ttl_s=60)
    done = CliRunner().invoke(app, [*store, "replay"], env={"COLUMNS": "300"})
    assert done.exit_code != 0
    assert f"being replayed by pid {os.getpid()}" in done.output, done.output
    assert other.stats().pending_by_sink == {"store": 1}  # not sent twice
    other.close()


def test_four_processes_creating_and_writing_one_spool_at_once_lose_no_batch(tmp_path: Path) -> None:
    """Concurrent writers on one new file: creating it (WAL switch, schema) and appending queue on
    SQLite's locks; none fails with "database is locked"."""
    path = tmp_path / "spool.db"
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.spool import Spool
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        spool = Spool({str(path)!r})
        for i in range(100):
            spool.append([{{"span_id": f"{{os.getpid()}}-{{i}}"}}], ["store", "opik"])
            if i % 10 == 0:
                assert spool.acquire_replay("store", ttl_s=60) in (True, False)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    go.touch()  # all at once, onto a file none of them has created yet
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    stats = Spool(path).stats()
    assert stats.batches == 400 and stats.pending_by_sink == {"store": 400, "opik": 400}
