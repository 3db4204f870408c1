"""Self-monitoring: is the connector itself keeping up, and is it failing?

The connector watches every other agent; this module watches the connector. Code on the
connector's own paths reports how long its work took (emitting spans, Opik calls, store writes,
batch flushes, cache operations) and when it failed. Each kind of work keeps a bounded rolling
window of latencies (:class:`LatencyTracker`), so memory stays flat however long the process
runs and the picture follows recent behaviour rather than the whole uptime.

A health status is derived from those windows and per-kind thresholds: the window's p95 (the
tail is what callers wait on; an average hides it) against ``warning_ms`` / ``critical_ms``, and
the share of failed operations (over 10 %: degraded, over 50 %: unhealthy). Too little evidence
reads as ``unknown``, never as healthy.

:meth:`SelfMonitor.emit_health_span_now` records that picture as a span about the connector
itself, through an emitter callback or an :class:`ObservabilityConnectorAgent`'s span API, so it
lands in the same store and dashboards as everything else. Nothing starts at import or
construction: periodic emission is an asyncio task that :meth:`SelfMonitor.start_health_emission`
starts on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

__all__ = [
    "DEFAULT_THRESHOLDS",
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

#: Above this share of failed operations a component is degraded; above the second, unhealthy.
ERROR_RATE_DEGRADED = 0.10
ERROR_RATE_UNHEALTHY = 0.50


class HealthStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"  # not enough evidence either way


#: Severity order for "the worst component decides"; unknown ranks below healthy so one idle
#: component never hides a measured one.
_SEVERITY = {HealthStatus.UNKNOWN: 0, HealthStatus.HEALTHY: 1, HealthStatus.DEGRADED: 2, HealthStatus.UNHEALTHY: 3}


class MetricType(StrEnum):
    """The connector's own kinds of work, each with its own window and thresholds."""

    SPAN_EMISSION = "span_emission"
    OPIK_API = "opik_api"
    DATABASE_WRITE = "database_write"
    BATCH_FLUSH = "batch_flush"
    CACHE_OPERATION = "cache_operation"


#: (warning_ms, critical_ms) per kind of work: a cache call is slow long before an Opik call is.
DEFAULT_THRESHOLDS: dict[MetricType, tuple[float, float]] = {
    MetricType.SPAN_EMISSION: (100.0, 500.0),
    MetricType.OPIK_API: (200.0, 1000.0),
    MetricType.DATABASE_WRITE: (50.0, 200.0),
    MetricType.BATCH_FLUSH: (500.0, 2000.0),
    MetricType.CACHE_OPERATION: (10.0, 50.0),
}
DEFAULT_WINDOW_SIZE = 100
DEFAULT_MIN_SAMPLES = 5
DEFAULT_HEALTH_INTERVAL_S = 60.0


@dataclass
class LatencyThresholds:
    warning_ms: float = 100.0
    critical_ms: float = 500.0

    def __post_init__(self) -> None:
        if not 0 <= self.warning_ms <= self.critical_ms:
            raise ValueError(
                f"thresholds need 0 <= warning_ms <= critical_ms, got warning_ms={self.warning_ms}, "
                f"critical_ms={self.critical_ms}"
            )

    def check(self, latency_ms: float) -> HealthStatus:
        """Where one latency falls: at or above a threshold counts as crossing it."""
        if latency_ms >= self.critical_ms:
            return HealthStatus.UNHEALTHY
        if latency_ms >= self.warning_ms:
            return HealthStatus.DEGRADED
        return HealthStatus.HEALTHY


@dataclass
class LatencyStats:
    """One component's latency picture; ``count`` is every sample ever recorded, the rest the window's."""

    count: int = 0
    min_ms: float = 0.0
    max_ms: float = 0.0
    avg_ms: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    last_ms: float = 0.0
    last_recorded: datetime | None = None
    status: HealthStatus = HealthStatus.UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        for name in ("min_ms", "max_ms", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "last_ms"):
            out[name] = round(getattr(self, name), 2)
        out["last_recorded"] = self.last_recorded.isoformat() if self.last_recorded else None
        out["status"] = self.status.value
        return out


@dataclass
class ComponentHealth:
    component: str
    status: HealthStatus
    latency_stats: LatencyStats
    error_count: int = 0
    last_error: str | None = None
    last_error_time: datetime | None = None

    @property
    def error_rate(self) -> float:
        """Failed operations over all operations reported (latencies recorded plus errors)."""
        attempts = self.latency_stats.count + self.error_count
        return self.error_count / attempts if attempts else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "status": self.status.value,
            "latency": self.latency_stats.to_dict(),
            "error_count": self.error_count,
            "error_rate": round(self.error_rate, 4),
            "last_error": self.last_error,
            "last_error_time": self.last_error_time.isoformat() if self.last_error_time else None,
        }


@dataclass
class OverallHealth:
    status: HealthStatus
    components: dict[str, ComponentHealth]
    uptime_seconds: float
    last_health_check: datetime
    health_span_count: int = 0
    alerts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "components": {name: c.to_dict() for name, c in self.components.items()},
            "uptime_seconds": round(self.uptime_seconds, 2),
            "last_health_check": self.last_health_check.isoformat(),
            "health_span_count": self.health_span_count,
            "alerts": list(self.alerts),
        }


def _default_thresholds() -> dict[MetricType, LatencyThresholds]:
    return {kind: LatencyThresholds(warning, critical) for kind, (warning, critical) in DEFAULT_THRESHOLDS.items()}


@dataclass
class SelfMonitorConfig:
    health_emission_interval_seconds: float = DEFAULT_HEALTH_INTERVAL_S
    window_size: int = DEFAULT_WINDOW_SIZE
    #: Below this much evidence (samples plus errors, over every component) health is "unknown";
    #: per component, below it the status follows the window's average instead of its p95.
    min_samples_for_stats: int = DEFAULT_MIN_SAMPLES
    #: Kinds missing here keep their defaults from DEFAULT_THRESHOLDS.
    thresholds: dict[MetricType, LatencyThresholds] = field(default_factory=_default_thresholds)
    emit_health_spans: bool = True
    log_degraded_status: bool = True

    def __post_init__(self) -> None:
        if self.window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {self.window_size}")
        if self.min_samples_for_stats < 1:
            raise ValueError(f"min_samples_for_stats must be at least 1, got {self.min_samples_for_stats}")
        if not self.health_emission_interval_seconds > 0:
            raise ValueError(
                f"health_emission_interval_seconds must be positive, got {self.health_emission_interval_seconds}"
            )
        self.thresholds = {**_default_thresholds(), **self.thresholds}


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (Postgres ``percentile_cont``), as the store computes."""
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class LatencyTracker:
    """A bounded rolling window of one component's latencies, plus its error count.

    Thread-safe: the flusher thread records while status readers poll from other threads.
    """

    def __init__(
        self,
        metric_type: MetricType,
        thresholds: LatencyThresholds | None = None,
        window_size: int = DEFAULT_WINDOW_SIZE,
        min_samples: int = DEFAULT_MIN_SAMPLES,
    ) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {window_size}")
        self.metric_type = MetricType(metric_type)
        self.thresholds = thresholds or LatencyThresholds(*DEFAULT_THRESHOLDS[self.metric_type])
        self.window_size = window_size
        self.min_samples = max(1, min_samples)
        self._lock = threading.Lock()
        self._samples: deque[float] = deque(maxlen=window_size)
        self._total = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_error_time: datetime | None = None
        self._last_recorded: datetime | None = None

    def record(self, latency_ms: float) -> None:
        value = float(latency_ms)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{self.metric_type.value}: latency_ms must be a finite number >= 0, got {latency_ms!r}")
        with self._lock:
            self._samples.append(value)
            self._total += 1
            self._last_recorded = datetime.now(UTC)

    def record_error(self, error_message: str) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = str(error_message)
            self._last_error_time = datetime.now(UTC)

    @property
    def error_count(self) -> int:
        return self._errors

    def get_stats(self) -> LatencyStats:
        with self._lock:
            window = list(self._samples)
            total, last_recorded = self._total, self._last_recorded
        if not window:
            return LatencyStats(count=total, last_recorded=last_recorded)
        ordered = sorted(window)
        avg = math.fsum(window) / len(window)
        p95 = _percentile(ordered, 0.95)
        judged = p95 if len(window) >= self.min_samples else avg  # a p95 of two samples is noise
        return LatencyStats(
            count=total,
            min_ms=ordered[0],
            max_ms=ordered[-1],
            avg_ms=avg,
            p50_ms=_percentile(ordered, 0.50),
            p95_ms=p95,
            p99_ms=_percentile(ordered, 0.99),
            last_ms=window[-1],
            last_recorded=last_recorded,
            status=self.thresholds.check(judged),
        )

    def get_component_health(self) -> ComponentHealth:
        stats = self.get_stats()
        with self._lock:
            errors, last_error, last_error_time = self._errors, self._last_error, self._last_error_time
        health = ComponentHealth(self.metric_type.value, stats.status, stats, errors, last_error, last_error_time)
        if errors:
            rate = health.error_rate
            by_errors = (
                HealthStatus.UNHEALTHY
                if rate > ERROR_RATE_UNHEALTHY
                else HealthStatus.DEGRADED
                if rate > ERROR_RATE_DEGRADED
                else HealthStatus.HEALTHY
            )
            if _SEVERITY[by_errors] > _SEVERITY[health.status]:
                health.status = by_errors
        return health

    def reset(self) -> None:
        with self._lock:
            self._samples.clear()
            self._total = 0
            self._errors = 0
            self._last_error = None
            self._last_error_time = None
            self._last_recorded = None


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
            if _SEVERITY[health.status] > _SEVERITY[worst]:
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
