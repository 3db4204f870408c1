"""The connector's self-monitor: rolling windows, percentiles, health from thresholds, health spans."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.models import ObservabilityEvent
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.agents.ml_foundation.observability_connector.self_monitor import (
    AsyncLatencyContext,
    HealthStatus,
    LatencyContext,
    LatencyThresholds,
    LatencyTracker,
    MetricType,
    SelfMonitor,
    SelfMonitorConfig,
    get_self_monitor,
    reset_self_monitor,
)
from src.repositories.observability_span import ObservabilitySpanRepository
from tests.fixtures.waiting import wait_until_async


def percentile_cont(values: list[float], q: float) -> float:
    """Textbook linear interpolation between closest ranks, written independently of the module."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    below, above = ordered[math.floor(rank)], ordered[math.ceil(rank)]
    return below + (above - below) * (rank - math.floor(rank))


def tracker(**kwargs: Any) -> LatencyTracker:
    return LatencyTracker(MetricType.SPAN_EMISSION, LatencyThresholds(100.0, 500.0), **kwargs)


# --------------------------------------------------------------------------- LatencyTracker


def test_window_is_bounded_but_the_count_is_of_everything_recorded() -> None:
    t = tracker(window_size=5)
    for i in range(10):
        t.record(float(i * 10))
    stats = t.get_stats()
    assert (stats.count, stats.min_ms, stats.max_ms, stats.last_ms) == (10, 50.0, 90.0, 90.0)
    assert stats.avg_ms == pytest.approx(70.0)
    assert len(t._samples) == 5  # memory stays flat however long the process runs


def test_percentiles_interpolate_like_the_store() -> None:
    values = [3.0, 120.0, 7.5, 15.0, 15.0, 40.0, 2.0, 900.0, 33.3, 61.0, 8.0]
    t = tracker(window_size=100)
    for v in values:
        t.record(v)
    stats = t.get_stats()
    for q, got in ((0.50, stats.p50_ms), (0.95, stats.p95_ms), (0.99, stats.p99_ms)):
        assert got == pytest.approx(percentile_cont(values, q))
    assert stats.p50_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_impossible_latencies_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="span_emission: latency_ms must be a finite number >= 0"):
        tracker().record(bad)


def test_status_follows_the_tail_once_there_are_enough_samples() -> None:
    t = tracker(min_samples=5)
    for v in (10.0, 10.0, 10.0, 250.0):
        t.record(v)
    assert t.get_stats().avg_ms == 70.0
    assert t.get_stats().status is HealthStatus.HEALTHY  # four samples: judged on the average
    t.record(10.0)
    stats = t.get_stats()
    assert stats.avg_ms < 100.0 <= stats.p95_ms < 500.0
    assert stats.status is HealthStatus.DEGRADED  # five: the p95 decides, and the tail is slow


def test_thresholds_are_inclusive_and_ordered() -> None:
    limits = LatencyThresholds(warning_ms=100.0, critical_ms=500.0)
    assert [limits.check(v) for v in (99.9, 100.0, 499.9, 500.0)] == [
        HealthStatus.HEALTHY,
        HealthStatus.DEGRADED,
        HealthStatus.DEGRADED,
        HealthStatus.UNHEALTHY,
    ]
    with pytest.raises(ValueError, match="warning_ms <= critical_ms"):
        LatencyThresholds(warning_ms=600.0, critical_ms=500.0)


@pytest.mark.parametrize(
    ("ok", "errors", "expected"),
    [(9, 1, HealthStatus.HEALTHY), (8, 2, HealthStatus.DEGRADED), (1, 3, HealthStatus.UNHEALTHY)],
)
def test_errors_degrade_a_component_by_their_share(ok: int, errors: int, expected: HealthStatus) -> None:
    t = tracker(min_samples=1)
    for _ in range(ok):
        t.record(5.0)
    for i in range(errors):
        t.record_error(f"write failed #{i}")
    health = t.get_component_health()
    assert health.status is expected
    assert health.error_count == errors and health.last_error == f"write failed #{errors - 1}"
    assert health.error_rate == pytest.approx(errors / (ok + errors))


def test_reset_forgets_everything() -> None:
    t = tracker()
    t.record(5.0)
    t.record_error("boom")
    t.reset()
    health = t.get_component_health()
    assert (health.latency_stats.count, health.error_count, health.status) == (0, 0, HealthStatus.UNKNOWN)


# --------------------------------------------------------------------------- SelfMonitor


def test_too_little_evidence_is_unknown_not_healthy() -> None:
    monitor = SelfMonitor(SelfMonitorConfig(min_samples_for_stats=10))
    monitor.record_span_emission_latency(1.0)
    monitor.record_database_latency(1.0)
    assert monitor.get_health_status().status is HealthStatus.UNKNOWN


def test_the_worst_measured_component_decides_and_is_named_in_an_alert() -> None:
    monitor = SelfMonitor(
        SelfMonitorConfig(min_samples_for_stats=3, thresholds={MetricType.OPIK_API: LatencyThresholds(50.0, 200.0)})
    )
    for _ in range(10):
        monitor.record_span_emission_latency(5.0)
        monitor.record_database_latency(4.0)
    assert monitor.get_health_status().status is HealthStatus.HEALTHY  # idle components do not hide it
    for _ in range(10):
        monitor.record_opik_latency(120.0)
    health = monitor.get_health_status()
    assert health.status is HealthStatus.DEGRADED
    assert [a.split(":")[0] for a in health.alerts] == ["opik_api"]
    assert "threshold 50 ms" in health.alerts[0]
    for _ in range(10):
        monitor.record_database_latency(250.0)  # default database thresholds: 50 / 200 ms
    assert monitor.get_health_status().status is HealthStatus.UNHEALTHY
    # Defaults are kept for every kind not overridden.
    assert monitor.config.thresholds[MetricType.DATABASE_WRITE] == LatencyThresholds(50.0, 200.0)


def test_a_high_error_rate_is_alerted() -> None:
    monitor = SelfMonitor(SelfMonitorConfig(min_samples_for_stats=2))
    for _ in range(5):
        monitor.record_opik_latency(20.0)
    for _ in range(3):
        monitor.record_opik_error("ConnectError: refused")
    health = monitor.get_health_status()
    assert health.status is HealthStatus.DEGRADED
    assert any(a.startswith("opik_api: high error rate (37.5%") for a in health.alerts)
    assert health.components["opik_api"].to_dict()["error_count"] == 3


def test_nothing_starts_at_construction() -> None:
    threads = threading.active_count()
    reset_self_monitor()
    monitor = get_self_monitor()
    SelfMonitor()
    assert threading.active_count() == threads
    assert not monitor.is_running


async def test_health_span_goes_to_the_emitter_as_a_valid_event() -> None:
    monitor = SelfMonitor(SelfMonitorConfig(min_samples_for_stats=1))
    monitor.record_span_emission_latency(12.0)
    sent: list[dict[str, Any]] = []
    monitor.set_span_emitter(sent.append)  # a plain function works as well as a coroutine function

    health = await monitor.emit_health_span_now()
    await monitor.emit_health_span_now()

    assert len(sent) == 2 and health.health_span_count == 1
    event = ObservabilityEvent.model_validate(sent[0])  # what the graph's events_to_log accepts
    assert (event.agent_name, event.operation, event.status) == ("observability_connector", "health_check", "ok")
    assert event.metadata is not None and event.metadata["health_status"] == "healthy"
    assert event.metadata["components"]["span_emission"]["latency"]["count"] == 1
    assert monitor.get_health_status().health_span_count == 2


async def test_emission_can_be_switched_off() -> None:
    monitor = SelfMonitor(SelfMonitorConfig(emit_health_spans=False))
    sent: list[dict[str, Any]] = []
    monitor.set_span_emitter(sent.append)
    await monitor.emit_health_span_now()
    assert sent == [] and monitor.get_health_status().health_span_count == 0


async def test_a_failing_emitter_is_counted_never_raised() -> None:
    monitor = SelfMonitor()

    async def broken(_span: dict[str, Any]) -> None:
        raise ConnectionError("sink down")

    monitor.set_span_emitter(broken)
    health = await monitor.emit_health_span_now()
    component = health.components["span_emission"]
    assert component.error_count == 1 and "ConnectionError: sink down" in (component.last_error or "")
    assert health.health_span_count == 0


async def test_health_span_reaches_the_store_through_the_agent(
    connector_context: ConnectorContext, store: ObservabilitySpanRepository
) -> None:
    agent = ObservabilityConnectorAgent(context=connector_context)
    try:
        monitor = SelfMonitor(SelfMonitorConfig(min_samples_for_stats=1), agent=agent)
        monitor.record_database_latency(3.0)
        monitor.record_database_latency(400.0)  # p95 of (3, 400) is ~380 ms: over the 200 ms critical line

        health = await monitor.emit_health_span_now()
        assert await agent.flush(timeout=10)
    finally:
        await agent.aclose()

    assert health.status is HealthStatus.UNHEALTHY and health.health_span_count == 1
    (span,) = await store.get_spans_by_agent("observability_connector", hours=1)
    assert span.operation_type == "health_check" and span.status == "ok"
    assert span.attributes["health_status"] == "unhealthy"
    assert span.attributes["components"]["database_write"]["latency"]["count"] == 2
    assert span.attributes["alerts"] == health.alerts


async def test_periodic_emission_runs_on_the_callers_loop_until_stopped() -> None:
    monitor = SelfMonitor(SelfMonitorConfig(health_emission_interval_seconds=0.05))
    sent: list[dict[str, Any]] = []
    monitor.set_span_emitter(sent.append)
    threads = threading.active_count()
    await monitor.start_health_emission()
    await monitor.start_health_emission()  # a second start does not start a second loop
    assert monitor.is_running and threading.active_count() == threads
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_until_async(lambda: len(sent) >= 6, what="six health emissions")
    await monitor.stop_health_emission()
    emitted, elapsed = len(sent), loop.time() - started
    # One loop at one emission per 0.05 s (plus the first at once), not two: two would have
    # reached six in half the time.
    assert emitted <= elapsed / 0.05 + 2, (emitted, elapsed)
    await asyncio.sleep(0.15)  # that nothing more comes can only be seen over time: three intervals
    assert len(sent) == emitted and not monitor.is_running


def test_process_wide_monitor() -> None:
    reset_self_monitor()
    first = get_self_monitor(SelfMonitorConfig(window_size=7))
    assert get_self_monitor() is first and first.config.window_size == 7
    assert get_self_monitor(force_new=True) is not first
    reset_self_monitor()
    assert get_self_monitor() is not first


def test_reset_starts_over() -> None:
    monitor = SelfMonitor()
    monitor.record_cache_latency(1.0)
    monitor.record_batch_flush_error("x")
    monitor.reset()
    assert all(s.count == 0 for s in monitor.get_all_latency_stats().values())
    assert monitor.get_health_status().components["batch_flush"].error_count == 0


async def test_latency_contexts_time_the_block_and_record_its_failure() -> None:
    monitor = SelfMonitor()
    with LatencyContext(monitor, MetricType.OPIK_API) as timed:
        await asyncio.sleep(0.02)  # the duration under test: the block must last
    assert timed.latency_ms >= 15.0
    assert monitor.get_latency_stats(MetricType.OPIK_API).last_ms == timed.latency_ms

    with pytest.raises(KeyError):
        async with AsyncLatencyContext(monitor, "cache_operation"):
            raise KeyError("missing")
    cache = monitor.get_health_status().components["cache_operation"]
    assert cache.latency_stats.count == 1 and cache.error_count == 1 and "KeyError" in (cache.last_error or "")

    with pytest.raises(ValueError), LatencyContext(monitor, MetricType.BATCH_FLUSH, record_errors=False):
        raise ValueError("not counted")
    assert monitor.get_health_status().components["batch_flush"].error_count == 0


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="window_size must be at least 1"):
        SelfMonitorConfig(window_size=0)
    with pytest.raises(ValueError, match="health_emission_interval_seconds must be positive"):
        SelfMonitorConfig(health_emission_interval_seconds=0)
