"""Supabase REST span store: ``ml_observability_spans`` through PostgREST with the service key.

For deployments that can reach Supabase only over HTTPS (no direct Postgres connection). The
``supabase`` package's ``AsyncClient`` builds every request; this module decides what to send,
how to read the answer, and what to do when it goes wrong.

Design notes (why it looks like this):

* **We own the HTTP client.** The supabase client is given our ``httpx.AsyncClient``, whose
  response hook turns every non-2xx answer into a typed :class:`~src.repositories.base.StoreError`
  carrying the HTTP status. postgrest-py's own ``APIError`` drops the status, and the gateway's
  401 for a bad key (``{"message": "Invalid API key"}``) has no code at all, so without the hook
  "wrong key", "RLS denied", "duplicate" and "server down" would be indistinguishable.
* **One retry layer, ours.** The client's retry is switched off (it retries only GET/HEAD on
  503/520, never POST, with its own fixed backoff that would multiply with ours). Ours retries
  every operation on 5xx, connection errors and timeouts only, with exponential backoff and full
  jitter, a few attempts; a 4xx fails the same way every time and is never retried. Retrying a
  write is safe because the upsert ignores duplicates: a batch that did commit before its answer
  was lost is counted as duplicates on the second try, never stored twice.
* **Inserted vs duplicate counts without a body.** Writes are ``POST …?on_conflict=trace_id,span_id``
  with ``Prefer: return=minimal,count=exact,resolution=ignore-duplicates,missing=default``.
  PostgREST answers ``Content-Range: */N`` where N counts the rows its ``INSERT … ON CONFLICT DO
  NOTHING`` actually returned, i.e. inserted; duplicates are the rest. That costs no extra query
  and no response body (``return=representation`` with ids would also work, at the price of
  sending the ids back). ``missing=default`` (``default_to_null=False``) stops a key missing from
  one row becoming NULL for every row of a bulk insert.
* **One bad row never costs the batch.** PostgREST runs a request in one transaction, so one row
  that Postgres rejects (an out-of-range integer, a check constraint) fails the whole request
  with 400/409. The batch is then bisected until the bad rows stand alone and are reported with
  PostgREST's message; k bad rows cost about 2·k·log2(n) extra requests, a clean batch one.
  Errors that are the same for every row (missing column/table, permissions) are raised at once
  instead of bisecting into a thousand identical failures. NUL characters, which Postgres cannot
  store in text or jsonb, are replaced with U+FFFD before sending (as the direct Postgres backend
  does), so they never cost a span.
* **Reads paginate.** Supabase truncates every response at ``max-rows`` (1,000 by default)
  without saying so; reads ask for at most ``page_size`` rows at a time, ordered by
  ``(start_time, id)`` so pages are stable, and stop at a short page.
* **Metrics and retention are RPCs** to SQL functions in ``database/ml/mlops_tables.sql``:
  percentiles must be computed next to the data (never rows pulled into Python). A REST
  ``DELETE`` returns every deleted row unless told ``return=minimal``, and a limited delete is
  only fast ordered by ``start_time`` (DESIGN.md); ``obs_delete_old_spans`` deletes one such
  batch per call in a short transaction and returns just the count.
* **One client per event loop.** httpx connections belong to the loop that opened them, and the
  repository is used from several loops at once (the flusher thread's and the caller's).
* **The service key stays secret.** It comes from ``SUPABASE_SERVICE_KEY`` (or the constructor),
  is sent only in the ``apikey``/``Authorization`` headers, and appears in no repr, description,
  log line or error message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import math
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import httpx
from postgrest.exceptions import APIError
from postgrest.types import CountMethod, ReturnMethod
from pydantic import SecretStr
from supabase import AsyncClient, AsyncClientOptions, acreate_client
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

# The same sanitising as the embedded store, so an odd attribute value (NaN, a set, a cycle)
# reads back identically from every backend.
from src.agents.ml_foundation.observability_connector.json_codec import json_text as _json_text
from src.agents.ml_foundation.observability_connector.models import (
    LatencyStats,
    ObservabilitySpan,
    QualityMetrics,
    error_rate,
)
from src.repositories.base import (
    COLUMNS,
    TABLE,
    BatchInsertResult,
    GroupBy,
    ProgressCallback,
    SpanStore,
    StoreAuthError,
    StoreConflictError,
    StoreError,
    StorePermissionError,
    StoreRequestError,
    StoreSchemaError,
    StoreUnavailableError,
    check_group_by,
    check_limit,
    hours_start,
    status_counts,
    window_start,
)

__all__ = [
    "COLUMNS",
    "RPC_DELETE_OLD",
    "RPC_LATENCY_STATS",
    "RPC_QUALITY_COUNTS",
    "RPC_STATUS_DISTRIBUTION",
    "TABLE",
    "SupabaseSpanRepository",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

ON_CONFLICT: Final = "trace_id,span_id"
#: ``id`` breaks ties so offset pagination never skips or repeats rows with equal start times.
ORDER_BY: Final[tuple[str, ...]] = ("start_time", "id")

RPC_LATENCY_STATS: Final = "obs_latency_stats"
RPC_STATUS_DISTRIBUTION: Final = "obs_status_distribution"
RPC_QUALITY_COUNTS: Final = "obs_quality_counts"
RPC_DELETE_OLD: Final = "obs_delete_old_spans"

ENV_URL: Final = "SUPABASE_URL"
ENV_SERVICE_KEY: Final = "SUPABASE_SERVICE_KEY"

#: SQLSTATE classes / PostgREST codes that describe the request or the schema, never one row:
#: undefined column/table/function, syntax, privileges, and every PostgREST-level error.
_REQUEST_LEVEL_CODES: Final = ("PGRST", "42")
_SCHEMA_CODES: Final = frozenset({"PGRST202", "PGRST204", "PGRST205", "42P01", "42703", "42883"})
_ROW_LEVEL_STATUSES: Final = frozenset({400, 409, 413, 422})
_STATEMENT_TIMEOUT: Final = "57014"
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain"})

# Strict: refuses NaN/inf and anything that is not plain JSON, so a row that would break the
# request body is caught on its own before the batch is sent.
_STRICT_ENCODER: Final = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------- rows


def _iso(value: datetime) -> str:
    """Timezone-aware ISO 8601 in UTC; naive values are UTC, as everywhere in the model."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else _iso(value)


def _finite_or_none(value: object, field: str) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"{field} must be a finite number, got {number!r}")
    return number


def _span_to_row(span: ObservabilitySpan) -> dict[str, Any]:
    """The JSON object PostgREST maps onto one table row; raises for a row that cannot be sent."""
    row: dict[str, Any] = {
        "id": span.id,
        "span_id": span.span_id,
        "trace_id": span.trace_id,
        "parent_span_id": span.parent_span_id,
        "operation_name": span.operation_name,
        "agent_name": span.agent_name,
        "agent_tier": span.agent_tier,
        "start_time": _iso(span.start_time),
        "end_time": _iso_or_none(span.end_time),
        "duration_ms": _finite_or_none(span.duration_ms, "duration_ms"),
        "status": span.status,
        "error_type": span.error_type,
        "error_message": span.error_message,
        "attributes": span.attributes if span.attributes is not None else {},
        "llm_model": span.llm_model,
        "input_tokens": span.input_tokens,
        "output_tokens": span.output_tokens,
        "total_tokens": span.total_tokens,
        "events": span.events if span.events is not None else [],
        "created_at": _iso(span.created_at),
    }
    try:
        text = _STRICT_ENCODER.encode(row)
    except (TypeError, ValueError, RecursionError):
        # Rare slow path: make attributes/events plain JSON, then insist the row encodes.
        row["attributes"] = json.loads(_json_text(span.attributes, "{}"))
        row["events"] = json.loads(_json_text(span.events, "[]"))
        text = _STRICT_ENCODER.encode(row)
    if "\\u0000" in text:
        # Postgres stores no NUL in text or jsonb; replace it (as the direct backend does) rather
        # than lose the span to a 400.
        row = _replace_nul(row)
        text = _STRICT_ENCODER.encode(row)
    text.encode("utf-8")  # a lone surrogate cannot be sent: fail this row, not the request
    return row


def _replace_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_replace_nul(k): _replace_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_nul(v) for v in value]
    return value


def _row_to_span(row: Mapping[str, Any]) -> ObservabilitySpan:
    data = dict(row)
    if data.get("attributes") is None:
        data["attributes"] = {}
    if data.get("events") is None:
        data["events"] = []
    return ObservabilitySpan.model_validate(data)


def _label(span: object) -> str:
    try:
        return str(getattr(span, "span_id", None) or "<no span_id>")
    except Exception:
        return "<unprintable span_id>"


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _int(value: object) -> int:
    return 0 if value is None else int(value)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- errors


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _proxy_status_code(response: httpx.Response) -> str | None:
    """PostgREST names its error code in ``Proxy-Status: PostgREST; error=CODE`` too."""
    header = response.headers.get("proxy-status", "")
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "error" and value:
            return value.strip('"')
    return None


def error_for_response(response: httpx.Response) -> StoreError:
    """The typed error for one failed HTTP answer, with PostgREST's own diagnosis when present."""
    status = response.status_code
    payload: dict[str, Any] = {}
    try:
        parsed = json.loads(response.content) if response.content else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        payload = parsed
    code = _text(payload.get("code")) or _proxy_status_code(response)
    message = _text(payload.get("message")) or _text(payload.get("msg")) or _text(payload.get("error"))
    if message is None:
        body = response.text.strip()
        message = (body[:200] + "…") if len(body) > 200 else (body or response.reason_phrase or "no message")
    details = _text(payload.get("details"))
    hint = _text(payload.get("hint"))
    where = f"{response.request.method} {response.request.url.path}"
    said = message + (f" ({code})" if code else "")
    said += (f"; {details}" if details else "") + (f"; hint: {hint}" if hint else "")
    facts: dict[str, Any] = {"status": status, "code": code, "details": details, "hint": hint}

    if status == 401:
        return StoreAuthError(f"{where}: service key rejected (401) — check {ENV_SERVICE_KEY}: {said}", **facts)
    if status == 403:
        return StorePermissionError(
            f"{where}: permission denied (403) — the key is not the service_role key, or grants/RLS on "
            f"{TABLE} do not allow it: {said}",
            **facts,
        )
    if status == 409:
        return StoreConflictError(f"{where}: conflict with stored data (409): {said}", **facts)
    if status >= 500:
        return StoreUnavailableError(f"{where}: Supabase is failing or unreachable ({status}): {said}", **facts)
    if status == 404 or (code in _SCHEMA_CODES):
        return StoreSchemaError(
            f"{where}: not found ({status}) — is database/ml/mlops_tables.sql applied to this project? {said}",
            **facts,
        )
    return StoreRequestError(f"{where}: request rejected ({status}): {said}", **facts)


async def _raise_for_status(response: httpx.Response) -> None:
    """httpx response hook: a non-2xx answer becomes a typed StoreError before postgrest-py sees it."""
    if response.is_success:
        return
    await response.aread()
    raise error_for_response(response)


def _row_level(exc: StoreError) -> bool:
    """Could this failure belong to one row of the batch (so splitting the batch isolates it)?"""
    if isinstance(exc, StoreSchemaError) or exc.status not in _ROW_LEVEL_STATUSES:
        return False
    return not (exc.code or "").startswith(_REQUEST_LEVEL_CODES)


def _retryable(exc: BaseException) -> bool:
    # A statement timeout (57014) would time out again at once; callers that can shrink the work do.
    return isinstance(exc, StoreError) and exc.retryable and exc.code != _STATEMENT_TIMEOUT


# --------------------------------------------------------------------------- configuration checks


def _origin(url: str) -> tuple[str, str]:
    """(``scheme://host[:port]``, host) of a Supabase URL; refuses what would leak the key."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{ENV_URL} must be an http(s) URL like https://<project>.supabase.co, got {url!r}")
    if parts.username or parts.password:
        raise ValueError(f"{ENV_URL} must not contain credentials; the service key goes in {ENV_SERVICE_KEY}")
    host = parts.hostname
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError(
            f"refusing to send the service key over plain http to {host}; use https (http is accepted for "
            "a local Supabase on the loopback interface only)"
        )
    shown_host = f"[{host}]" if ":" in host else host
    origin = f"{parts.scheme}://{shown_host}" + (f":{parts.port}" if parts.port else "")
    return origin, host


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _key_role(key: str) -> str | None:
    """The role a key grants, where the key says so: a legacy JWT's ``role`` claim or the new prefixes."""
    if key.startswith("sb_publishable_"):
        return "anon"
    if key.startswith("sb_secret_"):
        return "service_role"
    parts = key.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None


# --------------------------------------------------------------------------- repository


@dataclass(slots=True)
class _LoopClient:
    supabase: AsyncClient
    http: httpx.AsyncClient


class SupabaseSpanRepository(SpanStore):
    """``ml_observability_spans`` in a Supabase project, over its REST API (PostgREST).

    Safe to share between event loops and threads: each loop gets its own client on first use.
    """

    backend = "supabase"

    def __init__(
        self,
        url: str,
        service_key: str,
        *,
        schema: str = "public",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_attempts: int = 4,
        retry_base_s: float = 0.25,
        retry_max_s: float = 8.0,
        max_rows_per_request: int = 500,
        page_size: int = 1000,
        max_connections: int = 10,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport`` replaces the network (tests, the PostgREST emulator); every loop's client shares it.

        ``page_size`` must not exceed the project's ``max-rows`` setting (1,000 on Supabase unless
        changed), or a truncated page would look like the last one. ``max_rows_per_request`` keeps
        request bodies well under gateway size limits for spans with large attributes.
        """
        self._origin, self._host = _origin(url)
        key = (service_key or "").strip()
        if not key:
            raise ValueError(f"a Supabase service key is required ({ENV_SERVICE_KEY})")
        role = _key_role(key)
        if role is not None and role != "service_role":
            raise ValueError(
                f"{ENV_SERVICE_KEY} holds a key for the {role!r} role; the span table is readable and writable "
                "by service_role only (Row Level Security) — use the project's service_role / secret key"
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if max_rows_per_request < 1 or page_size < 1:
            raise ValueError("max_rows_per_request and page_size must be at least 1")
        self._url = url.strip()
        # SecretStr: even vars(), a debugger or a rich traceback of this object shows '**********'.
        self._key = SecretStr(key)
        self._schema = schema
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._max_attempts = max_attempts
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._max_rows = max_rows_per_request
        self._page_size = page_size
        self._transport = transport
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = weakref.WeakKeyDictionary()
        self._warned_no_count = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> SupabaseSpanRepository:
        """Built from ``SUPABASE_URL`` and ``SUPABASE_SERVICE_KEY``: the key never lives in a config file."""
        env = os.environ if environ is None else environ
        missing = [name for name in (ENV_URL, ENV_SERVICE_KEY) if not (env.get(name) or "").strip()]
        if missing:
            raise ValueError(
                f"the supabase store needs {' and '.join(missing)} in the environment "
                f"({ENV_URL}=https://<project>.supabase.co, {ENV_SERVICE_KEY}=<service_role key>)"
            )
        return cls(env[ENV_URL], env[ENV_SERVICE_KEY], **options)

    def describe(self) -> str:
        return f"supabase:{self._origin}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._origin!r})"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Check now that the project answers, the key is accepted and the table exists."""
        await self._call("open", lambda c: c.table(TABLE).select("id").limit(0).execute())

    async def close(self) -> None:
        """Close every loop's HTTP connections (idempotent); a later call reconnects lazily."""
        with self._lock:
            clients = list(self._clients.items())
            self._clients.clear()
        current = asyncio.get_running_loop()
        for loop, client in clients:
            if loop is current:
                await client.http.aclose()
            elif loop.is_running() and not loop.is_closed():
                future = asyncio.run_coroutine_threadsafe(client.http.aclose(), loop)
                try:
                    await asyncio.wait_for(asyncio.wrap_future(future), timeout=5.0)
                except Exception as exc:  # that loop is busy or dying: its sockets go with it
                    log.debug("closing the supabase client of another event loop failed: %s", exc)
            # A stopped or closed loop's connections cannot be used again and are dropped with it.

    async def _client(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._clients.get(loop)
        if found is not None:
            return found.supabase
        http = httpx.AsyncClient(
            timeout=self._timeout,
            limits=self._limits,
            transport=self._transport,
            follow_redirects=False,
            event_hooks={"response": [_raise_for_status]},
        )
        try:
            client = await acreate_client(
                self._url,
                self._key.get_secret_value(),
                AsyncClientOptions(
                    schema=self._schema,
                    httpx_client=http,
                    postgrest_client_retry=False,
                    auto_refresh_token=False,
                    persist_session=False,
                ),
            )
        except BaseException:
            await http.aclose()
            raise
        with self._lock:
            entry = self._clients.setdefault(loop, _LoopClient(client, http))
        if entry.http is not http:  # another task of this loop won the race
            await http.aclose()
        return entry.supabase

    # ------------------------------------------------------------------ the retry layer

    async def _call(self, op: str, request: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """Run one REST call, retrying only what can succeed later (5xx, connection, timeout)."""
        client = await self._client()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=wait_random_exponential(multiplier=self._retry_base_s, max=self._retry_max_s),
            retry=retry_if_exception(_retryable),
            before_sleep=self._log_retry(op),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(op, request, client)
        except StoreUnavailableError as exc:
            attempts = int(retrying.statistics.get("attempt_number", 1))
            if attempts > 1 and "gave up after" not in exc.message:
                exc.message = f"{exc.message} (gave up after {attempts} attempts)"
                exc.args = (exc.message,)
            raise
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _once(self, op: str, request: Callable[[AsyncClient], Awaitable[T]], client: AsyncClient) -> T:
        try:
            return await request(client)
        except StoreError:
            raise
        except httpx.TimeoutException as exc:
            raise StoreUnavailableError(f"{op}: {self.describe()} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise StoreUnavailableError(f"{op}: cannot reach {self.describe()}: {type(exc).__name__}: {exc}") from exc
        except APIError as exc:  # only when the hook did not classify the answer (never expected)
            raise StoreRequestError(f"{op}: {exc.message or exc}", code=exc.code) from exc

    def _log_retry(self, op: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "supabase %s failed (attempt %d of %d), retrying in %.2fs: %s",
                op,
                state.attempt_number,
                self._max_attempts,
                delay,
                exc,
            )

        return before_sleep

    # ------------------------------------------------------------------ writes

    async def insert_span(self, span: ObservabilitySpan) -> bool:
        """A bad row raises ValueError with the store's reason; a duplicate returns False."""
        result = await self.insert_spans_batch([span])
        if result.errors:
            span_id, reason = result.errors[0]
            raise ValueError(f"span {span_id!r} was not stored: {reason}")
        return result.inserted == 1

    async def insert_spans_batch(self, spans: Sequence[ObservabilitySpan]) -> BatchInsertResult:
        """Idempotent upsert in requests of ``max_rows_per_request``; bad rows are isolated and reported.

        Failures that are not about a row (key rejected, store down after retries) are raised so
        the caller can spool the batch; re-sending it later stores nothing twice.
        """
        result = BatchInsertResult()
        rows: list[dict[str, Any]] = []
        labels: list[str] = []
        for span in spans:
            try:
                rows.append(_span_to_row(span))
            except Exception as exc:
                result.failed += 1
                result.errors.append((_label(span), f"not sendable: {type(exc).__name__}: {exc}"))
            else:
                labels.append(_label(span))
        for start in range(0, len(rows), self._max_rows):
            end = start + self._max_rows
            result += await self._write(rows[start:end], labels[start:end])
        return result

    async def _write(self, rows: list[dict[str, Any]], labels: list[str]) -> BatchInsertResult:
        try:
            inserted = await self._upsert(rows)
        except StoreError as exc:
            if not _row_level(exc):
                raise
            if len(rows) == 1:
                return BatchInsertResult(failed=1, errors=[(labels[0], exc.message)])
            mid = len(rows) // 2
            result = await self._write(rows[:mid], labels[:mid])
            result += await self._write(rows[mid:], labels[mid:])
            return result
        return BatchInsertResult(inserted=inserted, duplicates=len(rows) - inserted)

    async def _upsert(self, rows: list[dict[str, Any]]) -> int:
        response = await self._call(
            "insert",
            lambda c: (
                c.table(TABLE)
                .upsert(
                    rows,
                    on_conflict=ON_CONFLICT,
                    ignore_duplicates=True,
                    returning=ReturnMethod.minimal,
                    default_to_null=False,
                    count=CountMethod.exact,
                )
                .execute()
            ),
        )
        if response.count is None:
            # Something between us and PostgREST dropped Content-Range: the rows are stored (or were
            # already), but which were new is unknown; count them as inserted rather than fail.
            if not self._warned_no_count:
                self._warned_no_count = True
                log.warning("supabase insert answered without a row count; duplicates will be counted as inserted")
            return len(rows)
        return int(response.count)

    async def delete_old_spans(
        self, days: int, batch_size: int = 10_000, progress: ProgressCallback | None = None
    ) -> int:
        """One RPC per batch, so no request holds locks for long and progress can be shown.

        A batch that hits the role's statement timeout (Supabase limits API roles to seconds) is
        halved and tried again rather than failing the cleanup. A batch whose answer was lost is
        retried; the rows it had already deleted are then missing from the returned total, never
        deleted twice or left behind.
        """
        if days < 0:
            raise ValueError(f"days must be zero or positive, got {days}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        cutoff = _iso(datetime.now(UTC) - timedelta(days=days))
        total = 0
        while True:
            params = {"p_cutoff": cutoff, "p_batch": batch_size}

            def delete_batch(c: AsyncClient, params: dict[str, Any] = params) -> Awaitable[Any]:
                return c.rpc(RPC_DELETE_OLD, params).execute()

            try:
                response = await self._call("delete_old_spans", delete_batch)
            except StoreUnavailableError as exc:
                if exc.code != _STATEMENT_TIMEOUT or batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                log.warning("retention batch timed out on the server; continuing with batches of %d", batch_size)
                continue
            deleted = _scalar_int(response.data)
            if deleted == 0:
                break
            total += deleted
            if progress is not None:
                progress(total)
            if deleted < batch_size:
                break
        return total

    # ------------------------------------------------------------------ reads

    async def _select(
        self, filters: Sequence[tuple[str, str, str]], limit: int | None, *, descending: bool = False
    ) -> list[ObservabilitySpan]:
        """Pages of at most ``page_size`` rows until ``limit`` rows or a short page (newest first if ``descending``)."""
        spans: list[ObservabilitySpan] = []
        while limit is None or len(spans) < limit:
            page = self._page_size if limit is None else min(self._page_size, limit - len(spans))
            offset = len(spans)

            def request(c: AsyncClient, page: int = page, offset: int = offset) -> Awaitable[Any]:
                # Named columns, not ``*``: a column added to the table later cannot break
                # ObservabilitySpan validation (it forbids extra fields).
                query = c.table(TABLE).select(*COLUMNS)
                for column, op, value in filters:
                    query = query.filter(column, op, value)
                for column in ORDER_BY:
                    query = query.order(column, desc=descending)
                query = query.limit(page)
                if offset:
                    query = query.offset(offset)
                return query.execute()

            response = await self._call("select", request)
            rows = response.data or []
            spans.extend(_row_to_span(row) for row in rows)
            if len(rows) < page:
                break
        return spans

    async def get_spans_by_time_window(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        limit: int = 1000,
    ) -> list[ObservabilitySpan]:
        if limit < 0:
            raise ValueError(f"limit must be zero or positive, got {limit}")
        filters = [("start_time", "gte", _iso(window_start(window)))]
        if agent_name is not None:
            filters.append(("agent_name", "eq", agent_name))
        if trace_id is not None:
            filters.append(("trace_id", "eq", trace_id))
        if limit == 0:
            return []
        return await self._select(filters, limit)

    async def get_spans_by_trace_id(self, trace_id: str) -> list[ObservabilitySpan]:
        return await self._select([("trace_id", "eq", trace_id)], None)

    async def get_spans_by_agent(self, agent_name: str, hours: float = 24, limit: int = 500) -> list[ObservabilitySpan]:
        filters = [("agent_name", "eq", agent_name), ("start_time", "gte", _iso(hours_start(hours)))]
        check_limit(limit)
        if limit == 0:
            return []
        return await self._select(filters, limit, descending=True)

    async def count_spans(self) -> int:
        response = await self._call(
            "count", lambda c: c.table(TABLE).select("id", count=CountMethod.exact, head=True).execute()
        )
        if response.count is None:
            raise StoreRequestError(f"count: {self.describe()} answered without a row count (Content-Range)")
        return int(response.count)

    # ------------------------------------------------------------------ metrics (SQL functions)

    def _rpc_filters(self, window: str, agent_name: str | None, trace_id: str | None) -> dict[str, Any]:
        return {"p_since": _iso(window_start(window)), "p_agent": agent_name, "p_trace": trace_id}

    async def _rpc_rows(self, fn: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = await self._call(fn, lambda c: c.rpc(fn, params).execute())
        data = response.data
        if data is None:
            return []
        if isinstance(data, dict):
            return [data]
        if isinstance(data, list) and all(isinstance(row, dict) for row in data):
            return data
        raise StoreRequestError(f"{fn}: expected rows from the SQL function, got {type(data).__name__}")

    async def get_latency_stats(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        group_by: GroupBy = "agent",
    ) -> list[LatencyStats]:
        """``error_rate`` is derived from the counts, like every backend (the RPC's own column is not read)."""
        check_group_by(group_by)
        params = {**self._rpc_filters(window, agent_name, trace_id), "p_group": group_by}
        rows = await self._rpc_rows(RPC_LATENCY_STATS, params)
        stats = []
        for row in rows:
            count, errors = _int(row.get("count")), _int(row.get("error_count"))
            stats.append(
                LatencyStats(
                    key=str(row["key"]),
                    count=count,
                    avg_ms=_float(row.get("avg_ms")),
                    p50_ms=_float(row.get("p50_ms")),
                    p95_ms=_float(row.get("p95_ms")),
                    p99_ms=_float(row.get("p99_ms")),
                    error_count=errors,
                    error_rate=error_rate(errors, count),
                    input_tokens=_int(row.get("input_tokens")),
                    output_tokens=_int(row.get("output_tokens")),
                    total_tokens=_int(row.get("total_tokens")),
                )
            )
        return stats

    async def get_status_distribution(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> dict[str, int]:
        """Always every stored status, zeros included, like every other backend."""
        rows = await self._rpc_rows(RPC_STATUS_DISTRIBUTION, self._rpc_filters(window, agent_name, trace_id))
        return status_counts((row["status"], _int(row.get("n"))) for row in rows)

    async def get_quality_metrics(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> QualityMetrics:
        """Counts and percentiles come from SQL; the rates and the score are derived as in every backend."""
        rows = await self._rpc_rows(RPC_QUALITY_COUNTS, self._rpc_filters(window, agent_name, trace_id))
        row = rows[0] if rows else {}
        return QualityMetrics.from_counts(
            window,
            total=_int(row.get("total")),
            ok=_int(row.get("ok_count")),
            error=_int(row.get("error_count")),
            timeout=_int(row.get("timeout_count")),
            started=_int(row.get("started_count")),
            fallback=_int(row.get("fallback_count")),
            p50=_float(row.get("p50_ms")),
            p95=_float(row.get("p95_ms")),
            p99=_float(row.get("p99_ms")),
            avg=_float(row.get("avg_ms")),
        )


def _scalar_int(data: object) -> int:
    """A scalar function's result: PostgREST sends the bare value (``5``); tolerate a row too."""
    if isinstance(data, bool):
        raise StoreRequestError(f"{RPC_DELETE_OLD}: expected a row count, got {data!r}")
    if isinstance(data, int | float | str):
        return int(data)
    if isinstance(data, list) and len(data) == 1:
        return _scalar_int(data[0])
    if isinstance(data, dict) and len(data) == 1:
        return _scalar_int(next(iter(data.values())))
    raise StoreRequestError(f"{RPC_DELETE_OLD}: expected a row count, got {data!r}")
