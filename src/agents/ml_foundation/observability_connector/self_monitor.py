"""Self-monitoring: is the connector itself keeping up, and is it failing?

The connector watches every other agent; this module watches the connector. Code on the
connector's own paths reports how long its work took (emitting spans, Opik calls, store writes,
batch flushes, cache operations) and when it failed. Each kind of work keeps a bounded rolling
window of latencies (:class:`LatencyTracker`), so memory stays flat however long the process
runs and the picture follows recent behaviour rather than the whole uptime.

A health status is derived from those windows and per-kind thresholds: the window's p95 (the
tail is what callers wait on; an average hides it) against ``warning_ms`` / ``critical_ms``, and
the share of failed operations (over ``ERROR_RATE_DEGRADED``: degraded, over
``ERROR_RATE_UNHEALTHY``: unhealthy). Too little evidence reads as ``unknown``, never as healthy.

:meth:`SelfMonitor.emit_health_span_now` records that picture as a span about the connector
itself, through an emitter callback or an :class:`ObservabilityConnectorAgent`'s span API, so it
lands in the same store and dashboards as everything else. Nothing starts at import or
construction: periodic emission is an asyncio task that :meth:`SelfMonitor.start_health_emission`
starts on the caller's event loop.

The vocabulary (health states, kinds of work, thresholds, the reported records) lives in
:mod:`health_status`, the rolling window in :mod:`latency_tracker`; their names are also
importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from .health_status import (
    DEFAULT_HEALTH_INTERVAL_S,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_THRESHOLDS,
    DEFAULT_WINDOW_SIZE,
    ERROR_RATE_DEGRADED,
    ERROR_RATE_UNHEALTHY,
    SEVERITY,
    ComponentHealth,
    HealthStatus,
    LatencyStats,
    LatencyThresholds,
    MetricType,
    OverallHealth,
    SelfMonitorConfig,
)
from .latency_tracker import LatencyTracker

__all__ = [
    "DEFAULT_HEALTH_INTERVAL_S",
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_WINDOW_SIZE",
    "ERROR_RATE_DEGRADED",
    "ERROR_RATE_UNHEALTHY",
    "AsyncLatencyContext",
    "ComponentHealth",
    "HealthStatus",
    "LatencyContext",
    "LatencyStats",
    "LatencyThresholds",
    "LatencyTracker",
    "MetricType",
    "OverallHealth",
    "SelfMonitor",
    "SelfMonitorConfig",
    "get_self_monitor",
    "reset_self_monitor",
]

log = logging.getLogger(__name__)

#: The name health spans are recorded under: the connector reports on itself.
AGENT_NAME = "observability_connector"
HEALTH_OPERATION = "health_check"


SpanEmitter = Callable[[dict[str, Any]], Awaitable[Any] | Any]


class SelfMonitor:
    """The connector's own health: rolling latencies and errors per component, health spans.

    Health spans go to the emitter set with :meth:`set_span_emitter` (called with the span as an
    ``events_to_log`` event dict), else through ``agent``'s span API (an
    ``ObservabilityConnectorAgent``); with neither, :meth:`emit_health_span_now` only reports.
    """

    def __init__(self, config: SelfMonitorConfig | None = None, *, agent: Any = None) -> None:
        self.config = config or SelfMonitorConfig()
        self._start_time = time.monotonic()
        self._trackers: dict[MetricType, LatencyTracker] = {
            kind: LatencyTracker(
                kind,
                self.config.thresholds[kind],
                window_size=self.config.window_size,
                min_samples=self.config.min_samples_for_stats,
            )
            for kind in MetricType
        }
        self._span_emitter: SpanEmitter | None = None
        self._agent = agent
        self._health_span_count = 0
        self._count_lock = threading.Lock()
        self._health_task: asyncio.Task[None] | None = None
        self._running = False

    # -- where health spans go

    def set_span_emitter(self, emitter: SpanEmitter | None) -> None:
        """``emitter(span_data)`` (sync or async) receives each health span as an event dict."""
        self._span_emitter = emitter

    def attach_agent(self, agent: Any) -> None:
        """Record health spans through this agent's ``span()`` (used when no emitter is set)."""
        self._agent = agent

    # -- recording

    def record_latency(self, metric_type: MetricType | str, latency_ms: float) -> None:
        self._trackers[MetricType(metric_type)].record(latency_ms)

    def record_error(self, metric_type: MetricType | str, error: str) -> None:
        self._trackers[MetricType(metric_type)].record_error(error)

    def record_span_emission_latency(self, latency_ms: float) -> None:
        self._trackers[MetricType.SPAN_EMISSION].record(latency_ms)

    def record_opik_latency(self, latency_ms: float) -> None:
        self._trackers[MetricType.OPIK_API].record(latency_ms)

    def record_database_latency(self, latency_ms: float) -> None:
        self._trackers[MetricType.DATABASE_WRITE].record(latency_ms)

    def record_batch_flush_latency(self, latency_ms: float) -> None:
        self._trackers[MetricType.BATCH_FLUSH].record(latency_ms)

    def record_cache_latency(self, latency_ms: float) -> None:
        self._trackers[MetricType.CACHE_OPERATION].record(latency_ms)

    def record_span_emission_error(self, error: str) -> None:
        self._trackers[MetricType.SPAN_EMISSION].record_error(error)

    def record_opik_error(self, error: str) -> None:
        self._trackers[MetricType.OPIK_API].record_error(error)

    def record_database_error(self, error: str) -> None:
        self._trackers[MetricType.DATABASE_WRITE].record_error(error)

    def record_batch_flush_error(self, error: str) -> None:
        self._trackers[MetricType.BATCH_FLUSH].record_error(error)

    def record_cache_error(self, error: str) -> None:
        self._trackers[MetricType.CACHE_OPERATION].record_error(error)

    # -- reading

    def get_latency_stats(self, metric_type: MetricType | str) -> LatencyStats:
        return self._trackers[MetricType(metric_type)].get_stats()

    def get_all_latency_stats(self) -> dict[str, LatencyStats]:
        return {kind.value: tracker.get_stats() for kind, tracker in self._trackers.items()}

    def get_health_status(self) -> OverallHealth:
        """The worst component decides; too little evidence overall reads as ``unknown``."""
        components: dict[str, ComponentHealth] = {}
        alerts: list[str] = []
        worst = HealthStatus.UNKNOWN
        evidence = 0
        for kind, tracker in self._trackers.items():
            health = tracker.get_component_health()
            components[kind.value] = health
            stats = health.latency_stats
            evidence += stats.count + health.error_count
            latency_status = stats.status
            if latency_status in (HealthStatus.DEGRADED, HealthStatus.UNHEALTHY):
                level = "critical" if latency_status is HealthStatus.UNHEALTHY else "degraded"
                limit = tracker.thresholds.critical_ms if level == "critical" else tracker.thresholds.warning_ms
                alerts.append(
                    f"{kind.value}: latency {level} (p95 {stats.p95_ms:.1f} ms, avg {stats.avg_ms:.1f} ms; "
                    f"threshold {limit:g} ms)"
                )
            if health.error_count and health.error_rate > ERROR_RATE_DEGRADED:
                alerts.append(
                    f"{kind.value}: high error rate ({health.error_rate:.1%}, {health.error_count} errors; "
                    f"last: {health.last_error})"
                )
            if SEVERITY[health.status] > SEVERITY[worst]:
                worst = health.status
        if evidence < self.config.min_samples_for_stats:
            worst = HealthStatus.UNKNOWN
        with self._count_lock:
            spans = self._health_span_count
        return OverallHealth(
            status=worst,
            components=components,
            uptime_seconds=self.uptime_seconds,
            last_health_check=datetime.now(UTC),
            health_span_count=spans,
            alerts=alerts,
        )

    # -- health spans

    def _health_attributes(self, health: OverallHealth, sequence: int) -> dict[str, Any]:
        return {
            "health_status": health.status.value,
            "uptime_seconds": round(health.uptime_seconds, 3),
            "health_span_count": sequence,
            "alerts": list(health.alerts),
            "components": {name: c.to_dict() for name, c in health.components.items()},
        }

    async def emit_health_span_now(self) -> OverallHealth:
        """Record the current health as a span about the connector; returns that health.

        Never raises and never waits on a sink: the agent path only queues the span, and a
        failing emitter is logged and counted as a span emission error.
        """
        health = self.get_health_status()
        if not self.config.emit_health_spans:
            return health
        if self.config.log_degraded_status and health.status in (HealthStatus.DEGRADED, HealthStatus.UNHEALTHY):
            log.warning("observability connector is %s: %s", health.status.value, "; ".join(health.alerts))
        emitter, agent = self._span_emitter, self._agent
        if emitter is None and agent is None:
            return health
        with self._count_lock:
            sequence = self._health_span_count + 1
        attributes = self._health_attributes(health, sequence)
        try:
            if emitter is not None:
                result = emitter(
                    {
                        "agent_name": AGENT_NAME,
                        "operation": HEALTH_OPERATION,
                        "status": "completed",
                        "started_at": health.last_health_check.isoformat(),
                        "metadata": attributes,
                    }
                )
                if inspect.isawaitable(result):
                    await result
            else:
                await self._record_with_agent(agent, attributes, sequence)
        except Exception as exc:  # the monitor must never break what it monitors
            log.warning("health span could not be emitted: %s: %s", type(exc).__name__, exc)
            self.record_span_emission_error(f"health span: {type(exc).__name__}: {exc}")
            return self.get_health_status()
        with self._count_lock:
            self._health_span_count = max(self._health_span_count, sequence)
        return self.get_health_status()

    async def _record_with_agent(self, agent: Any, attributes: dict[str, Any], sequence: int) -> None:
        # The agent's own contexts and span scope: sampled, redacted and batched like any span.
        context = agent.create_observability_context(request_id=f"{AGENT_NAME}-health-{sequence}")
        async with agent.span(HEALTH_OPERATION, AGENT_NAME, context, attributes):
            pass

    async def start_health_emission(self) -> None:
        """Emit a health span every ``health_emission_interval_seconds`` on the running loop."""
        if self._running and self._health_task is not None and not self._health_task.done():
            log.debug("health emission is already running")
            return
        self._running = True
        self._health_task = asyncio.get_running_loop().create_task(
            self._emission_loop(), name="observability-connector-health"
        )

    async def stop_health_emission(self) -> None:
        self._running = False
        task, self._health_task = self._health_task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _emission_loop(self) -> None:
        while self._running:
            await asyncio.sleep(self.config.health_emission_interval_seconds)
            if self._running:
                await self.emit_health_span_now()

    # -- lifecycle

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self._start_time

    def reset(self) -> None:
        """Forget every sample, error and health span count; uptime starts again."""
        for tracker in self._trackers.values():
            tracker.reset()
        with self._count_lock:
            self._health_span_count = 0
        self._start_time = time.monotonic()


_MONITOR: SelfMonitor | None = None
_MONITOR_LOCK = threading.Lock()


def get_self_monitor(config: SelfMonitorConfig | None = None, force_new: bool = False) -> SelfMonitor:
    """The process-wide monitor; ``config`` applies only when it is created (first call or ``force_new``)."""
    global _MONITOR
    with _MONITOR_LOCK:
        if _MONITOR is None or force_new:
            _MONITOR = SelfMonitor(config)
        return _MONITOR


def reset_self_monitor() -> None:
    """Drop the process-wide monitor (a running emission task stops at its next wake-up)."""
    global _MONITOR
    with _MONITOR_LOCK:
        if _MONITOR is not None:
            _MONITOR._running = False
        _MONITOR = None


class LatencyContext:
    """``with LatencyContext(monitor, MetricType.OPIK_API):`` records the block's latency (and its error)."""

    def __init__(self, monitor: SelfMonitor, metric_type: MetricType | str, record_errors: bool = True) -> None:
        self.monitor = monitor
        self.metric_type = MetricType(metric_type)
        self.record_errors = record_errors
        self._started = 0.0
        self._latency_ms = 0.0

    @property
    def latency_ms(self) -> float:
        return self._latency_ms

    def _start(self) -> None:
        self._started = time.perf_counter()

    def _stop(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        self._latency_ms = (time.perf_counter() - self._started) * 1000.0
        self.monitor.record_latency(self.metric_type, self._latency_ms)
        if exc_type is not None and self.record_errors:
            self.monitor.record_error(self.metric_type, f"{exc_type.__name__}: {exc}")

    def __enter__(self) -> LatencyContext:
        self._start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop(exc_type, exc)


class AsyncLatencyContext(LatencyContext):
    """``async with`` form of :class:`LatencyContext`."""

    async def __aenter__(self) -> AsyncLatencyContext:
        self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop(exc_type, exc)
