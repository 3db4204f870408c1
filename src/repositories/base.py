"""The storage contract every span backend (SQLite, Postgres, Supabase REST) fulfils.

Metrics are computed inside the store (percentiles in SQL), never by pulling rows into
Python: at a million spans that is the difference between milliseconds and minutes.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal, get_args

from src.agents.ml_foundation.observability_connector.feedback import Feedback, FeedbackByAgent
from src.agents.ml_foundation.observability_connector.models import (
    COLUMN_NAMES,
    LatencyStats,
    ObservabilitySpan,
    QualityMetrics,
    SpanStatus,
)
from src.agents.ml_foundation.observability_connector.rollups import RollupGroup

if TYPE_CHECKING:
    from src.agents.ml_foundation.observability_connector.pricing import Pricer

__all__ = [
    "COLUMNS",
    "CONVERSATION_LIMIT",
    "GROUPS",
    "MAX_WINDOW",
    "TABLE",
    "TTFT_SAMPLE_LIMIT",
    "WINDOW_FORMS",
    "BaseRepository",
    "BatchInsertResult",
    "GroupBy",
    "MetricRow",
    "ProgressCallback",
    "SpanStore",
    "StoreAuthError",
    "StoreConflictError",
    "StoreError",
    "StorePermissionError",
    "StoreRequestError",
    "StoreSchemaError",
    "StoreUnavailableError",
    "check_conversation_filter",
    "check_group_by",
    "check_limit",
    "conversation_where",
    "hours_start",
    "metric_row",
    "metric_row_of",
    "metric_row_select",
    "parse_window",
    "status_counts",
    "window_start",
]

#: The table every backend writes, and its columns in the order of :class:`ObservabilitySpan`.
TABLE: Final = "ml_observability_spans"
COLUMNS: Final[tuple[str, ...]] = tuple(COLUMN_NAMES.get(name, name) for name in ObservabilitySpan.model_fields)

GroupBy = Literal["agent", "tier", "all"]

#: Most spans one conversation read returns (a thread or a user's window); metrics filtered by
#: thread or user are computed from at most this many rows (documented in the metrics answer).
CONVERSATION_LIMIT: Final = 50_000
#: Most times to first token a TTFT percentile is computed from: the newest of the window, so a
#: busy window's figures describe its most recent streamed calls. The read is on every metrics
#: answer (benchmarks/README.md has its cost); the p95 of 10,000 values is within about half a
#: percentile point of the p95 of the population they come from.
TTFT_SAMPLE_LIMIT: Final = 10_000


#: One span as filtered metrics need it: (agent_name, agent_tier, status, duration_ms, input_tokens,
#: output_tokens, total_tokens, fallback_used truthy, an LLM call (a model named), cost_usd). No
#: attributes: a cheap row.
MetricRow = tuple[str, int, str, float | None, int | None, int | None, int | None, bool, bool, float | None]


def metric_row(span: ObservabilitySpan) -> MetricRow:
    """A stored span as a :data:`MetricRow` (fallback: Python truthiness of ``attributes.fallback_used``)."""
    try:
        fallback = bool((span.attributes or {}).get("fallback_used"))
    except Exception:  # an object whose __bool__ raises counts as no fallback
        fallback = False
    return (span.agent_name, span.agent_tier, span.status, span.duration_ms, span.input_tokens,
            span.output_tokens, span.total_tokens, fallback, span.llm_model is not None, span.cost_usd)  # fmt: skip


def conversation_where(
    window: str | None,
    agent_name: str | None,
    thread_id: str | None,
    user_id: str | None,
    trace_id: str | None = None,
    *,
    mark: str,
    since: Callable[[datetime], object] = lambda moment: moment,
) -> tuple[str, list[object]]:
    """WHERE clause of a conversation read for a SQL backend: the window (None: all time), agent,
    thread, user and trace, with the driver's placeholder ``mark`` ("?" or "%s") and the window's
    start as ``since`` turns it into the driver's value."""
    clauses: list[str] = []
    params: list[object] = []
    if window is not None:
        clauses.append(f"start_time >= {mark}")
        params.append(since(window_start(window)))
    for column, value in (
        ("agent_name", agent_name),
        ("thread_id", thread_id),
        ("user_id", user_id),
        ("trace_id", trace_id),
    ):
        if value is not None:
            clauses.append(f"{column} = {mark}")
            params.append(value)
    return " AND ".join(clauses) or "1 = 1", params


def metric_row_select(fallback_sql: str) -> str:
    """The select list of a :data:`MetricRow`, given the backend's SQL for "fallback_used is truthy"."""
    return (
        "agent_name, agent_tier, status, duration_ms, input_tokens, output_tokens, total_tokens, "
        f"{fallback_sql}, llm_model IS NOT NULL, cost_usd"
    )


def metric_row_of(row: Sequence[object]) -> MetricRow:
    """A row selected by :func:`metric_row_select` as a :data:`MetricRow` (the drivers give the two
    flags as 0/1 or booleans)."""
    return (*row[:7], bool(row[7]), bool(row[8]), row[9])  # type: ignore[return-value]


def check_conversation_filter(thread_id: str | None, user_id: str | None) -> None:
    """A conversation read names a thread or a user (else it would read the whole table)."""
    if thread_id is None and user_id is None:
        raise ValueError("a conversation read needs a thread_id or a user_id")


ProgressCallback = Callable[[int], None]

_WINDOW_RE = re.compile(r"^\s*(\d+)\s*(m|min|h|d|w)\s*$")
_UNIT = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}
WINDOW_FORMS = "a positive number followed by m, h, d or w, e.g. '30m', '1h', '24h', '7d', '2w'"


GROUPS: Final[tuple[str, ...]] = ("agent", "tier", "all")


def check_group_by(group_by: str) -> None:
    """Every backend refuses an unknown grouping the same way."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, got {group_by!r}")


def status_counts(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """(status, count) pairs as the distribution every backend returns: every stored status, zeros included."""
    distribution = dict.fromkeys(get_args(SpanStatus), 0)
    for status, count in pairs:
        distribution[str(status)] = int(count)
    return distribution


#: The longest window a question may cover: ten years reaches back past any retention period, and
#: a bound here keeps ``now - window`` a representable date (``999999d`` would be year -700).
MAX_WINDOW: Final = timedelta(days=3650)
_MAX_WINDOW_TEXT = "10 years (3650d, 521w, 87600h)"


def parse_window(window: str) -> timedelta:
    """``"24h"`` → ``timedelta(hours=24)``; anything else is a ValueError naming the forms.

    A window longer than :data:`MAX_WINDOW` is a ValueError saying so, checked on the digits
    before any ``timedelta`` is built (a 20-digit count would overflow it).
    """
    match = _WINDOW_RE.match(window) if isinstance(window, str) else None
    digits = match.group(1).lstrip("0") if match is not None else ""
    shown = repr(window) if len(repr(window)) <= 60 else f"{str(window)[:40]!r}… ({len(str(window)):,} characters)"
    if match is None or not digits:
        raise ValueError(f"time window {shown} is not understood; use {WINDOW_FORMS}")
    unit = _UNIT[match.group(2)]
    # int() of thousands of digits is itself refused (and slow): no valid window has more than 7.
    count = int(digits) if len(digits) <= 12 else None
    if count is None or count > MAX_WINDOW // timedelta(**{unit: 1}):
        raise ValueError(f"time window {shown} is too large: at most {_MAX_WINDOW_TEXT}")
    return timedelta(**{unit: count})


def window_start(window: str, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - parse_window(window)


def hours_start(hours: float, now: datetime | None = None) -> datetime:
    """Start of the last ``hours`` hours (the host's ``get_spans_by_agent`` window); ValueError unless positive."""
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours < float("inf"):
        raise ValueError(f"hours must be a positive number of hours, got {hours!r}")
    return (now or datetime.now(UTC)) - timedelta(hours=hours)


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be zero or positive, got {limit!r}")


@dataclass
class BatchInsertResult:
    """Outcome of one batch write; ``errors`` pairs a span id with the store's reason."""

    inserted: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def __iadd__(self, other: BatchInsertResult) -> BatchInsertResult:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.failed += other.failed
        self.errors.extend(other.errors)
        return self


class StoreError(Exception):
    """A store operation failed as a whole; subclasses say why, so callers can react without parsing text.

    ``retryable`` is the one thing a retry loop or spool needs to know: only a store that is
    down or overloaded can succeed on a second try; a rejected key, a missing table or a
    malformed request fails the same way every time. ``status``/``code``/``details``/``hint``
    carry the backend's own diagnosis (HTTP status, SQLSTATE or PostgREST code) when there is one.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details
        self.hint = hint


class StoreAuthError(StoreError):
    """The store did not accept our credentials (HTTP 401, a bad password): fix configuration."""


class StorePermissionError(StoreError):
    """Credentials accepted but not allowed to do this (HTTP 403, RLS, missing grant)."""


class StoreConflictError(StoreError):
    """The write conflicts with stored data in a way idempotent inserts cannot absorb (HTTP 409)."""


class StoreUnavailableError(StoreError):
    """Unreachable, timed out or failing on its side (5xx): worth retrying later, spool meanwhile."""

    retryable = True


class StoreRequestError(StoreError):
    """The store rejected the request itself (other 4xx); sending it again will not help."""


class StoreSchemaError(StoreRequestError):
    """A table, column or function the backend needs does not exist: the schema is not applied."""


class BaseRepository(ABC):
    """Lifecycle shared by every repository: lazy open, explicit close, a human description."""

    backend: str = "base"

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Create connections / schema; called lazily by the first operation."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Safe to call twice."""

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, for people (never includes a password)."""

    async def __aenter__(self) -> BaseRepository:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SpanStore(BaseRepository):
    """Operations on ``ml_observability_spans``; implemented once per backend."""

    @abstractmethod
    async def insert_span(self, span: ObservabilitySpan) -> bool:
        """True when stored, False when a span with the same (trace_id, span_id) exists."""

    @abstractmethod
    async def insert_spans_batch(self, spans: Sequence[ObservabilitySpan]) -> BatchInsertResult:
        """Idempotent batch write; one bad row never costs the others."""

    @abstractmethod
    async def get_spans_by_time_window(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        limit: int = 1000,
    ) -> list[ObservabilitySpan]:
        """Spans whose start_time falls in the window, oldest first."""

    @abstractmethod
    async def get_spans_by_trace_id(self, trace_id: str) -> list[ObservabilitySpan]:
        """Every span of one trace, oldest first."""

    @abstractmethod
    async def get_spans_by_agent(self, agent_name: str, hours: float = 24, limit: int = 500) -> list[ObservabilitySpan]:
        """One agent's spans that started in the last ``hours`` hours, **newest first**, at most ``limit``.

        The host's signature and order: "what has this agent done lately". Same window rule as
        every read (``start_time >= now - hours``, no upper bound). ValueError for a non-positive
        ``hours`` or a negative ``limit``, before any I/O.
        """

    @abstractmethod
    async def get_latency_stats(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        group_by: GroupBy = "agent",
    ) -> list[LatencyStats]:
        """Per-group count/avg/p50/p95/p99 (continuous percentiles), errors and tokens."""

    @abstractmethod
    async def get_status_distribution(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> dict[str, int]:
        """Span counts per stored status (ok / error / timeout / started) in the window, zeros included.

        The raw counts; the metrics node folds ``started`` into ``ok`` for the host's shape.
        """

    @abstractmethod
    async def get_quality_metrics(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> QualityMetrics:
        """System-wide success, latency percentiles, fallback rate and quality score."""

    @abstractmethod
    async def delete_old_spans(
        self, days: int, batch_size: int = 10_000, progress: ProgressCallback | None = None
    ) -> int:
        """Delete spans that started more than ``days`` ago, in batches; returns the count."""

    @abstractmethod
    async def count_spans(self) -> int:
        """All rows, for status output and tests."""

    async def get_conversation_spans(
        self,
        window: str | None = None,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        limit: int = CONVERSATION_LIMIT,
    ) -> list[ObservabilitySpan]:
        """Spans of one conversation (``thread_id``) and/or one user, oldest first, at most ``limit``.

        ``window`` None reads all time (``trace --thread``). Served by the partial indexes on
        (thread_id, start_time) / (user_id, start_time). ValueError without a thread or user.
        """
        raise NotImplementedError(f"the {self.backend} store cannot read conversations")

    async def get_ttft_samples(
        self,
        window: str,
        agent_name: str | None = None,
        thread_id: str | None = None,
        user_id: str | None = None,
        limit: int = TTFT_SAMPLE_LIMIT,
    ) -> list[tuple[str, str | None, float]]:
        """``(agent_name, llm_model, ttft_ms)`` of the newest ``limit`` spans of the window that have
        a time to first token (the partial index on start_time WHERE ttft_ms IS NOT NULL)."""
        raise NotImplementedError(f"the {self.backend} store cannot read times to first token")

    async def get_conversation_metric_rows(
        self,
        window: str | None = None,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        trace_id: str | None = None,
        limit: int = CONVERSATION_LIMIT,
    ) -> list[MetricRow]:
        """What filtered metrics read: one :data:`MetricRow` per span of the conversation / user,
        oldest first, at most ``limit``. This default builds them from
        :meth:`get_conversation_spans`; the SQL backends select the ten values only."""
        spans = await self.get_conversation_spans(
            window, thread_id=thread_id, user_id=user_id, agent_name=agent_name, limit=limit
        )
        return [metric_row(s) for s in spans if trace_id is None or s.trace_id == trace_id]

    async def rollup_groups(self, window: str, agent_name: str | None = None) -> list[RollupGroup] | None:
        """Every (agent, tier) of the window from the rollups (``rollups.py``); None when this
        backend keeps none, and the caller answers from the raw rows."""
        parse_window(window)
        return None

    async def raw_cost_groups(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> list[RollupGroup]:
        """The cost figures (``cost_sum``, ``n_unpriced``) per (agent, tier) of the window's raw
        rows, for questions the rollups cannot answer (a trace filter). This default reads at
        most ``cost_metrics.RAW_COST_ROWS`` rows (one trace is far fewer); the SQL backends sum
        in the database instead."""
        from src.agents.ml_foundation.observability_connector.cost_metrics import RAW_COST_ROWS, cost_groups

        rows = await self.get_spans_by_time_window(
            window, agent_name=agent_name, trace_id=trace_id, limit=RAW_COST_ROWS
        )
        return cost_groups(rows)

    async def price_unpriced(
        self,
        pricer: Pricer,
        since: datetime | None = None,
        batch_size: int = 1_000,
        progress: ProgressCallback | None = None,
    ) -> tuple[int, int]:
        """Set ``cost_usd`` on stored LLM rows that have none (written before the column or before
        an override named their model), from ``span_cost.call_cost`` with ``pricer``, rollups
        kept exact; rows nobody prices stay null. Returns (rows examined, rows priced);
        ``progress`` gets the running count priced. NotImplementedError where the backend
        cannot update rows."""
        raise NotImplementedError(f"the {self.backend} store cannot price stored rows; use its database directly")

    async def rebuild_rollups(self, since: datetime | None = None, progress: ProgressCallback | None = None) -> int:
        """Recompute the rollups from the raw rows, whole UTC days from ``since`` (all when None);
        returns the days rebuilt. NotImplementedError where the backend keeps none."""
        raise NotImplementedError(f"the {self.backend} store keeps no rollups")

    async def verify_rollups(self, since: datetime | None = None) -> list[str]:
        """Every difference between the rollups and the raw rows from ``since`` (empty: consistent)."""
        raise NotImplementedError(f"the {self.backend} store keeps no rollups")

    # -- feedback scores (``ml_observability_feedback``; see feedback.py) ------------------------

    async def insert_feedback_batch(self, items: Sequence[Feedback]) -> BatchInsertResult:
        """Idempotent write of feedback rows (a replayed ``feedback_id`` is a duplicate, never a copy)."""
        raise NotImplementedError(f"the {self.backend} store keeps no feedback")

    async def get_feedback_by_agent(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> FeedbackByAgent:
        """``{agent: {name: {"avg", "count"}}}`` of the scores created in the window: a span's score
        counts for its span's agent, a trace's for its root span's, one without a stored span for
        ``"unknown"``."""
        raise NotImplementedError(f"the {self.backend} store keeps no feedback")

    async def get_feedback(self, trace_id: str) -> list[Feedback]:
        """Every score of one trace, oldest first."""
        raise NotImplementedError(f"the {self.backend} store keeps no feedback")

    async def find_trace_of_span(self, span_id: str) -> str | None:
        """The trace id of a stored span known by its span id alone (None: not stored)."""
        raise NotImplementedError(f"the {self.backend} store cannot look spans up by id")

    async def delete_old_feedback(self, days: int) -> int:
        """Delete scores given more than ``days`` ago (retention, with the spans); returns the count."""
        raise NotImplementedError(f"the {self.backend} store keeps no feedback")
