"""Feedback scores to the Opik test receiver through the delivery layer: bodies validated with the
``opik.rest_api`` types, an outage spooled and replayed once, a restart replaying what the
previous process left, a refusal dead-lettered (issue 19, part 5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime
from opik.rest_api.types import FeedbackScoreBatchItem

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import aggregate_metrics
from src.mlops.opik_ids import opik_span_id, opik_trace_id
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.opik_receiver import OpikReceiver
from tests.fixtures.opik_rig import Rig, context_for, make_rig, rig_settings
from tests.fixtures.waiting import wait_until_async

__all__ = ["make_rig"]  # the fixture, used by name


async def two_spans(obs: ObservabilityConnectorAgent) -> tuple[Any, Any]:
    async with obs.span("route", "orchestrator", None) as root:
        async with obs.span("explain", "explainer", None) as child:
            pass
    assert await obs.flush(5)
    return root, child


def validated(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each body is a ``FeedbackScoreBatchItem`` (the receiver checks this too, as Opik would)."""
    for body in bodies:
        FeedbackScoreBatchItem.model_validate(body)
    return bodies


async def test_scores_reach_opik_and_the_store(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    root, child = await two_spans(rig.obs)
    on_trace = await rig.obs.log_feedback(
        trace_id=root.trace_id, name="helpfulness", value=0.9, reason="clear answer", category_name="good"
    )
    on_span = await rig.obs.log_feedback(span_id=child.span_id, name="accuracy", value=0)
    assert on_trace["store"] == on_span["store"] == "stored"
    assert on_trace["opik"] in ("sent", "pending")
    assert await rig.opik.wait_until_sent(5)

    assert validated(rig.receiver.feedback) == [
        {"id": opik_trace_id(root.trace_id), "project_name": "e2i-causal-analytics", "name": "helpfulness",
         "value": 0.9, "reason": "clear answer", "category_name": "good", "source": "sdk"},
        {"id": opik_span_id(root.trace_id, child.span_id), "project_name": "e2i-causal-analytics",
         "name": "accuracy", "value": 0.0, "source": "sdk"},
    ]  # fmt: skip
    scored = {(r.path.rsplit("/", 2)[-2], r.status) for r in rig.receiver.requests if "feedback-scores" in r.path}
    assert scored == {("traces", 204), ("spans", 204)}  # each score on its own endpoint
    assert [f.name for f in await rig.store.get_feedback(root.trace_id)] == ["helpfulness", "accuracy"]
    status = rig.opik.get_status()["feedback"]
    assert status["sink"] == "opik_feedback" and status["spans_sent"] == 2 and status["backlog_spans"] == 0
    metrics = await aggregate_metrics({"time_window": "1h"}, Runtime(context=rig.context))
    assert metrics["feedback_by_agent"] == {
        "orchestrator": {"helpfulness": {"avg": 0.9, "count": 1}},
        "explainer": {"accuracy": {"avg": 0.0, "count": 1}},
    }


async def test_the_host_facade_stores_and_sends_through_the_same_path(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    root, child = await two_spans(rig.obs)
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"  # a GitHub token pasted into a comment
    await rig.opik.log_feedback(root.trace_id, "helpfulness", 1.0, span_id=child.span_id, reason=f"spot on {secret}")
    assert await rig.opik.wait_until_sent(5)
    (body,) = validated(rig.receiver.feedback)
    assert body["id"] == opik_span_id(root.trace_id, child.span_id)
    assert body["reason"].startswith("spot on ") and secret not in body["reason"]  # redacted before any sink
    stored = await rig.store.get_feedback(root.trace_id)
    assert [(f.span_id, f.value, f.reason) for f in stored] == [(child.span_id, 1.0, body["reason"])]
    assert rig.opik.get_status()["feedback_sent"] == 1


async def test_opik_down_spools_the_score_and_the_replay_sends_it_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    root, _ = await two_spans(rig.obs)
    assert await rig.opik.wait_until_sent(5)
    rig.receiver.mode = "error"  # every request answered 500
    out = await rig.obs.log_feedback(trace_id=root.trace_id, name="helpfulness", value=0.25)
    assert out["store"] == "stored"  # the store does not wait for Opik
    assert out["opik"] in ("spooled", "pending")
    delivery = rig.context.opik_feedback_delivery
    await wait_until_async(lambda: delivery.status()["backlog_spans"] == 1, 5)
    assert rig.receiver.feedback == []
    rig.receiver.recover()
    assert await rig.opik.wait_until_sent(10)
    assert [b["value"] for b in validated(rig.receiver.feedback)] == [0.25]
    assert delivery.status()["backlog_spans"] == 0


async def test_a_restart_replays_the_scores_a_previous_process_spooled(
    opik_receiver: OpikReceiver, tmp_path: Path
) -> None:
    settings = rig_settings(opik_receiver.url, tmp_path / "spool.db")
    opik_receiver.refuse()  # Opik is unreachable for the first process
    store = ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "spans.db"))
    first = context_for(store, settings)
    obs = ObservabilityConnectorAgent(context=first)
    trace = "0" * 31 + "7"
    out = await obs.log_feedback(trace_id=trace, name="helpfulness", value=0.5)
    assert out["opik"] in ("spooled", "pending")
    await wait_until_async(lambda: first.opik_feedback_delivery.status()["backlog_spans"] == 1, 10)
    await obs.aclose()
    for delivery in first.feedback_deliveries:
        await delivery.aclose()

    opik_receiver.resume()
    second = context_for(store, settings)  # a new process's deliveries over the same spool
    assert second.opik_feedback_delivery.backlogged
    again = ObservabilityConnectorAgent(context=second)
    again.start()  # the flusher's start replays every backlog, the scores' included
    try:
        await wait_until_async(lambda: len(opik_receiver.feedback) == 1, 10)
        assert validated(opik_receiver.feedback)[0]["id"] == opik_trace_id(trace)
        assert await second.opik.wait_until_sent(5)
    finally:
        await again.aclose()
        for delivery in second.feedback_deliveries:
            await delivery.aclose()
        await store.close()


async def test_a_score_opik_refuses_is_dead_lettered_and_not_retried(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.receiver.reject_when(lambda kind, item: kind == "scores" and item.get("name") == "bad", "no such score")
    out = await rig.obs.log_feedback(trace_id="0" * 31 + "9", name="bad", value=1.0)
    assert await rig.opik.wait_until_sent(5)
    delivery = rig.context.opik_feedback_delivery
    assert out["opik"] in ("rejected", "pending")
    assert delivery.stats.dead_lettered == 1 and delivery.status()["backlog_spans"] == 0
    letters = delivery.spool.dead_letters(10)
    assert letters[0][0] == "opik_feedback" and "no such score" in letters[0][2]
    assert out["store"] == "stored"  # the store kept it: Opik's refusal is Opik's
