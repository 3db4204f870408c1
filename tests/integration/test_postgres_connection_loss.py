"""A Postgres connection lost in the middle of a COPY, against the suite's real Postgres cluster.

To catch the COPY in flight every time (not by luck of timing), another session holds an
uncommitted insert of the batch's last span: the COPY streams every row before it and then waits
on that row's unique key. The test finds that waiting backend in ``pg_stat_activity`` and ends it
with ``pg_terminate_backend``, as an administrator, a failover or a pooler would.

The whole batch is one transaction, so the lost attempt leaves no row behind; the retry (once in
the repository, then by the delivery layer's spool and replay) writes every span exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from src.agents.ml_foundation.observability_connector.delivery import RetryPolicy, SinkDelivery
from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.agents.ml_foundation.observability_connector.sinks import StoreSink
from src.agents.ml_foundation.observability_connector.spool import Spool
from src.repositories.postgres import PostgresSpanRepository
from tests.fixtures.span_rows import make_span

SPANS = 20_000
WAIT_S = 30.0

_WAITING_COPY = """SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND query LIKE 'COPY %%' AND wait_event_type = 'Lock'
  AND NOT (pid = ANY(%s))"""


class Session:
    """A second session: holds a row lock, finds and ends the COPY's backend."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.ended: list[int] = []

    async def hold(self, span: ObservabilitySpan) -> None:
        """Insert ``span`` without committing: a COPY of the same key waits for this transaction."""
        await self.conn.execute(
            "INSERT INTO ml_observability_spans (id, span_id, trace_id, operation_name, agent_name, start_time, "
            "status) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (span.id, span.span_id, span.trace_id, span.operation_name, span.agent_name, span.start_time, "ok"),
        )

    async def waiting_copy(self) -> int:
        """The backend of a COPY blocked on the held row (one not ended before), once there is one."""
        async with await psycopg.AsyncConnection.connect(self.conn.info.dsn, autocommit=True) as watcher:
            async with asyncio.timeout(WAIT_S):
                while True:
                    row = await (await watcher.execute(_WAITING_COPY, (self.ended,))).fetchone()
                    if row is not None:
                        return int(row[0])
                    await asyncio.sleep(0.005)

    async def end(self, pid: int) -> None:
        async with await psycopg.AsyncConnection.connect(self.conn.info.dsn, autocommit=True) as admin:
            ended = await (await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))).fetchone()
        assert ended is not None and ended[0] is True
        self.ended.append(pid)

    async def end_the_waiting_copy(self) -> None:
        await self.end(await self.waiting_copy())


@pytest.fixture
async def session(postgres_dsn: str) -> AsyncIterator[Session]:
    conn = await psycopg.AsyncConnection.connect(postgres_dsn)
    try:
        yield Session(conn)
    finally:
        await conn.close()


@pytest.fixture
async def repo(postgres_dsn: str) -> AsyncIterator[PostgresSpanRepository]:
    repository = PostgresSpanRepository(postgres_dsn)
    await repository.open()
    try:
        yield repository
    finally:
        await repository.close()


def batch(n: int = SPANS) -> list[ObservabilitySpan]:
    trace_id = make_span().trace_id
    return [make_span(trace_id=trace_id, attributes={"n": i}) for i in range(n)]


async def counts(dsn: str) -> tuple[int, int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute("SELECT COUNT(*), COUNT(DISTINCT (trace_id, span_id)) FROM ml_observability_spans")
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_a_copy_cut_once_is_retried_whole_on_a_new_connection(
    repo: PostgresSpanRepository, session: Session, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    spans = batch()
    await session.hold(spans[-1])
    writing = asyncio.create_task(repo.insert_spans_batch(spans))
    await session.end_the_waiting_copy()
    await session.waiting_copy()  # the retry, on a new backend, streamed the batch up to the same row
    assert not writing.done()
    await session.conn.rollback()  # the other session gives the row up
    result = await asyncio.wait_for(writing, WAIT_S)
    assert (result.inserted, result.duplicates, result.failed) == (SPANS, 0, 0)
    assert await counts(postgres_dsn) == (SPANS, SPANS)
    assert repo.write_paths == {"direct": 1}, "one batch, written whole by the retry"
    assert "was lost while writing 20000 spans" in caplog.text


@pytest.mark.parametrize("other_session", ["rolls-back", "commits-the-same-span"])
async def test_a_batch_whose_retry_is_cut_too_is_spooled_and_replayed_exactly_once(
    repo: PostgresSpanRepository, session: Session, postgres_dsn: str, tmp_path: Path, other_session: str
) -> None:
    spans = batch()
    spool = Spool(tmp_path / "spool.db")
    delivery = SinkDelivery(StoreSink(repo), spool, RetryPolicy(0.01, 0.02, WAIT_S), replay_task=False)
    try:
        await session.hold(spans[-1])
        delivering = asyncio.create_task(delivery.deliver(spans))
        await session.end_the_waiting_copy()
        await session.end_the_waiting_copy()  # the repository's own retry, cut as well
        outcome = await asyncio.wait_for(delivering, WAIT_S)
        assert outcome.spooled == SPANS and outcome.delivered == 0, outcome
        assert "connection" in (outcome.error or delivery.stats.last_error or "").lower()
        assert await counts(postgres_dsn) == (0, 0), "a cut COPY leaves no row behind"

        if other_session == "rolls-back":
            await session.conn.rollback()
        else:  # a concurrent writer of the same span got there first
            await session.conn.commit()
        assert await delivery.drain(deadline=None)
        assert await counts(postgres_dsn) == (SPANS, SPANS)
        assert spool.stats().batches == 0 and spool.dead_letters() == []
    finally:
        await delivery.aclose()
        spool.close()
