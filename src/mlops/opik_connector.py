"""The Opik sink: batches of validated spans to Opik, off every agent's path, none lost.

How it fits: agents never talk to Opik. Their spans reach the connector graph's ``batch`` node
(on the background flusher, once per batch), which writes the store and, concurrently, hands
the same validated rows to :meth:`OpikConnector.deliver`. That converts them to Opik bodies,
appends them to an ordered backlog and returns; a dedicated sender task on the connector's own
thread and event loop sends the backlog in order with the ``opik`` package's REST client
(``AsyncOpikApi``: the ``traces/batch`` and ``spans/batch`` requests of its ``create_traces`` /
``create_spans``) and sees each batch's outcome. The SDK's own background queue is not used: it
caps near 1.5k spans/s per process and, with the server down, parks or drops data while
``flush()`` reports success (DESIGN.md).

Why a thread of its own rather than a task on the flusher's loop: there is one connector per
process but one flusher per agent instance, and the graph is also invoked on callers' loops
(the orchestrator, Studio); an httpx connection pool belongs to one loop. The agents' own
flusher never waits for Opik; a caller invoking the graph directly waits at most ``wait_s``,
and only while nothing is ahead of its batch and the circuit is closed — so a 10 s hang costs
one such caller ``wait_s`` once and never backs up the agents' buffer.

Why batches are encoded here and posted through the REST client's transport rather than its
generated ``create_spans``: that method converts every item against its type annotations
(``convert_and_respect_annotation_metadata`` + ``jsonable_encoder``), measured at 0.4–0.7 ms per
span on this machine — the SDK's own ceiling. Same endpoints, same bodies, same ``ApiError``;
``OpikConfig(encode_once=False)`` uses the generated methods (the tests run both).

Failure handling: a :class:`~src.mlops.circuit_breaker.CircuitBreaker` counts every attempt's
real outcome; a failed batch stays at the head of the backlog and is retried with backoff, then
only as the breaker's half-open probe. Rejections (400, 409, 413, 415, 422: the data, not the
server) are recorded with the server's reason and never retried, so they hold nothing up. The
in-memory backlog is bounded in bytes and in spans (``replay_backlog_max_bytes`` / ``_spans``):
past a bound the oldest batches move to the connector's on-disk spool (sink "opik",
:meth:`attach_spool`) and come back once Opik answers, also after a restart; without a spool
they are dropped, counted and logged with their time range — they are in the store, and
:meth:`replay_from_store` resends them. Ids are deterministic (``opik_ids``), so a resend never
duplicates anything in Opik.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import itertools
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from src.agents.ml_foundation.observability_connector.fork import register_after_fork, watch_after_fork
from src.agents.ml_foundation.observability_connector.redaction import redact_url

from .circuit_breaker import CircuitBreaker, CircuitState
from .opik_ids import opik_span_id, opik_trace_id
from .opik_payloads import SpanLike, TraceBook, feedback_score, iso, span_payload

if TYPE_CHECKING:
    from src.agents.ml_foundation.observability_connector.spans import Span

__all__ = [
    "OPIK_ENV_VARS",
    "CircuitBreaker",  # re-exported: the host imports both from mlops.opik_connector
    "CircuitState",
    "OpikConfig",
    "OpikConnector",
    "get_opik_connector",
    "opik_configured",
    "reset_opik_connector",
    "set_opik_connector",
]

log = logging.getLogger(__name__)

OPIK_CLOUD_URL = "https://www.comet.com/opik/api"
OPIK_LOCAL_URL = "http://localhost:5173/api"
#: The environment variables this module reads (the live test and the test suite's isolation use it).
OPIK_ENV_VARS = ("OPIK_API_KEY", "OPIK_URL_OVERRIDE", "OPIK_WORKSPACE", "OPIK_PROJECT_NAME")
#: The data, not the server, is at fault: retrying cannot help, and holding the batch would block the rest.
PERMANENT_STATUSES = frozenset({400, 409, 413, 415, 422})
_GZIP_MIN_BYTES = 1024
_REASON_LIMIT = 500


# --------------------------------------------------------------------------- configuration


def _get(section: Any, name: str, default: Any) -> Any:
    value = getattr(section, name, None) if section is not None else None
    return default if value is None else value


def _enabled_setting(opik_section: Any) -> str:
    value = _get(opik_section, "enabled", "auto")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower()


def opik_configured(settings: Any = None, environ: Mapping[str, str] | None = None) -> bool:
    """Opik is on when ``opik.enabled`` is true, or it is ``auto`` and ``OPIK_URL_OVERRIDE``/``OPIK_API_KEY`` is set."""
    env = os.environ if environ is None else environ
    enabled = _enabled_setting(getattr(settings, "opik", None))
    if enabled in ("false", "off", "no", "0"):
        return False
    if enabled in ("true", "on", "yes", "1"):
        return True
    return bool(env.get("OPIK_URL_OVERRIDE") or env.get("OPIK_API_KEY"))


@dataclass(frozen=True)
class OpikConfig:
    """Resolved settings of the sink; the API key, and a password in the URL, are kept out of
    ``repr`` and every log line."""

    url: str = field(repr=False)
    api_key: str | None = field(default=None, repr=False)
    workspace: str = "default"
    project_name: str = "e2i-causal-analytics"
    request_timeout_s: float = 10.0
    wait_s: float = 1.0
    max_items_per_request: int = 1000
    #: Requests sent at once while Opik is healthy (a retry or a probe always goes alone).
    max_requests_in_flight: int = 2
    #: The in-memory backlog's bounds; past either, the oldest batches wait in the on-disk spool.
    #: Bytes are the unit that tracks memory (a span with a long prompt weighs a hundred short
    #: ones); the span count only caps how many are held when spans are tiny.
    replay_backlog_max_spans: int = 100_000
    replay_backlog_max_bytes: int = 16 * 1024 * 1024
    failure_threshold: int = 5
    recovery_timeout_s: float = 30.0
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 8.0
    shutdown_timeout_s: float = 5.0
    max_traces_tracked: int = 20_000
    #: True: span and trace batches are encoded once, when handed over, and posted through the REST
    #: client's transport. False: through the generated ``create_spans`` / ``create_traces`` methods,
    #: whose per-item conversion (``convert_and_respect_annotation_metadata`` + ``jsonable_encoder``)
    #: measured ~0.4–0.7 ms per span here — the SDK's own ceiling. Same endpoints, same bodies.
    encode_once: bool = True
    #: How often an idle sender looks for work. Handing a batch over does not wake it (a
    #: cross-thread wake-up is a syscall that costs the flusher the GIL), unless the caller waits.
    idle_poll_s: float = 0.05

    @classmethod
    def from_settings(cls, settings: Any = None, environ: Mapping[str, str] | None = None) -> OpikConfig:
        """Settings' ``opik`` / ``circuit_breaker`` sections, then Opik's own environment variables on top.

        ``OPIK_URL_OVERRIDE``, ``OPIK_WORKSPACE`` and ``OPIK_PROJECT_NAME`` win over the file, as
        the environment does everywhere else; the key only ever comes from ``OPIK_API_KEY``.
        """
        env = os.environ if environ is None else environ
        section = getattr(settings, "opik", None)
        breaker = getattr(settings, "circuit_breaker", None)
        key = env.get("OPIK_API_KEY") or None
        url = env.get("OPIK_URL_OVERRIDE") or _get(section, "url", None) or (OPIK_CLOUD_URL if key else OPIK_LOCAL_URL)
        batching = getattr(settings, "batching", None)
        return cls(
            url=str(url).rstrip("/"),
            api_key=key,
            workspace=env.get("OPIK_WORKSPACE") or _get(section, "workspace", "default"),
            project_name=env.get("OPIK_PROJECT_NAME") or _get(section, "project_name", "e2i-causal-analytics"),
            request_timeout_s=float(_get(section, "request_timeout_s", 10.0)),
            wait_s=float(_get(section, "wait_s", 1.0)),
            max_items_per_request=int(_get(section, "max_items_per_request", 1000)),
            max_requests_in_flight=int(_get(section, "max_requests_in_flight", 2)),
            replay_backlog_max_spans=int(_get(section, "replay_backlog_max_spans", 100_000)),
            replay_backlog_max_bytes=int(_get(section, "replay_backlog_max_mb", 16) * 1024 * 1024),
            failure_threshold=int(_get(breaker, "failure_threshold", 5)),
            recovery_timeout_s=float(
                _get(breaker, "recovery_timeout_s", _get(breaker, "recovery_timeout_seconds", 30.0))
            ),
            retry_backoff_s=float(_get(section, "retry_backoff_s", 0.5)),
            retry_backoff_max_s=float(_get(section, "retry_backoff_max_s", 8.0)),
            shutdown_timeout_s=float(_get(batching, "shutdown_timeout_s", 5.0)),
        )


def _load_rest_client() -> tuple[Any, Any, Any]:
    """Import the ``opik`` REST client with its phone-home features off (they would reach the internet)."""
    os.environ.setdefault("OPIK_SENTRY_ENABLE", "false")
    os.environ.setdefault("OPIK_ANALYTICS_ENABLE", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import httpx
    from opik.rest_api.client import AsyncOpikApi
    from opik.rest_api.core.api_error import ApiError

    return AsyncOpikApi, ApiError, httpx


def _gzip_client(httpx: Any, timeout: float) -> Any:
    """An ``httpx.AsyncClient`` that gzips JSON bodies, as Opik's own client does.

    Level 1: on this path CPU is shared with the agents (one GIL), and level 1 already gets
    most of the size reduction on span JSON.
    """

    class GzipJsonClient(httpx.AsyncClient):  # type: ignore[misc, name-defined]
        def build_request(self, method: str, url: Any, **kwargs: Any) -> Any:
            payload = kwargs.get("json")
            if payload is not None and method.upper() in ("POST", "PUT", "PATCH"):
                raw, gzipped = encode_body(payload)
                headers = {k: v for k, v in dict(kwargs.get("headers") or {}).items() if k.lower() != "content-type"}
                headers["Content-Type"] = "application/json"
                if gzipped:
                    headers["Content-Encoding"] = "gzip"
                kwargs.update(json=None, content=raw, headers=headers)
            return super().build_request(method, url, **kwargs)

    limits = httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=30.0)
    return GzipJsonClient(timeout=httpx.Timeout(timeout), limits=limits, follow_redirects=True)


# --------------------------------------------------------------------------- the backlog


@dataclass
class BatchOutcome:
    """What happened to a batch the first time it was tried (or why it was not tried)."""

    status: str  # sent | rejected | retrying | overflow | closed
    spans: int
    reason: str | None = None


_ORJSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def _dumps(value: Any) -> bytes:
    """Compact JSON; datetimes as RFC 3339 UTC with a ``Z`` (span bodies carry them unformatted).

    orjson first: about five times the standard encoder's speed on span bodies, and it formats
    the datetimes in C, which was a tenth of the flusher's time as ``isoformat`` calls. What it
    refuses (an integer past 64 bits, a lone surrogate, a non-string key) goes through the
    standard encoder, so one odd value never costs a batch its delivery.
    """
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS)
    except (TypeError, ValueError):
        return json.dumps(value, separators=(",", ":"), allow_nan=False, default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _gzip(raw: bytes) -> tuple[bytes, bool]:
    """Gzipped past 1 KB (level 1: this CPU is shared with the agents through the GIL)."""
    if len(raw) >= _GZIP_MIN_BYTES:
        return gzip.compress(raw, 1), True
    return raw, False


def encode_body(payload: dict[str, Any]) -> tuple[bytes, bool]:
    return _gzip(_dumps(payload))


#: Estimated bytes an unencoded item holds in memory (dicts of a span or trace body, measured
#: with tracemalloc: ~1.4 KB per trace summary, ~2 KB per unencoded span body).
_TRACE_BODY_BYTES: Final = 1_400
_SPAN_BODY_BYTES: Final = 2_048
_SCORE_BYTES: Final = 300


def _mib(size: int) -> str:
    return f"{size / 2**20:.3g} MiB"


def _weight(
    spans: bytes | list[dict[str, Any]] | None,
    traces: list[dict[str, Any]],
    scores: list[dict[str, Any]],
    span_count: int,
) -> int:
    """What a batch costs the process's memory, for the backlog's byte bound (an estimate)."""
    body = len(spans) if isinstance(spans, bytes) else span_count * _SPAN_BODY_BYTES
    return body + len(traces) * _TRACE_BODY_BYTES + len(scores) * _SCORE_BYTES


class _Entry:
    """One batch waiting for Opik.

    ``spans`` is the JSON of its span bodies without the brackets (``encode_once``: compact in
    the backlog, and consecutive batches join into one request by concatenation) or the list of
    bodies (the generated methods). ``traces`` are the cumulative trace records it touched.
    """

    __slots__ = (
        "attempts",
        "first_start",
        "future",
        "kind",
        "last_start",
        "obs_ids",
        "parts_done",
        "scores",
        "solo",
        "span_count",
        "spans",
        "spool_id",
        "traces",
        "weight",
    )

    def __init__(
        self,
        kind: str,
        *,
        spans: bytes | list[dict[str, Any]] | None = None,
        traces: list[dict[str, Any]] | None = None,
        scores: list[dict[str, Any]] | None = None,
        span_count: int = 0,
        obs_ids: list[str] | None = None,
        first_start: str | None = None,
        last_start: str | None = None,
    ) -> None:
        self.kind = kind  # spans | trace_scores | span_scores
        self.spans = spans
        self.traces = traces or []
        self.scores = scores or []
        self.span_count = span_count
        self.obs_ids = obs_ids or []
        self.first_start = first_start
        self.last_start = last_start
        self.future: Future[BatchOutcome] = Future()
        self.attempts = 0
        self.parts_done: set[str] = set()
        self.solo = kind != "spans"  # True: never joined with its neighbours into one request
        self.spool_id: int | None = None  # set when this batch also waits on disk (sink "opik")
        self.weight = _weight(spans, self.traces, self.scores, span_count)

    def to_record(self) -> dict[str, Any]:
        """The batch as one JSON record for the on-disk spool (already converted and encoded)."""
        spans = self.spans.decode() if isinstance(self.spans, bytes) else self.spans
        return {
            "encoded": isinstance(self.spans, bytes),
            "spans": spans,
            "traces": self.traces,
            "span_count": self.span_count,
            "obs_ids": self.obs_ids,
            "first_start": self.first_start,
            "last_start": self.last_start,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], spool_id: int) -> _Entry:
        spans = record["spans"].encode() if record.get("encoded") else record["spans"]
        entry = cls(
            "spans",
            spans=spans,
            traces=record.get("traces") or [],
            span_count=int(record["span_count"]),
            obs_ids=record.get("obs_ids") or [],
            first_start=record.get("first_start"),
            last_start=record.get("last_start"),
        )
        entry.spool_id = spool_id
        return entry

    def resolve(self, outcome: BatchOutcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


@dataclass
class OpikStats:
    spans_submitted: int = 0
    spans_sent: int = 0
    batches_sent: int = 0
    requests_sent: int = 0  # one request may carry several batches when a backlog is sent
    batch_attempts_failed: int = 0
    batches_rejected: int = 0
    spans_rejected: int = 0
    spans_overflowed: int = 0
    spans_spilled: int = 0  # moved from the in-memory backlog to the on-disk spool
    spans_unsent_at_close: int = 0
    feedback_sent: int = 0
    last_error: str | None = None
    last_success_at: str | None = None


@dataclass
class _Ticket:
    entries: list[_Entry]
    ahead: int
    state: CircuitState


# --------------------------------------------------------------------------- the connector


class OpikConnector:
    """The process's Opik sink and a small convenience API for code that thinks in Opik terms."""

    def __init__(
        self,
        config: OpikConfig,
        *,
        tier_names: Mapping[int, str] | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.config = config
        self.breaker = CircuitBreaker(config.failure_threshold, config.recovery_timeout_s, name="opik", clock=clock)
        self.stats = OpikStats()
        self.rejections: deque[dict[str, Any]] = deque(maxlen=50)
        self.overflows: deque[dict[str, Any]] = deque(maxlen=50)
        self._book = TraceBook(config.project_name, tier_names, config.max_traces_tracked)
        self._tier_names: Mapping[int, str] = tier_names or {}
        self._backlog: deque[_Entry] = deque()
        self._backlog_spans = 0
        self._backlog_bytes = 0
        # Durability: batches pushed out of the bounded in-memory backlog (and those left at
        # close) wait in the connector's on-disk spool under sink "opik" and come back in order
        # of age once Opik answers again, so an outage or a restart costs Opik nothing.
        self._spool: Any = None
        self._spooled_in_memory: set[int] = set()
        self._last_refill = 0.0
        self._in_flight: list[_Entry] = []
        self._lock = threading.Lock()
        self._start_lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._stop_event: asyncio.Event | None = None
        self._closing = False
        self._closed = False
        self._sender_idle = True
        self._close_deadline = float("inf")
        self._agent_ref: weakref.ref[Any] | None = None
        self._owned_agent: Any = None
        self._failure_logged = False
        # Import the client now, on the thread that builds the configuration (start-up), not
        # later on the sender thread while agents run: importing ~2k modules holds the GIL.
        self._client_parts = _load_rest_client()
        _register_exit(self)
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: the sender thread, its loop and HTTP client are the parent's, and so
        are the batches waiting to be sent (the parent sends them). Forget them, and the parent's
        spool handle (the child's context attaches its own); the next batch starts a sender of
        the child's own. Locks another thread may have held at the fork are replaced."""
        self._lock = threading.Lock()
        self._start_lock = threading.RLock()
        self.breaker._lock = threading.Lock()
        self._book._lock = threading.Lock()
        self._backlog = deque()
        self._backlog_spans = self._backlog_bytes = 0
        self._in_flight = []
        self._spooled_in_memory = set()
        self._spool = None
        self._thread = None
        self._loop = None
        self._wake_event = self._stop_event = None
        self._sender_idle = True
        self.stats = OpikStats()
        self.rejections = deque(maxlen=50)
        self.overflows = deque(maxlen=50)

    @classmethod
    def from_settings(
        cls, settings: Any = None, environ: Mapping[str, str] | None = None, tier_names: Mapping[int, str] | None = None
    ) -> OpikConnector:
        return cls(OpikConfig.from_settings(settings, environ), tier_names=tier_names)

    @classmethod
    def instance(cls) -> OpikConnector | None:
        """The process-wide connector, built from configuration when Opik is configured."""
        return get_opik_connector()

    @property
    def project_name(self) -> str:
        return self.config.project_name

    @property
    def workspace(self) -> str:
        return self.config.workspace

    @property
    def url(self) -> str:
        """Where spans go, without a password the URL may carry (for output; the client uses config.url)."""
        return redact_url(self.config.url)

    def __repr__(self) -> str:
        key = "set" if self.config.api_key else "unset"
        return (
            f"OpikConnector(url={self.url!r}, workspace={self.config.workspace!r}, "
            f"project={self.config.project_name!r}, api_key={key}, breaker={self.breaker.state.value})"
        )

    # -- the sink (called by the graph's batch node) -------------------------------------

    def attach_spool(self, spool: Any) -> None:
        """Spill what the backlog cannot hold to ``spool`` (a ``Spool``) instead of dropping it.

        A backlog a previous process left there is sent as soon as Opik answers.
        """
        self._spool = spool
        try:
            inherited = spool.has_pending("opik")
        except Exception as exc:
            log.error("reading the Opik spool failed: %s", exc)
            inherited = False
        if inherited:
            self._ensure_started()

    def _spill(self, entries: list[_Entry], why: str, note: str) -> list[_Entry]:
        """Write batches to the spool (those not already there); returns the ones that could not be.

        Each batch now on disk is resolved as ``retrying`` with ``note``: it is sent when Opik answers.
        """
        spool = self._spool
        if spool is None:
            return entries
        failed: list[_Entry] = []
        spilled = 0
        for entry in entries:
            if entry.kind != "spans":
                failed.append(entry)
                continue
            if entry.spool_id is None:
                try:
                    spool.append([entry.to_record()], ["opik"], n_spans=entry.span_count)
                except Exception as exc:  # the disk failed too: fall back to counting the loss
                    log.error("could not spill an Opik batch to the spool: %s", exc)
                    failed.append(entry)
                    continue
            else:
                self._spooled_in_memory.discard(entry.spool_id)  # back on disk only, reloaded later
            spilled += entry.span_count
            entry.resolve(BatchOutcome("retrying", entry.span_count, note))
        if spilled:
            self.stats.spans_spilled += spilled
            log.warning(
                "%d span(s) for Opik moved to the on-disk spool (%s); they are sent when Opik answers", spilled, why
            )
        return failed

    def _refill_from_spool(self) -> None:
        """With the circuit closed and room in the backlog, bring spooled batches back (oldest first)."""
        spool = self._spool
        closed = self.breaker.state is CircuitState.CLOSED
        if spool is None or (not closed and self._backlog):
            return  # an open circuit probes with what is in memory; with nothing there, one batch
        now = time.monotonic()
        if now - self._last_refill < 0.2:
            return
        self._last_refill = now
        room = self.config.replay_backlog_max_spans // 2 - self._backlog_spans
        room_bytes = self.config.replay_backlog_max_bytes // 2 - self._backlog_bytes
        if (room <= 0 or room_bytes <= 0) and self._backlog:
            return
        try:
            batches = spool.pending("opik", limit=64 if closed else 1)
        except Exception as exc:
            log.error("reading the Opik spool failed: %s", exc)
            return
        entries: list[_Entry] = []
        for batch in batches:
            if batch.id in self._spooled_in_memory or not batch.rows:
                continue
            entry = _Entry.from_record(batch.rows[0], batch.id)
            if (entry.span_count > room or entry.weight > room_bytes) and (entries or self._backlog):
                break  # an empty backlog always takes one batch, however big
            room -= entry.span_count
            room_bytes -= entry.weight
            self._spooled_in_memory.add(batch.id)
            entries.append(entry)
        if entries:
            with self._lock:
                for entry in entries:
                    self._push(entry)

    def _settle_spooled(self, entry: _Entry) -> None:
        """A batch that also waits on disk got its final answer: remove it from the spool."""
        if entry.spool_id is None or self._spool is None:
            return
        self._spooled_in_memory.discard(entry.spool_id)
        try:
            self._spool.ack("opik", entry.spool_id)
        except Exception as exc:  # worst case it is sent once more: ids are deterministic
            log.error("acknowledging a spooled Opik batch failed: %s", exc)

    def submit(self, spans: Sequence[SpanLike], *, wake: bool = False) -> _Ticket:
        """Convert and enqueue; returns at once. Runs on the flusher (or a caller's loop), never an agent's path."""
        entries: list[_Entry] = []
        size = max(1, min(self.config.max_items_per_request, 1000))
        for start in range(0, len(spans), size):
            chunk = spans[start : start + size]
            bodies: list[dict[str, Any]] = []
            for span in chunk:
                try:
                    bodies.append(span_payload(span, self.config.project_name, self._tier_names))
                except Exception as exc:  # one odd row must not cost the batch its delivery
                    self._record_rejection(1, f"span {getattr(span, 'span_id', '?')!r} not convertible: {exc!r}")
            if not bodies:
                continue
            traces = self._book.update(chunk)
            starts = [b["start_time"] for b in bodies]
            encoded: bytes | list[dict[str, Any]] = bodies
            if not self.config.encode_once:  # the generated methods and the spool's JSON take strings
                for body in bodies:
                    body["start_time"] = iso(body["start_time"])
                    if "end_time" in body:
                        body["end_time"] = iso(body["end_time"])
            else:
                try:
                    encoded = _dumps(bodies)[1:-1]
                except (TypeError, ValueError) as exc:  # json_safe makes this unreachable; never lose it silently
                    self._record_rejection(len(bodies), f"batch not encodable as JSON: {exc!r}")
                    continue
            entries.append(
                _Entry(
                    "spans",
                    spans=encoded,
                    traces=traces,
                    span_count=len(bodies),
                    obs_ids=[str(getattr(span, "span_id", "")) for span in chunk[:20]],
                    first_start=iso(min(starts)),
                    last_start=iso(max(starts)),
                )
            )
        return self._enqueue(entries, wake)

    async def deliver(self, spans: Sequence[SpanLike], wait_s: float | None = None) -> dict[str, Any]:
        """Hand a validated batch to Opik; the outcome in the batch node's state fields.

        Never raises. It waits for Opik's answer (at most ``wait_s``, default ``opik.wait_s``)
        only when nothing is ahead of this batch and the circuit is closed, and reports
        ``opik_spans_sent``; otherwise the batch is ``opik_spans_queued``, sent later in order.
        The agents' own flusher passes ``wait_s=0``: nobody reads its state, and not waiting
        lets the sender join consecutive batches into one request.
        """
        wait = self.config.wait_s if wait_s is None else wait_s
        try:
            ticket = self.submit(spans, wake=wait > 0)
        except Exception as exc:  # the sink must never break the batch node
            log.exception("handing %d span(s) to Opik failed", len(spans))
            return {"opik_spans_sent": 0, "opik_spans_queued": 0, "opik_error": f"{type(exc).__name__}: {exc}"}
        if ticket.ahead == 0 and ticket.state is CircuitState.CLOSED and wait > 0 and ticket.entries:
            waits = [asyncio.wrap_future(e.future) for e in ticket.entries]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*waits)), wait)
        sent = queued = 0
        errors: list[str] = []
        for entry in ticket.entries:
            outcome = entry.future.result() if entry.future.done() else None
            if outcome is not None and outcome.status == "sent":
                sent += outcome.spans
                continue
            if outcome is None or outcome.status == "retrying":
                queued += entry.span_count
            if outcome is not None and outcome.reason:
                errors.append(f"{outcome.status}: {outcome.reason}")
        if ticket.state is not CircuitState.CLOSED and not errors:
            errors.append(f"circuit {ticket.state.value}: queued for replay")
        return {"opik_spans_sent": sent, "opik_spans_queued": queued, "opik_error": "; ".join(errors) or None}

    def _enqueue(self, entries: list[_Entry], wake: bool = False) -> _Ticket:
        state = self.breaker.state
        if self._closed:
            unsent = sum(e.span_count for e in entries)
            self.stats.spans_unsent_at_close += unsent
            for entry in entries:
                entry.resolve(BatchOutcome("closed", entry.span_count, "the Opik sender is closed"))
            if unsent:
                log.warning("Opik sender already closed: %d span(s) not sent to Opik (they are in the store)", unsent)
            return _Ticket(entries, 0, state)
        with self._lock:
            ahead = len(self._backlog)
            for entry in entries:
                self._push(entry)
                self.stats.spans_submitted += entry.span_count
            evicted = self._evict_over_bound()
        if evicted and self._spool is not None:
            evicted = self._spill(evicted, "the in-memory backlog is full", "moved to the on-disk spool")
            self._count_overflow(evicted)
        for entry in evicted:
            entry.resolve(BatchOutcome("overflow", entry.span_count, "replay backlog full; oldest batch dropped"))
        if entries:
            self._ensure_started()
            if wake:  # else the sender finds the work on its next look (idle_poll_s), without a syscall here
                self._wake()
        return _Ticket(entries, ahead, state)

    def _push(self, entry: _Entry) -> None:
        """Append to the backlog (lock held); the counters the bounds read move with it."""
        self._backlog.append(entry)
        self._backlog_spans += entry.span_count
        self._backlog_bytes += entry.weight

    def _uncount(self, entry: _Entry) -> None:
        """``entry`` has just left the backlog (lock held)."""
        self._backlog_spans -= entry.span_count
        self._backlog_bytes -= entry.weight

    def _over_bound(self) -> bool:
        return (
            self._backlog_spans > self.config.replay_backlog_max_spans
            or self._backlog_bytes > self.config.replay_backlog_max_bytes
        )

    def _evict_over_bound(self) -> list[_Entry]:
        """Drop the oldest waiting batches past the bounds (lock held); never the one in flight."""
        evicted: list[_Entry] = []
        index = 0
        while self._over_bound() and index < len(self._backlog):
            entry = self._backlog[index]
            if entry.kind != "spans" or any(entry is busy for busy in self._in_flight):
                index += 1
                continue
            del self._backlog[index]
            self._uncount(entry)
            evicted.append(entry)
        if evicted and self._spool is None:  # with a spool, _enqueue spills them to disk instead
            self._count_overflow(evicted)
        return evicted

    def _count_overflow(self, evicted: list[_Entry]) -> None:
        """Batches that left the backlog for good: counted and logged with their time range."""
        bound = f"{self.config.replay_backlog_max_spans} span(s) / {_mib(self.config.replay_backlog_max_bytes)}"
        if evicted:
            count = sum(e.span_count for e in evicted)
            self.stats.spans_overflowed += count
            window = {
                "spans": count,
                "batches": len(evicted),
                "first_start": min(e.first_start or "" for e in evicted),
                "last_start": max(e.last_start or "" for e in evicted),
                "at": iso(datetime.now(UTC)),
            }
            self.overflows.append(window)
            log.error(
                "Opik replay backlog is over its bound of %s (circuit %s): dropped the oldest %d span(s) "
                "started %s … %s from the Opik backlog (%d dropped so far). They are in the store; resend them with "
                "OpikConnector.replay_from_store once Opik is back.",
                bound,
                self.breaker.state.value,
                count,
                window["first_start"],
                window["last_start"],
                self.stats.spans_overflowed,
            )

    # -- the sender (its own thread and event loop) --------------------------------------

    def _ensure_started(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            loop = asyncio.new_event_loop()
            self._wake_event = asyncio.Event()
            self._stop_event = asyncio.Event()
            self._loop = loop
            self._thread = threading.Thread(target=self._thread_main, args=(loop,), name="opik-sender", daemon=True)
            self._thread.start()

    def _thread_main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except Exception:
            log.exception("the Opik sender stopped unexpectedly")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _wake(self) -> None:
        """Wake the sender only when it sleeps for lack of work.

        ``call_soon_threadsafe`` is a syscall: it releases the GIL, and on a busy process getting
        it back costs the flusher up to the 5 ms switch interval — measured at a quarter of the
        flusher's time when every batch woke the sender. A busy sender finds new work by itself.
        """
        loop, event = self._loop, self._wake_event
        if loop is None or event is None:
            return
        with self._lock:
            if not self._sender_idle:
                return
            self._sender_idle = False
        with contextlib.suppress(RuntimeError):  # loop closed at shutdown
            loop.call_soon_threadsafe(event.set)

    def _signal_stop(self) -> None:
        loop, event = self._loop, self._stop_event
        if loop is None or event is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)
            loop.call_soon_threadsafe(self._wake_event.set)  # type: ignore[union-attr]

    async def _main(self) -> None:
        async_api, api_error, httpx = self._client_parts
        client = _gzip_client(httpx, self.config.request_timeout_s)
        api = async_api(
            base_url=self.config.url,
            api_key=self.config.api_key,
            workspace_name=self.config.workspace,
            timeout=self.config.request_timeout_s,
            httpx_client=client,
        )
        try:
            await self._send_loop(api, api_error, httpx)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short only by close (new work must not shorten a backoff or an open circuit)."""
        stop = self._stop_event
        assert stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(seconds, 0.0))

    def _take_unit(self, start: int = 0, busy: AbstractSet[int] = frozenset()) -> list[_Entry]:
        """The batch at ``start``, joined with the batches behind it up to one request's worth (lock held).

        Joining matters when a backlog builds (an outage, a burst, a distant server): one request
        of 1,000 spans instead of ten of 100 cuts the per-request cost ten times; order is kept.
        A batch whose id is in ``busy`` (in flight) ends the unit.
        """
        if start >= len(self._backlog):
            return []
        head = self._backlog[start]
        unit = [head]
        if head.solo:
            return unit
        room = self.config.max_items_per_request - head.span_count
        for entry in itertools.islice(self._backlog, start + 1, None):
            if entry.solo or entry.span_count > room or id(entry) in busy:
                break
            unit.append(entry)
            room -= entry.span_count
        return unit

    def _take_units(self, running: list[list[_Entry]] | None = None) -> list[list[_Entry]]:
        """The next request units (lock held): several only while Opik is healthy.

        ``running`` are the units in flight; their batches are skipped. With the circuit closed
        and no failure pending, units are added up to ``max_requests_in_flight``, so the
        server's time on one overlaps our sending of the next (a distant server's round trip
        would otherwise cap the rate at one request per round trip). A retry, a half-open probe
        or a unit marked ``solo`` after a rejection goes alone, so failures are counted and
        retried exactly as one at a time.
        """
        running = running or []
        healthy = self.breaker.state is CircuitState.CLOSED and self.breaker.consecutive_failures == 0
        if running and not healthy:
            return []
        busy = {id(entry) for unit in running for entry in unit}
        backlog = self._backlog
        units: list[list[_Entry]] = []
        index = 0
        while len(running) + len(units) < self.config.max_requests_in_flight:
            while index < len(backlog) and id(backlog[index]) in busy:
                index += 1
            unit = self._take_unit(index, busy)
            if not unit:
                break
            alone = any(e.attempts or e.solo for e in unit)
            if alone and (running or units):
                break  # it waits until nothing else is in flight
            units.append(unit)
            busy.update(id(entry) for entry in unit)
            index += len(unit)
            if alone or not healthy:
                break
        return units

    async def _send_loop(self, api: Any, api_error: Any, httpx: Any) -> None:
        """Keep up to ``max_requests_in_flight`` requests going; a new one starts as one ends.

        A window rather than rounds: under load a request's round trip varies several-fold (it
        needs this process's GIL for every step), and waiting for the slowest of a round left
        the others' slots idle — measured as the Opik sender trailing the store by 10-15 % in
        ``bench_e2e``. After a failure nothing new starts until what is in flight has settled;
        then the failed batch is retried alone, with backoff, as before.
        """
        wake = self._wake_event
        assert wake is not None
        running: dict[asyncio.Task[tuple[str, str | None]], list[_Entry]] = {}
        try:
            while True:
                if self._spool is not None and not self._closing:
                    self._refill_from_spool()
                units: list[list[_Entry]] = []
                if not (self._closing and time.monotonic() >= self._close_deadline):
                    with self._lock:
                        units = self._take_units(list(running.values()))
                if not units and not running:
                    if self._closing:
                        return
                    wake.clear()
                    with self._lock:
                        empty = not self._backlog
                        self._sender_idle = empty  # checked and set under the lock: no wake-up is lost
                    if empty:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(wake.wait(), self.config.idle_poll_s)
                    continue
                if units and not running and not self.breaker.allow_request():
                    if self._closing:
                        return  # at exit, do not wait for the circuit: the spans are in the store
                    await self._pause(self.breaker.seconds_until_probe() or 0.01)
                    continue
                for unit in units:
                    for entry in unit:
                        entry.attempts += 1
                    running[asyncio.ensure_future(self._attempt(api, api_error, httpx, unit))] = unit
                self._track_in_flight(running)
                # Top up at least every idle_poll_s: batches handed over meanwhile do not wake us.
                done, _ = await asyncio.wait(
                    running, timeout=self.config.idle_poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                failed = self._settle_done(running, done)
                if failed and running:
                    # Let what is in flight finish (each settles as usual) before retrying alone.
                    done, _ = await asyncio.wait(running)
                    self._settle_done(running, done)
                self._track_in_flight(running)
                if failed and self.breaker.state is CircuitState.CLOSED:
                    backoff = self.config.retry_backoff_s * 2 ** max(0, self.breaker.consecutive_failures - 1)
                    await self._pause(min(backoff, self.config.retry_backoff_max_s))
        finally:
            for task in running:
                task.cancel()

    def _track_in_flight(self, running: Mapping[Any, list[_Entry]]) -> None:
        """What eviction must not touch: the batches of the requests in flight."""
        with self._lock:
            self._in_flight = [entry for unit in running.values() for entry in unit]

    def _settle_done(self, running: dict[Any, list[_Entry]], done: set[Any]) -> bool:
        """Settle the finished requests and forget them; True when one of them failed."""
        failed = False
        for task in done:
            result, reason = task.result()  # _attempt never raises
            failed = self._settle(running.pop(task), result, reason) or failed
        return failed

    def _settle(self, unit: list[_Entry], result: str, reason: str | None) -> bool:
        """Apply one unit's outcome; True when it failed (it stays in the backlog, in its place)."""
        if result == "failed":
            self._on_failure(unit, reason)
            return True
        self.breaker.record_success()  # a rejection is an answer too: the server is up
        if self._failure_logged:
            log.warning("Opik is reachable again at %s; sending the backlog in order", self.url)
            self._failure_logged = False
        if result == "rejected" and len(unit) > 1:
            # Which batch is at fault? Each goes alone once; only that one is recorded and dropped.
            for entry in unit:
                entry.solo = True
            return False
        with self._lock:
            for entry in unit:
                try:  # usually the head; a unit behind one that failed leaves from the middle
                    self._backlog.remove(entry)
                except ValueError:
                    continue
                self._uncount(entry)
        for entry in unit:
            if result == "sent":
                self._on_sent(entry)
            else:
                self._record_rejection(entry.span_count, reason or "rejected", entry)
                self._settle_spooled(entry)  # a rejection is final: never resent
                entry.resolve(BatchOutcome("rejected", entry.span_count, reason))
        if result == "sent":
            self.stats.requests_sent += 1
        return False

    def _unit_calls(self, api: Any, api_error: Any, unit: list[_Entry]) -> dict[str, Any]:
        """The requests of one attempt; parts the server already confirmed are not sent again."""
        options = {"max_retries": 0}
        head = unit[0]
        if head.kind != "spans":
            if "scores" in head.parts_done:
                return {}
            if head.kind == "trace_scores":
                return {"scores": api.traces.score_batch_of_traces(scores=head.scores, request_options=options)}
            return {"scores": api.spans.score_batch_of_spans(scores=head.scores, request_options=options)}
        calls: dict[str, Any] = {}
        traces: dict[str, dict[str, Any]] = {}
        for entry in unit:
            if "traces" not in entry.parts_done:
                for body in entry.traces:
                    traces[body["id"]] = body  # a later batch holds the more complete record
        if traces:
            if self.config.encode_once:
                encoded = encode_body({"traces": list(traces.values())})
                calls["traces"] = self._post_encoded(api, api_error, "v1/private/traces/batch", encoded)
            else:
                calls["traces"] = api.traces.create_traces(traces=list(traces.values()), request_options=options)
        pending = [entry for entry in unit if "spans" not in entry.parts_done]
        if pending:
            if self.config.encode_once:
                raw = b'{"spans":[' + b",".join(e.spans for e in pending) + b"]}"  # type: ignore[misc]
                calls["spans"] = self._post_encoded(api, api_error, "v1/private/spans/batch", _gzip(raw))
            else:
                items = [body for e in pending for body in e.spans]  # type: ignore[union-attr]
                calls["spans"] = api.spans.create_spans(spans=items, request_options=options)
        return calls

    async def _attempt(self, api: Any, api_error: Any, httpx: Any, unit: list[_Entry]) -> tuple[str, str | None]:
        """One try of one request unit: ``("sent" | "rejected" | "failed", reason)``.

        Traces and spans go out concurrently; a part that succeeded is not sent again when the
        other part is retried, so a retry re-sends only what the server has not confirmed.
        """
        tasks = {name: asyncio.ensure_future(coro) for name, coro in self._unit_calls(api, api_error, unit).items()}
        done: set[asyncio.Future[Any]] = set()
        if tasks:
            done, pending = await asyncio.wait(tasks.values(), timeout=self.config.request_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        failed: list[str] = []
        rejected: list[str] = []
        for name, task in tasks.items():
            if task not in done:
                failed.append(f"{name}: no answer within {self.config.request_timeout_s:g} s")
                continue
            exc = task.exception()
            if exc is None:
                for entry in unit:
                    entry.parts_done.add(name)
                continue
            kind, text = self._classify(exc, api_error, httpx)
            (rejected if kind == "rejected" else failed).append(f"{name}: {text}")
        if rejected:
            return "rejected", self._scrub("; ".join(rejected + failed))
        if failed:
            return "failed", self._scrub("; ".join(failed))
        return "sent", None

    @staticmethod
    async def _post_encoded(api: Any, api_error: Any, path: str, body: tuple[bytes, bool]) -> None:
        """POST an encoded batch through the REST client's own transport (its auth, workspace, base URL).

        The generated ``create_spans`` makes exactly this request after converting every item; a
        non-2xx answer raises the same ``ApiError`` it would.
        """
        content, gzipped = body
        headers = {"content-type": "application/json"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        transport = api._client_wrapper.httpx_client  # the client create_spans itself sends through
        response = await transport.request(
            path, method="POST", content=content, headers=headers, request_options={"max_retries": 0}
        )
        if 200 <= response.status_code < 300:
            return
        try:
            detail: Any = response.json()
        except ValueError:
            detail = response.text
        raise api_error(status_code=response.status_code, headers=dict(response.headers), body=detail)

    @staticmethod
    def _classify(exc: BaseException, api_error: Any, httpx: Any) -> tuple[str, str]:
        if isinstance(exc, api_error):
            status = getattr(exc, "status_code", None)
            body = getattr(exc, "body", None)
            text = json.dumps(body, default=str) if not isinstance(body, str) else body
            reason = f"HTTP {status}: {text[:_REASON_LIMIT]}"
            return ("rejected" if status in PERMANENT_STATUSES else "failed"), reason
        if isinstance(exc, httpx.TimeoutException):
            return "failed", f"timed out ({type(exc).__name__})"
        if isinstance(exc, (httpx.TransportError, OSError)):
            return "failed", f"{type(exc).__name__}: {exc}"[:_REASON_LIMIT]
        # Anything else (a body that cannot be encoded, a client bug) will not improve on retry.
        return "rejected", f"{type(exc).__name__}: {exc}"[:_REASON_LIMIT]

    def _scrub(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "[REDACTED]") if key else text

    def _on_sent(self, entry: _Entry) -> None:
        self._settle_spooled(entry)
        if entry.kind == "spans":
            self.stats.spans_sent += entry.span_count
            self.stats.batches_sent += 1
        else:
            self.stats.feedback_sent += len(entry.scores)
        self.stats.last_success_at = iso(datetime.now(UTC))
        entry.resolve(BatchOutcome("sent", entry.span_count))

    def _on_failure(self, unit: list[_Entry], reason: str | None) -> None:
        was = self.breaker.state
        self.breaker.record_failure(reason)
        self.stats.batch_attempts_failed += 1
        self.stats.last_error = reason
        now = self.breaker.state
        if now is CircuitState.OPEN and was is not CircuitState.OPEN:
            log.warning(
                "Opik circuit open after %d consecutive failed batch(es) (last: %s); no call for %.0f s, "
                "%d span(s) wait for replay and the store keeps every span",
                self.breaker.consecutive_failures,
                reason,
                self.config.recovery_timeout_s,
                self._backlog_spans,
            )
        elif not self._failure_logged:
            log.warning("sending a batch to Opik at %s failed (%s); retried in order", self.url, reason)
        self._failure_logged = True
        for entry in unit:
            entry.resolve(BatchOutcome("retrying", entry.span_count, reason))

    def _record_rejection(self, spans: int, reason: str, entry: _Entry | None = None) -> None:
        self.stats.batches_rejected += 1
        self.stats.spans_rejected += spans
        record = {"at": iso(datetime.now(UTC)), "spans": spans, "reason": reason}
        if entry is not None and entry.kind == "spans":
            record["obs_span_ids"] = entry.obs_ids
            record["first_start"] = entry.first_start
        self.rejections.append(record)
        log.error("Opik rejected a batch of %d span(s), not retried: %s", spans, reason)

    # -- flushing, status, lifecycle ---------------------------------------------------------

    @property
    def backlog_spans(self) -> int:
        return self._backlog_spans

    @property
    def backlog_batches(self) -> int:
        return len(self._backlog)

    async def wait_until_sent(self, timeout: float | None = None) -> bool:
        """True once everything handed over so far has been sent (or rejected / dropped).

        Batches spilled to the on-disk spool count as not sent yet: the sender brings them back.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake()
        while True:
            with self._lock:
                empty = not self._backlog
            if empty and not self._spilled_pending():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)

    def _spilled_pending(self) -> bool:
        spool = self._spool
        if spool is None or self._closed:
            return False
        try:
            return bool(spool.has_pending("opik"))
        except Exception:  # an unreadable spool is reported by the sender; don't spin on it here
            return False

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Deliver the bound agent's pending spans through the graph, then wait for Opik to confirm them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        agent = self._agent_ref() if self._agent_ref is not None else None
        if agent is not None and not await agent.flush(timeout):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return await self.wait_until_sent(remaining)

    def get_status(self) -> dict[str, Any]:
        stats = dataclasses.asdict(self.stats)
        breaker = self.breaker.get_status()
        return {
            "enabled": True,
            "url": self.url,
            "workspace": self.config.workspace,
            "project_name": self.config.project_name,
            "api_key_set": bool(self.config.api_key),
            "state": breaker["state"],
            "circuit_breaker": breaker,
            "backlog_batches": self.backlog_batches,
            "backlog_spans": self._backlog_spans,
            "backlog_bytes": self._backlog_bytes,
            "replay_backlog_max_spans": self.config.replay_backlog_max_spans,
            "replay_backlog_max_bytes": self.config.replay_backlog_max_bytes,
            "sender_running": self._thread is not None and self._thread.is_alive(),
            **stats,
            "rejections": list(self.rejections)[-10:],
            "overflows": list(self.overflows)[-10:],
        }

    def close(self, timeout: float | None = None) -> bool:
        """Send what is waiting (within ``timeout``, default ``shutdown_timeout_s``), then stop the sender.

        Nothing waits for a half-open probe here: with the circuit open, whatever is left stays
        in the store and is counted and logged.
        """
        limit = self.config.shutdown_timeout_s if timeout is None else timeout
        with self._start_lock:
            if self._closed:
                return True
            self._closing = True
            self._close_deadline = time.monotonic() + limit
            thread = self._thread
        self._signal_stop()
        if thread is not None:
            thread.join(limit + 0.5)
        finished = thread is None or not thread.is_alive()
        with self._lock:
            leftover = list(self._backlog)
            self._backlog.clear()
            self._backlog_spans = self._backlog_bytes = 0
            self._closed = True
        if leftover and self._spool is not None:
            leftover = self._spill(leftover, "the sender is closing", "kept in the on-disk spool")
        unsent = sum(e.span_count for e in leftover)
        for entry in leftover:
            entry.resolve(BatchOutcome("closed", entry.span_count, "the Opik sender closed"))
        if unsent:
            self.stats.spans_unsent_at_close += unsent
            log.error(
                "Opik sender closed with %d span(s) not sent (circuit %s); they are in the store — resend them "
                "with OpikConnector.replay_from_store",
                unsent,
                self.breaker.state.value,
            )
        return finished and not unsent

    async def aclose(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.close, timeout)

    # -- replay ---------------------------------------------------------------------------------

    async def replay_from_store(
        self,
        store: Any,
        window: str = "24h",
        *,
        trace_id: str | None = None,
        agent_name: str | None = None,
        limit: int = 100_000,
    ) -> int:
        """Resend stored spans to Opik (after an overflow or a long outage); safe to repeat.

        Paced by the backlog bound, so a replay never pushes live batches out; it stops (and
        returns how many spans it handed over) if the circuit opens meanwhile.
        """
        spans = await store.get_spans_by_time_window(window, agent_name=agent_name, trace_id=trace_id, limit=limit)
        spans = sorted(spans, key=lambda s: s.start_time)
        bound = self.config.replay_backlog_max_spans
        half_bytes = self.config.replay_backlog_max_bytes // 2
        step = max(1, min(self.config.max_items_per_request, bound // 2 or 1))
        handed = 0
        for start in range(0, len(spans), step):
            chunk = spans[start : start + step]
            while self._backlog_spans + len(chunk) > bound or self._backlog_bytes > half_bytes:
                if self.breaker.state is CircuitState.OPEN:
                    log.warning("replay to Opik paused: circuit open; %d of %d span(s) handed over", handed, len(spans))
                    return handed
                await asyncio.sleep(0.01)
            self.submit(chunk)
            handed += len(chunk)
        return handed

    # -- the convenience API (spans go through the connector's own hot path) -------------------

    def bind_agent(self, agent: Any) -> None:
        """The agent whose collector :meth:`trace_agent` and friends record into."""
        self._agent_ref = weakref.ref(agent)

    def _agent(self) -> Any:
        agent = self._agent_ref() if self._agent_ref is not None else None
        if agent is not None:
            return agent
        with self._start_lock:
            agent = self._agent_ref() if self._agent_ref is not None else None
            if agent is None:
                from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
                from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext

                context = dataclasses.replace(ConnectorContext.from_config(), opik=self)
                agent = ObservabilityConnectorAgent(context=context)
                self._owned_agent = agent
                self._agent_ref = weakref.ref(agent)
        return agent

    def _parent(self, agent: Any, trace_id: str | None, parent_span_id: str | None) -> Any:
        if trace_id is None:
            return None
        from src.agents.ml_foundation.observability_connector.sampling import trace_sampled
        from src.agents.ml_foundation.observability_connector.trace_context import (
            ObservabilityContext,
            TraceContext,
            new_span_id,
        )

        sampled = trace_sampled(trace_id, agent.settings.sampling.default_rate)
        if parent_span_id:
            return TraceContext(trace_id=trace_id, span_id=parent_span_id, sampled=sampled)
        return ObservabilityContext(trace_id=trace_id, span_id=new_span_id(), sampled=sampled)

    @contextlib.asynccontextmanager
    async def trace_agent(
        self,
        agent_name: str,
        operation: str,
        trace_id: str | None = None,
        parent_span_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AsyncIterator[Span]:
        """``async with opik.trace_agent("gap_analyzer", "execute") as span:`` — a span, nested as usual.

        With ``trace_id`` the span joins that trace (under ``parent_span_id`` when given); without
        it, under the current span or as a new trace.
        """
        agent = self._agent()
        async with agent.span(operation, agent_name, self._parent(agent, trace_id, parent_span_id), metadata) as span:
            yield span

    @contextlib.asynccontextmanager
    async def trace_llm_call(
        self,
        agent_name: str,
        model: str,
        provider: str | None = None,
        *,
        operation: str = "llm_call",
        trace_id: str | None = None,
        parent_span_id: str | None = None,
        input_data: Any = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AsyncIterator[Span]:
        """An LLM span (Opik type ``llm``); set tokens on the yielded span with ``span.set_llm(...)``."""
        async with self.trace_agent(agent_name, operation, trace_id, parent_span_id, metadata) as span:
            span.set_llm(model, input_tokens, output_tokens)
            if provider:
                span.attributes["llm.provider"] = provider
            if input_data is not None:
                span.set_input(input_data)
            yield span

    def log_metric(
        self,
        name: str,
        value: float,
        agent_name: str | None = None,
        trace_id: str | None = None,
        parent_span_id: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """A measurement on the current span (or in trace ``trace_id``); see the agent's ``log_metric``."""
        agent = self._agent()
        parent = self._parent(agent, trace_id, parent_span_id)
        if parent is None:
            agent.log_metric(name, value, agent_name, attributes)
            return
        from src.agents.ml_foundation.observability_connector.trace_context import attach

        with attach(parent):
            agent.log_metric(name, value, agent_name, attributes)

    async def log_feedback(
        self,
        trace_id: str,
        name: str,
        value: float,
        *,
        span_id: str | None = None,
        reason: str | None = None,
        category_name: str | None = None,
    ) -> None:
        """A feedback score on a trace (or on one of its spans), sent after the spans it refers to.

        Async because it first hands the bound agent's finished spans to the sink (one flush of
        its collector), so the score cannot reach Opik before the trace it scores.
        """
        agent = self._agent_ref() if self._agent_ref is not None else None
        if agent is not None:
            await agent.flush(self.config.request_timeout_s)
        target = opik_span_id(trace_id, span_id) if span_id else opik_trace_id(trace_id)
        body = feedback_score(target, name, value, self.config.project_name, reason, category_name)
        self._enqueue([_Entry("span_scores" if span_id else "trace_scores", scores=[body])])


# --------------------------------------------------------------------------- one per process

_instance: OpikConnector | None = None
_instance_lock = threading.Lock()


def get_opik_connector(settings: Any = None, tier_names: Mapping[int, str] | None = None) -> OpikConnector | None:
    """The process's connector, built on first use when Opik is configured; None when it is not."""
    global _instance
    if _instance is not None:
        return _instance
    with _instance_lock:
        if _instance is None:
            if settings is None:
                from src.agents.ml_foundation.observability_connector.config import load_settings

                settings = load_settings()
            if not opik_configured(settings):
                return None
            if tier_names is None:
                from src.agents.ml_foundation.observability_connector.config import load_registry

                tier_names = load_registry().tier_names
            _instance = OpikConnector.from_settings(settings, tier_names=tier_names)
            log.info("Opik sink: %r", _instance)
    return _instance


def set_opik_connector(connector: OpikConnector | None) -> None:
    global _instance
    with _instance_lock:
        _instance = connector


def _after_fork_in_child() -> None:
    # The connector itself (shared by every context built in the parent) resets in place.
    global _instance_lock
    _instance_lock = threading.Lock()


register_after_fork(_after_fork_in_child)


def reset_opik_connector(timeout: float = 1.0) -> None:
    """Close and forget the process's connector (tests; a process that re-reads its configuration)."""
    global _instance
    with _instance_lock:
        connector, _instance = _instance, None
    if connector is not None:
        connector.close(timeout)


# --------------------------------------------------------------------------- exit

_live: weakref.WeakSet[OpikConnector] = weakref.WeakSet()
_exit_hook_installed = False


def _register_exit(connector: OpikConnector) -> None:
    """Drain at interpreter exit, bounded by ``shutdown_timeout_s``.

    Registered when the connector is built — before any flusher of an agent using it starts —
    and ``threading``'s exit hooks run last-registered first, so the flushers hand over their
    final batches before this drains them.
    """
    from src.agents.ml_foundation.observability_connector.batch_processor import at_exit_before_thread_pools

    global _exit_hook_installed
    _live.add(connector)
    if not _exit_hook_installed:
        at_exit_before_thread_pools(_close_all_at_exit)
        _exit_hook_installed = True


def _close_all_at_exit() -> None:
    # Flushers first, whatever order the hooks were registered in: their final batches must be
    # handed to the sink before it drains (closing a flusher twice is harmless).
    flushers = sys.modules.get("src.agents.ml_foundation.observability_connector.batch_processor")
    close_flushers = getattr(flushers, "_flush_all_at_exit", None)
    if callable(close_flushers):
        try:
            close_flushers()
        except Exception:
            log.exception("closing the flushers before the Opik sender failed")
    for connector in list(_live):
        try:
            connector.close()
        except Exception:  # an exit hook must never raise
            log.exception("closing the Opik sender at exit failed")
