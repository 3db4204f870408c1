"""Opik pushing back, against the real HTTP receiver: 429 with ``Retry-After`` and 413.

``OpikSink`` behind a ``SinkDelivery`` (the one delivery layer: breaker, spool, replay) posts
through the ``opik`` REST client to ``tests/fixtures/opik_receiver.py``, which answers 429 for
the next requests (with a ``Retry-After``) or 413 for a body over a size. The retry policy's own
backoff is a few milliseconds here, so a retry that came before the server's ``Retry-After`` would
show.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.delivery import RetryPolicy, SinkDelivery
from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.agents.ml_foundation.observability_connector.spool import Spool
from src.mlops import OpikConfig, opik_span_id
from src.mlops.opik_sink import OpikSink
from tests.fixtures.opik_receiver import OpikReceiver
from tests.fixtures.span_rows import make_span

WAIT_S = 15.0


@pytest.fixture
async def make_delivery(
    opik_receiver: OpikReceiver, tmp_path: Path
) -> AsyncIterator[Callable[..., tuple[SinkDelivery, OpikSink]]]:
    made: list[SinkDelivery] = []

    def make(encode_once: bool = True, **config: object) -> tuple[SinkDelivery, OpikSink]:
        sink = OpikSink(OpikConfig(url=opik_receiver.url, request_timeout_s=5.0, encode_once=encode_once, **config))  # type: ignore[arg-type]
        spool = Spool(tmp_path / f"spool-{len(made)}.db")
        delivery = SinkDelivery(sink, spool, RetryPolicy(initial_s=0.01, max_s=0.02, timeout_s=10.0))
        made.append(delivery)
        return delivery, sink

    yield make
    for delivery in made:
        await delivery.aclose()
        delivery.spool.close()


def one_trace(n: int, **fields: object) -> list[ObservabilitySpan]:
    trace_id = make_span().trace_id
    return [make_span(trace_id=trace_id, **fields) for _ in range(n)]  # type: ignore[arg-type]


def opik_ids(spans: list[ObservabilitySpan]) -> set[str]:
    return {opik_span_id(s.trace_id, s.span_id) for s in spans}


@pytest.mark.parametrize("retry_after", ["1", "http-date"])
async def test_429_waits_for_retry_after_before_the_retry(
    make_delivery: Callable[..., tuple[SinkDelivery, OpikSink]], opik_receiver: OpikReceiver, retry_after: str
) -> None:
    delivery, _ = make_delivery()
    delivery.start()  # the replay task, as the flusher's loop runs it
    # An HTTP date has whole seconds: two seconds ahead is at least one second of waiting.
    header = formatdate(time.time() + 2, usegmt=True) if retry_after == "http-date" else retry_after
    least_wait = 1.0
    opik_receiver.throttle(2, header)  # the spans request and the traces request of the first send
    spans = one_trace(20)
    outcome = await delivery.deliver(spans)
    assert outcome.spooled == 20 and "HTTP 429" in (delivery.stats.last_error or "")
    assert await delivery.wait_idle(WAIT_S)

    throttled = opik_receiver.batch_posts("spans", 429) + opik_receiver.batch_posts("traces", 429)
    accepted = opik_receiver.batch_posts("spans", 204)
    assert len(throttled) == 2 and len(accepted) == 1, opik_receiver.stats()
    waited = accepted[0].at - max(r.at for r in throttled)
    assert waited >= least_wait - 0.05, f"retried {waited:.3f} s after a 429 asking for {header!r}"
    assert set(opik_receiver.spans) == opik_ids(spans) and opik_receiver.duplicate_span_ids() == []
    assert delivery.breaker.get_status()["consecutive_failures"] == 0  # the successful retry closed the count


async def test_429_without_retry_after_uses_the_own_backoff(
    make_delivery: Callable[..., tuple[SinkDelivery, OpikSink]], opik_receiver: OpikReceiver
) -> None:
    delivery, _ = make_delivery()
    delivery.start()
    opik_receiver.throttle(2, None)
    spans = one_trace(5)
    await delivery.deliver(spans)
    assert await delivery.wait_idle(WAIT_S)
    assert set(opik_receiver.spans) == opik_ids(spans) and opik_receiver.duplicate_span_ids() == []


@pytest.mark.parametrize("encode_once", [True, False], ids=["encoded-once", "generated-create_spans"])
async def test_413_splits_the_request_until_it_fits(
    make_delivery: Callable[..., tuple[SinkDelivery, OpikSink]], opik_receiver: OpikReceiver, encode_once: bool
) -> None:
    delivery, sink = make_delivery(encode_once=encode_once)
    spans = one_trace(64, attributes={"payload": "x" * 2_000})
    opik_receiver.limit_body(40_000)  # ~2 KB a span: 64 spans are ~140 KB, a request of 16 fits
    outcome = await delivery.deliver(spans)
    assert outcome.delivered == 64 and outcome.rejected == 0, outcome
    assert set(opik_receiver.spans) == opik_ids(spans) and opik_receiver.duplicate_span_ids() == []
    too_large = opik_receiver.batch_posts("spans", 413)
    accepted = opik_receiver.batch_posts("spans", 204)
    assert [r.items for r in too_large] == [64, 32, 32], "halves, each split once more"
    assert sorted(r.items for r in accepted) == [16] * 4
    assert sink.stats.requests_split == 3 and sink.stats.requests_rejected == 0
    assert delivery.spool.dead_letters() == []


async def test_413_for_a_single_span_dead_letters_it_with_the_servers_reason(
    make_delivery: Callable[..., tuple[SinkDelivery, OpikSink]], opik_receiver: OpikReceiver
) -> None:
    delivery, sink = make_delivery()
    trace_id = make_span().trace_id
    small = [make_span(trace_id=trace_id) for _ in range(7)]
    huge = make_span(trace_id=trace_id, attributes={"payload": "y" * 60_000})
    spans = [*small[:3], huge, *small[3:]]
    opik_receiver.limit_body(30_000)
    outcome = await delivery.deliver(spans)
    assert outcome.delivered == 7 and outcome.rejected == 1, outcome
    assert set(opik_receiver.spans) == opik_ids(small) and opik_receiver.duplicate_span_ids() == []
    assert [r.items for r in opik_receiver.batch_posts("spans", 413)] == [8, 4, 2, 1]
    dead = delivery.spool.dead_letters()
    assert len(dead) == 1
    sink_name, span_id, reason = dead[0]
    assert sink_name == "opik" and span_id == huge.span_id
    assert "HTTP 413" in reason and "Payload Too Large" in reason, reason
    assert sink.rejections[-1]["reason"] == reason and sink.rejections[-1]["items"] == 1
    assert delivery.breaker.get_status()["consecutive_failures"] == 0  # a refusal is an answer: the sink is up


async def test_a_batch_that_failed_after_some_requests_were_accepted_resends_only_the_rest(
    make_delivery: Callable[..., tuple[SinkDelivery, OpikSink]], opik_receiver: OpikReceiver
) -> None:
    """Three span requests and a trace request go out at once; one of them is answered 429. The
    batch fails as a whole (the delivery layer retries it), but its retry must not write the
    spans Opik already accepted a second time."""
    _, sink = make_delivery(max_items_per_request=10, max_requests_in_flight=4)
    spans = one_trace(30)
    opik_receiver.throttle(1, retry_after=None)
    with pytest.raises(Exception, match="429"):
        await sink.send(spans)
    result = await sink.send(spans)  # the retry of the same batch
    assert result.delivered == 30 and not result.rejected
    assert set(opik_receiver.spans) == opik_ids(spans)
    assert opik_receiver.duplicate_span_ids() == []
    assert sum(opik_receiver.span_writes[i] for i in opik_ids(spans)) == 30
