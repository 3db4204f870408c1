"""A circuit breaker for a remote sink, fed with real batch outcomes.

Why a breaker at all: when a sink is down, every attempt costs a connect or read timeout, and a
flood of attempts against a struggling server slows its recovery. The delivery layer keeps one
per sink (store, Opik). After ``failure_threshold`` consecutive failed batches the breaker
opens and no call is attempted; after ``recovery_timeout_s`` it lets exactly one batch through
as a probe (half-open); the probe's outcome closes or re-opens it.

Only failures of a whole batch are counted (timeouts, refused connections, 5xx, 429): rows a
sink refuses one by one (a 400 from Opik) mean the server is up and answering, so that closes
the breaker like a success.
Thread-safe: the delivery records outcomes on the flusher's loop while status readers poll from others.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CircuitBreaker", "CircuitState"]


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class _Counters:
    successes: int = 0
    failures: int = 0
    times_opened: int = 0
    rejected_calls: int = 0


class CircuitBreaker:
    """CLOSED → (threshold consecutive failures) → OPEN → (recovery timeout) → HALF_OPEN → probe."""

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout_s: float = 30.0,
        *,
        name: str = "opik",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if recovery_timeout_s < 0:
            raise ValueError(f"recovery_timeout_s must not be negative, got {recovery_timeout_s}")
        self.failure_threshold = failure_threshold
        self.recovery_timeout_s = recovery_timeout_s
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._counters = _Counters()
        self.last_failure: str | None = None

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN breaker whose timeout has passed reads as HALF_OPEN."""
        with self._lock:
            self._maybe_half_open()
            return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    def seconds_until_probe(self) -> float:
        """How long until a call may be attempted again (0 when one may be attempted now)."""
        with self._lock:
            self._maybe_half_open()
            if self._state is CircuitState.OPEN and self._opened_at is not None:
                return max(0.0, self._opened_at + self.recovery_timeout_s - self._clock())
            return 0.0

    # -- the protocol ----------------------------------------------------------------------

    def allow_request(self) -> bool:
        """True when a call may go out now; in HALF_OPEN only one probe at a time is allowed."""
        with self._lock:
            self._maybe_half_open()
            if self._state is CircuitState.CLOSED:
                return True
            if self._state is CircuitState.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            self._counters.rejected_calls += 1
            return False

    def release_probe(self) -> None:
        """A call allowed as the half-open probe never got an answer (cancelled): let another probe go."""
        with self._lock:
            self._probe_in_flight = False

    def record_success(self) -> None:
        with self._lock:
            self._counters.successes += 1
            self._consecutive_failures = 0
            self._probe_in_flight = False
            self._state = CircuitState.CLOSED
            self._opened_at = None

    def record_failure(self, reason: str | None = None) -> None:
        with self._lock:
            self._counters.failures += 1
            self._consecutive_failures += 1
            self.last_failure = reason
            was_probe = self._probe_in_flight
            self._probe_in_flight = False
            # A failed probe re-opens at once; a closed breaker opens at the threshold.
            tripped = self._consecutive_failures >= self.failure_threshold
            if was_probe or self._state is CircuitState.HALF_OPEN or tripped:
                self._open()

    def reset(self) -> None:
        """Back to CLOSED with no history (tests, or an operator after fixing the sink)."""
        with self._lock:
            self._state = CircuitState.CLOSED
            self._consecutive_failures = 0
            self._opened_at = None
            self._probe_in_flight = False
            self._counters = _Counters()
            self.last_failure = None

    def get_status(self) -> dict[str, Any]:
        with self._lock:
            self._maybe_half_open()
            retry_in = (
                max(0.0, self._opened_at + self.recovery_timeout_s - self._clock())
                if self._state is CircuitState.OPEN and self._opened_at is not None
                else 0.0
            )
            return {
                "state": self._state.value,
                "consecutive_failures": self._consecutive_failures,
                "failure_threshold": self.failure_threshold,
                "recovery_timeout_s": self.recovery_timeout_s,
                "retry_in_s": round(retry_in, 3),
                "times_opened": self._counters.times_opened,
                "successes": self._counters.successes,
                "failures": self._counters.failures,
                "calls_not_attempted": self._counters.rejected_calls,
                "last_failure": self.last_failure,
            }

    def _after_fork_in_child(self) -> None:
        """A forked child gets a fresh lock (another thread may have held this one at the fork)."""
        self._lock = threading.Lock()
        self._probe_in_flight = False

    # -- internals (lock held) ---------------------------------------------------------------

    def _open(self) -> None:
        if self._state is not CircuitState.OPEN:
            self._counters.times_opened += 1
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()

    def _maybe_half_open(self) -> None:
        if (
            self._state is CircuitState.OPEN
            and self._opened_at is not None
            and self._clock() - self._opened_at >= self.recovery_timeout_s
        ):
            self._state = CircuitState.HALF_OPEN
            self._probe_in_flight = False

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value}, failures={self._consecutive_failures})"
