"""One component's bounded rolling window of latencies and its error count (:class:`LatencyTracker`).

Bounded so memory stays flat however long the process runs, and so the picture follows recent
behaviour rather than the whole uptime.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from datetime import UTC, datetime

from .health_status import (
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
)

__all__ = ["LatencyTracker"]


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
            if SEVERITY[by_errors] > SEVERITY[health.status]:
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
