"""Per-sink delivery: outages spool, recovery replays in order exactly once, bad rows dead-letter.

The store is the real SQLite backend; outages are injected by a thin switch in front of it
(the Postgres stop/start load test exercises a real outage).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from src.agents.ml_foundation.observability_connector.delivery import RetryPolicy, SinkDelivery
from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.agents.ml_foundation.observability_connector.sinks import StoreSink
from src.agents.ml_foundation.observability_connector.spool import Spool
from src.repositories.observability_span import ObservabilitySpanRepository
from tests.fixtures.span_rows import make_span

FAST = RetryPolicy(initial_s=0.01, max_s=0.05, timeout_s=2.0)


class Switchable:
    """The real store behind an on/off switch (``down`` raises like a refused connection)."""

    def __init__(self, store: ObservabilitySpanRepository) -> None:
        self.store = store
        self.down = False
        self.calls = 0

    async def insert_spans_batch(self, spans: Any) -> Any:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("connection refused")
        return await self.store.insert_spans_batch(spans)


def spans(start: int, n: int) -> list[ObservabilitySpan]:
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    return [
        make_span(
            start=t0 + timedelta(milliseconds=i),
            trace_id="t",
            span_id=f"s{i:05d}",
            operation_name="op",
            duration_ms=1.0,
        )
        for i in range(start, start + n)
    ]


async def test_outage_spools_and_recovery_replays_everything_once(
    tmp_path: Path, store: ObservabilitySpanRepository
) -> None:
    target = Switchable(store)
    delivery = SinkDelivery(StoreSink(target), Spool(tmp_path / "spool.db"), FAST)
    delivery.start()
    first = await delivery.deliver(spans(0, 50))
    assert first.delivered == 50 and first.spooled == 0

    target.down = True
    for k in range(1, 5):
        outcome = await delivery.deliver(spans(50 * k, 50))
        assert outcome.spooled == 50 and outcome.delivered == 0
    assert delivery.backlogged
    calls_while_down = target.calls
    await asyncio.sleep(0.3)
    assert target.calls > calls_while_down  # the replay task keeps probing with backoff
    assert await store.count_spans() == 50

    target.down = False
    outcome = await delivery.deliver(spans(250, 50))  # queued behind the backlog, keeps order
    assert outcome.spooled == 50
    deadline = asyncio.get_running_loop().time() + 10
    while delivery.backlogged and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    await delivery.stop()
    assert not delivery.backlogged
    assert await store.count_spans() == 300
    assert delivery.spool.stats().batches == 0
    assert delivery.stats.batches_retried >= 1


async def test_a_rejected_row_is_dead_lettered_and_the_rest_stored(
    tmp_path: Path, store: ObservabilitySpanRepository
) -> None:
    batch = spans(0, 10)
    bad = batch[3].model_copy(update={"status": "exploded"})  # violates the table's CHECK
    batch[3] = bad
    delivery = SinkDelivery(StoreSink(store), Spool(tmp_path / "spool.db"), FAST)
    outcome = await delivery.deliver(batch)
    assert outcome.delivered == 9 and outcome.rejected == 1
    assert "s00003" in outcome.reasons[0] and "CHECK" in outcome.reasons[0]
    assert await store.count_spans() == 9
    sink, span_id, reason = delivery.spool.dead_letters()[0]
    assert (sink, span_id) == ("store", "s00003") and "CHECK" in reason
    assert not delivery.backlogged  # a bad row is final, never retried


async def test_a_backlog_left_by_a_previous_process_is_replayed_on_start(
    tmp_path: Path, store: ObservabilitySpanRepository
) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.append([s.model_dump(mode="json") for s in spans(0, 20)], ["store"])
    spool.close()
    delivery = SinkDelivery(StoreSink(store), Spool(tmp_path / "spool.db"), FAST)
    assert delivery.backlogged
    assert await delivery.drain()
    assert await store.count_spans() == 20


async def test_a_hanging_sink_times_out_into_the_spool(tmp_path: Path) -> None:
    class Hanging:
        name = "opik"

        async def send(self, spans: list[ObservabilitySpan]) -> Any:
            await asyncio.sleep(3600)

    delivery = SinkDelivery(Hanging(), Spool(tmp_path / "spool.db"), RetryPolicy(0.01, 0.05, timeout_s=0.2))
    outcome = await delivery.deliver(spans(0, 5))
    assert outcome.spooled == 5 and "TimeoutError" in (outcome.error or "")
