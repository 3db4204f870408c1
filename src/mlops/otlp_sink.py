"""OTLP/HTTP as a sink of the delivery layer: validated span rows → ``POST .../v1/traces`` (protobuf).

When a batch is sent, retried, spooled or replayed is the delivery layer's business
(``SinkDelivery``); this module turns a batch into requests and sorts the answers:

- 2xx: delivered. A ``partial_success`` the server reports (spans it dropped, OTLP does not say
  which) is counted and logged with its message; it is not retried, as the protocol requires.
- 408, 429, 5xx, a timeout or a refused connection: :class:`OtlpUnavailableError`, transient,
  with the server's ``Retry-After`` when it sent one (the delivery layer waits that long).
- 413: the request is split in halves, down to one span, which is then refused.
- any other 4xx: the request's spans are refused for good with the server's reason.

Span ids are deterministic (``otlp_encode``), so a resent span is the same span.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from src.agents.ml_foundation.observability_connector.sink import (
    RequestSlots,
    SinkResult,
    SinkUnavailableError,
    combine_failures,
)

from .opik_wire import retry_after
from .otlp_encode import encode_spans
from .otlp_settings import OtlpConfig, otlp_configured

__all__ = ["OtlpRejectedError", "OtlpSink", "OtlpUnavailableError"]

log = logging.getLogger(__name__)

_TRANSIENT_4XX = frozenset({408, 429})
_REASON_LIMIT = 500


class OtlpRejectedError(Exception):
    """The server answered and refused the request's data for good (never retried)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class OtlpUnavailableError(SinkUnavailableError):
    """The server could not take the request now; ``retry_after_s`` is its own hint, if it gave one."""


@dataclass
class OtlpSinkStats:
    requests_sent: int = 0
    requests_rejected: int = 0
    requests_split: int = 0
    spans_partially_rejected: int = 0  # dropped by the server in a 2xx partial_success


class OtlpSink:
    """Sends validated span rows to one OTLP/HTTP traces endpoint."""

    name = "otlp"

    def __init__(self, config: OtlpConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.stats = OtlpSinkStats()
        #: The latest refusals with the server's reason (bounded), for status output.
        self.rejections: deque[dict[str, Any]] = deque(maxlen=20)
        self._transport = transport
        self._headers = {
            **dict(config.headers),
            "content-type": "application/x-protobuf",
            "user-agent": "obs-connector",
        }
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._slots = RequestSlots(config.max_requests_in_flight)

    @classmethod
    def from_settings(cls, settings: Any = None, environ: Mapping[str, str] | None = None) -> OtlpSink | None:
        """The sink for the configured endpoint; None when export is off (see ``otlp.enabled``)."""
        if not otlp_configured(settings, environ):
            return None
        return cls(OtlpConfig.from_settings(settings, environ))

    def __repr__(self) -> str:
        return f"OtlpSink(endpoint={self.config.display_endpoint!r})"

    def get_status(self) -> dict[str, Any]:
        return {"enabled": True, "endpoint": self.config.display_endpoint, **self.stats.__dict__}

    # -- the Sink interface -----------------------------------------------------------------

    async def send(self, spans: Sequence[Any]) -> SinkResult:
        rejected: list[tuple[str, str]] = []
        size = self.config.max_spans_per_request
        slots = self._slots.here()  # shared by every batch and replay: the bound is the sink's
        chunks = [list(spans[i : i + size]) for i in range(0, len(spans), size)]
        outcomes = await asyncio.gather(*(self._request(slots, chunk) for chunk in chunks), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:  # the whole batch is retried; ids are deterministic, so a resent span is the same span
            raise combine_failures(failures)
        for outcome in outcomes:
            rejected.extend(outcome)  # type: ignore[arg-type]
        return SinkResult(delivered=len(spans) - len(rejected), rejected=rejected)

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def _after_fork_in_child(self) -> None:
        """In a forked child the parent's connections are not ours (never closed from here)."""
        self._clients = weakref.WeakKeyDictionary()
        self._slots.forget()

    # -- requests ---------------------------------------------------------------------------

    async def _request(self, slots: asyncio.Semaphore, rows: list[Any]) -> list[tuple[str, str]]:
        """One request; returns the rows refused for good with the reason (413: split and resent)."""
        body, ids, refused = encode_spans(rows, self.config.service_name)
        if not ids:
            return refused
        async with slots:
            try:
                await self.post(body)
            except OtlpRejectedError as exc:
                reason, status = exc.reason, exc.status
            else:
                self.stats.requests_sent += 1
                return refused
        carried = set(ids)
        kept = [row for row in rows if str(row.span_id) in carried]
        if status == 413 and len(kept) > 1:
            self.stats.requests_split += 1
            log.info("the OTLP endpoint refused %d spans as too large (413); sending them in two halves", len(kept))
            mid = len(kept) // 2
            first = await self._request(slots, kept[:mid])
            return refused + first + await self._request(slots, kept[mid:])
        self.stats.requests_rejected += 1
        self.rejections.append({"spans": len(ids), "reason": reason, "ids": ids[:20]})
        log.error("the OTLP endpoint rejected %d span(s), not retried: %s", len(ids), reason)
        return refused + [(span_id, reason) for span_id in ids]

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            limits = httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=30.0)
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.timeout_s), limits=limits, transport=self._transport
            )
            self._clients[loop] = client
        return client

    async def post(self, body: bytes) -> None:
        """POST one serialized ``ExportTraceServiceRequest``; raises one of the two errors above."""
        headers = self._headers
        if self.config.compression == "gzip":
            body = gzip.compress(body, 1)  # level 1: this CPU is shared with the agents through the GIL
            headers = {**headers, "content-encoding": "gzip"}
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await self._client().post(self.config.endpoint, content=body, headers=headers)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise OtlpUnavailableError(f"no answer within {self.config.timeout_s:g} s ({type(exc).__name__})") from exc
        except (httpx.TransportError, OSError) as exc:
            raise OtlpUnavailableError(f"{type(exc).__name__}: {exc}"[:_REASON_LIMIT]) from exc
        status = response.status_code
        if 200 <= status < 300:
            self._partial_success(response)
            return
        reason = f"HTTP {status}: {_reason(response)}"
        if status in _TRANSIENT_4XX or status >= 500:
            raise OtlpUnavailableError(reason, retry_after(response.headers))
        raise OtlpRejectedError(reason, status)

    def _partial_success(self, response: httpx.Response) -> None:
        if not response.content or "protobuf" not in response.headers.get("content-type", ""):
            return
        answer = ExportTraceServiceResponse()
        try:
            answer.ParseFromString(response.content)
        except Exception:  # the spans were accepted; an unreadable answer changes nothing
            return
        dropped = answer.partial_success.rejected_spans
        if dropped or answer.partial_success.error_message:
            self.stats.spans_partially_rejected += dropped
            log.warning(
                "the OTLP endpoint accepted a request but dropped %d span(s): %s",
                dropped,
                answer.partial_success.error_message[:_REASON_LIMIT] or "(no reason given)",
            )


def _reason(response: httpx.Response) -> str:
    """The server's words: a ``google.rpc.Status`` message when it sent protobuf, else its text."""
    content = response.content
    if "protobuf" in response.headers.get("content-type", ""):
        try:
            from google.rpc.status_pb2 import Status  # googleapis-common-protos, with the OTLP exporters

            status = Status()
            status.ParseFromString(content)
            return status.message[:_REASON_LIMIT] or "(no message)"
        except Exception:
            return f"({len(content)} bytes of protobuf)"
    return content[:_REASON_LIMIT].decode("utf-8", "replace") or response.reason_phrase
