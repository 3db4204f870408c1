"""Per-sink delivery: outages spool, recovery replays in order exactly once, bad rows dead-letter,
a breaker per sink, and the fan-out of one batch to every sink.

The store is the real SQLite backend; outages are injected by a thin switch in front of it
(the Postgres stop/start load test exercises a real outage). The breaker's time is an injected
clock, so its tests never sleep.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from src.agents.ml_foundation.observability_connector.delivery import (
    DeliveryOutcome,
    RetryPolicy,
    SinkDelivery,
    SinkResult,
)
from src.agents.ml_foundation.observability_connector.fanout import fan_out
from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.agents.ml_foundation.observability_connector.sinks import StoreSink
from src.agents.ml_foundation.observability_connector.spool import Spool
from src.mlops.circuit_breaker import CircuitBreaker, CircuitState
from src.repositories.observability_span import ObservabilitySpanRepository
from tests.fixtures.span_rows import make_span

FAST = RetryPolicy(initial_s=0.01, max_s=0.05, timeout_s=2.0)


class Clock:
    """The breaker's time, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


class Recorder:
    """A sink that keeps what it got (in order), can be switched down, or made to hang."""

    def __init__(self, name: str = "opik") -> None:
        self.name = name
        self.down = False
        self.hang = False
        self.calls = 0
        self.got: list[str] = []

    async def send(self, spans: list[ObservabilitySpan]) -> SinkResult:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.down:
            raise ConnectionRefusedError("connection refused")
        self.got.extend(s.span_id for s in spans)
        return SinkResult(delivered=len(spans))

    async def aclose(self) -> None:
        pass


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
    # A breaker that never opens here: this test is about backoff; the breaker has its own below.
    never = CircuitBreaker(failure_threshold=1000)
    delivery = SinkDelivery(StoreSink(target), Spool(tmp_path / "spool.db"), FAST, breaker=never)
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


async def test_the_breaker_opens_sends_new_batches_to_the_spool_and_probes_only_when_it_allows(
    tmp_path: Path,
) -> None:
    clock = Clock()
    sink = Recorder()
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout_s=30.0, name="opik", clock=clock)
    no_backoff = RetryPolicy(initial_s=0.0, max_s=0.0, timeout_s=2.0)
    delivery = SinkDelivery(sink, Spool(tmp_path / "spool.db"), no_backoff, breaker=breaker, replay_task=False)
    sink.down = True
    assert (await delivery.deliver(spans(0, 5))).spooled == 5  # failure 1, then spooled
    assert await delivery.replay_once() == 0  # failure 2
    assert await delivery.replay_once() == 0  # failure 3: open
    assert breaker.state is CircuitState.OPEN and sink.calls == 3

    calls = sink.calls
    outcome = await delivery.deliver(spans(5, 5))
    assert outcome.spooled == 5 and sink.calls == calls, "an open breaker: straight to the spool, no call"
    assert await delivery.replay_once() == 0 and sink.calls == calls, "no probe before the recovery timeout"
    status = delivery.status()
    assert status["state"] == "open" and status["backlog_spans"] == 10 and status["backlog_batches"] == 2

    clock.now += 30.0  # half-open: one probe, which fails and re-opens for a full timeout
    assert breaker.state is CircuitState.HALF_OPEN
    assert await delivery.replay_once() == 0 and sink.calls == calls + 1
    assert breaker.state is CircuitState.OPEN
    assert await delivery.replay_once() == 0 and sink.calls == calls + 1

    sink.down = False
    clock.now += 30.0  # the next probe succeeds: closed, and the rest follows in spool order
    assert await delivery.drain()
    assert breaker.state is CircuitState.CLOSED
    assert sink.got == [f"s{i:05d}" for i in range(10)], "replayed oldest first, each span once"
    assert delivery.status()["backlog_spans"] == 0
    outcome = await delivery.deliver(spans(10, 5))
    assert outcome.delivered == 5 and outcome.spooled == 0


async def test_retry_after_holds_the_replay_back(tmp_path: Path) -> None:
    class Busy(Recorder):
        async def send(self, spans: list[ObservabilitySpan]) -> SinkResult:
            self.calls += 1
            error = ConnectionError("429 Too Many Requests")
            error.retry_after_s = 60.0  # type: ignore[attr-defined]
            raise error

    sink = Busy()
    delivery = SinkDelivery(sink, Spool(tmp_path / "spool.db"), RetryPolicy(0.0, 0.0, 2.0), replay_task=False)
    assert (await delivery.deliver(spans(0, 3))).spooled == 3
    assert await delivery.replay_once() == 0 and sink.calls == 1, "the server asked for 60 s of quiet"


async def test_fan_out_gives_each_sink_its_own_outcome_and_never_waits_on_a_detached_one(
    tmp_path: Path, store: ObservabilitySpanRepository
) -> None:
    spool = Spool(tmp_path / "spool.db")
    stored = SinkDelivery(StoreSink(store), spool, FAST)
    opik = Recorder()
    detached = SinkDelivery(opik, spool, RetryPolicy(0.01, 0.05, timeout_s=0.3), wait_s=1.0)

    outcomes = await fan_out([stored, detached], spans(0, 10))
    assert outcomes["store"].delivered == 10 and outcomes["store"].details["inserted"] == 10
    assert outcomes["opik"].delivered == 10 and opik.got == [f"s{i:05d}" for i in range(10)]

    opik.hang = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await fan_out([stored, detached], spans(10, 10), wait_s=0.0)  # the flusher's wait
    assert loop.time() - started < 0.2, "the caller does not wait for a hanging sink"
    assert outcomes["store"].delivered == 10 and await store.count_spans() == 20
    assert outcomes["opik"].pending == 10 and detached.in_flight == 1
    opik.hang = False
    assert await detached.wait_idle(5), "the hung send timed out into the spool and was replayed"
    assert opik.got[10:] == [f"s{i:05d}" for i in range(10, 20)]
    await detached.stop()


async def test_stop_spools_a_send_still_in_flight(tmp_path: Path) -> None:
    sink = Recorder()
    sink.hang = True
    policy = RetryPolicy(0.01, 0.05, timeout_s=60)
    delivery = SinkDelivery(sink, Spool(tmp_path / "spool.db"), policy, wait_s=0.0, replay_task=False)
    outcome = await delivery.deliver(spans(0, 4))
    assert outcome.pending == 4
    delivery.policy = RetryPolicy(0.01, 0.05, timeout_s=0.05)  # shutdown's patience
    await delivery.stop()
    assert delivery.spool.backlog("opik") == (1, 4), "nothing lost: it waits in the spool for the next start"


def test_a_detached_send_cut_short_by_its_loop_ending_waits_in_the_spool(tmp_path: Path) -> None:
    """A caller's ``asyncio.run`` ends while Opik has not answered: the batch is kept on disk."""
    sink = Recorder()
    sink.hang = True
    policy = RetryPolicy(0.01, 0.05, timeout_s=60)
    delivery = SinkDelivery(sink, Spool(tmp_path / "spool.db"), policy, wait_s=0.0, replay_task=False)

    async def call() -> DeliveryOutcome:
        return await delivery.deliver(spans(0, 3))

    outcome = asyncio.run(call())  # cancels the send still in flight as the loop ends
    assert outcome.pending == 3
    assert delivery.spool.backlog("opik") == (1, 3) and delivery.backlogged


async def test_with_every_sink_down_a_batch_is_spooled_once_for_all_and_each_replays_it(
    tmp_path: Path, store: ObservabilitySpanRepository
) -> None:
    spool = Spool(tmp_path / "spool.db")
    target = Switchable(store)
    opik = Recorder()
    never = RetryPolicy(0.0, 0.0, 2.0)
    stored = SinkDelivery(StoreSink(target), spool, never, replay_task=False)
    detached = SinkDelivery(opik, spool, never, wait_s=1.0, replay_task=False)
    target.down = opik.down = True
    first = await fan_out([stored, detached], spans(0, 5))  # each fails and spools its own copy
    assert first["store"].spooled == first["opik"].spooled == 5
    second = await fan_out([stored, detached], spans(5, 5))  # both backlogged: one copy for both
    assert second["store"].spooled == second["opik"].spooled == 5
    stats = spool.stats()
    assert stats.batches == 3 and stats.pending_by_sink == {"store": 2, "opik": 2}

    target.down = opik.down = False
    assert await stored.drain() and await detached.drain()
    assert await store.count_spans() == 10 and opik.got == [f"s{i:05d}" for i in range(10)]
    assert spool.stats().batches == 0, "a batch leaves the spool once every sink has it"


async def test_a_slow_sink_keeps_its_batches_out_of_the_spool_and_a_hanging_one_costs_one_short_wait(
    tmp_path: Path,
) -> None:
    class Slow(Recorder):
        async def send(self, spans: list[ObservabilitySpan]) -> SinkResult:
            await asyncio.sleep(0.05)  # answers, just slower than batches arrive
            return await super().send(spans)

    slow = Slow()
    policy = RetryPolicy(0.01, 0.05, timeout_s=5.0)
    delivery = SinkDelivery(slow, Spool(tmp_path / "a.db"), policy, wait_s=0.0, max_detached=1, replay_task=False)
    outcomes = await asyncio.gather(*(delivery.deliver(spans(10 * k, 10)) for k in range(4)))
    assert [o.spooled for o in outcomes] == [0, 0, 0, 0] and await delivery.wait_idle(5)
    assert len(slow.got) == 40

    hanging = Recorder()
    hanging.hang = True
    delivery = SinkDelivery(hanging, Spool(tmp_path / "b.db"), policy, wait_s=0.0, max_detached=1, slot_wait_s=0.1)
    assert (await delivery.deliver(spans(0, 5))).pending == 5
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await delivery.deliver(spans(5, 5))).spooled == 5
    assert 0.1 <= loop.time() - started < 1.0
    started = loop.time()
    assert (await delivery.deliver(spans(10, 5))).spooled == 5, "backlogged now: straight to the spool"
    assert loop.time() - started < 0.1
    await delivery.stop(0.0)


async def test_two_deliveries_sharing_a_spool_replay_each_batch_once(tmp_path: Path) -> None:
    """Two processes' deliveries of one sink on one spool file (two Spool objects, as two processes
    have): the backlog is replayed by whichever holds the sink's lease, so no batch is sent twice."""

    class Slow(Recorder):
        async def send(self, spans: list[ObservabilitySpan]) -> SinkResult:
            await asyncio.sleep(0.005)  # a round trip: room for the other replayer to race in
            return await super().send(spans)

    sink_a, sink_b = Slow(), Slow()
    never = CircuitBreaker(failure_threshold=1000)
    a = SinkDelivery(sink_a, Spool(tmp_path / "spool.db"), FAST, breaker=never)
    b = SinkDelivery(sink_b, Spool(tmp_path / "spool.db"), FAST, breaker=CircuitBreaker(failure_threshold=1000))
    sink_a.down = sink_b.down = True
    for k in range(20):
        await (a if k % 2 else b).deliver(spans(10 * k, 10))
    assert a.backlogged and b.backlogged
    sink_a.down = sink_b.down = False
    a.start()
    b.start()
    deadline = asyncio.get_running_loop().time() + 20
    while (a.backlogged or b.backlogged) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    await a.stop()
    await b.stop()
    got = sink_a.got + sink_b.got
    assert len(got) == 200 and len(set(got)) == 200, "a batch was replayed twice"
    assert a.spool.stats().batches == 0
    assert a.spool.replay_leases() == {}  # given back when the backlog emptied / on stop


async def test_status_says_who_holds_the_replay_lease(tmp_path: Path) -> None:
    sink = Recorder()
    delivery = SinkDelivery(sink, Spool(tmp_path / "spool.db"), FAST, replay_task=False)
    sink.down = True
    await delivery.deliver(spans(0, 5))
    assert await delivery.replay_once() == 0  # failed, but it holds the lease while it retries
    assert delivery.status()["replay_lease_held"] is True
    other = Spool(tmp_path / "spool.db")
    lease = other.stats().replay_leases["opik"]
    assert lease.pid == os.getpid() and not lease.mine
    await delivery.stop()
    assert other.replay_leases() == {}


def test_combine_failures_keeps_the_batch_transient_with_the_longest_retry_after() -> None:
    from src.agents.ml_foundation.observability_connector.sink import combine_failures
    from src.mlops.opik_wire import OpikUnavailableError
    from src.mlops.otlp_sink import OtlpUnavailableError

    final = ValueError("bad request")
    assert combine_failures([final, ValueError("other")]) is final  # nothing transient: the first as it was
    parts = [final, OtlpUnavailableError("429", 2.0), OtlpUnavailableError("503"), OtlpUnavailableError("429", 7.5)]
    combined = combine_failures(parts)
    assert type(combined) is OtlpUnavailableError  # the sink's own class, so its logs name it
    assert combined.reason == "429; 503" and combined.retry_after_s == 7.5
    assert combine_failures([OpikUnavailableError("timeout")]).retry_after_s is None
