"""The vocabulary of the connector's self-monitoring: health states, the kinds of work watched,
latency thresholds, and the records :mod:`self_monitor` reports (per-component and overall).

A component's health comes from its latency window's p95 (the tail is what callers wait on; an
average hides it) against ``warning_ms`` / ``critical_ms``, and from the share of failed
operations. Too little evidence reads as ``unknown``, never as healthy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ComponentHealth",
    "HealthStatus",
    "LatencyStats",
    "LatencyThresholds",
    "MetricType",
    "OverallHealth",
    "SelfMonitorConfig",
]

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
SEVERITY = {HealthStatus.UNKNOWN: 0, HealthStatus.HEALTHY: 1, HealthStatus.DEGRADED: 2, HealthStatus.UNHEALTHY: 3}


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
