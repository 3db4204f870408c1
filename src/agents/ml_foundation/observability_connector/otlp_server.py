"""``obs-connector serve``: an OTLP/HTTP collector that feeds the same pipeline as in-process spans.

Any OpenTelemetry-instrumented service (any language), or many worker processes, export to
``POST /v1/traces`` here, in protobuf or JSON. Each request is decoded
(:mod:`src.mlops.otlp_decode`), validated, redacted and written through ``emit_spans`` — the
store, Opik and OTLP export, each behind its delivery — and answered only once the store has the
rows (committed, or spooled on disk for replay): a client that got 200 can forget its spans.

Why aiohttp: one small, long-maintained package that already serves asyncio code, with a
request-size bound (413), transparent gzip, and a runner whose clean-up stops listening and then
waits for the requests in flight; the pipeline is async, so it runs on the server's own loop
with no thread hop and no ASGI layer between.

Answers: 200 with OTLP's ``partial_success`` (``rejected_spans`` and the first reasons) for the
spans refused one by one; 400 for a body that is not a request (with the reason); 401 without
the bearer token when one is required; 413 over the size bound; 415 for another content type;
503 with ``Retry-After`` when even the spool could not take the batch (the client retries).
SIGTERM / SIGINT: stop accepting, finish the requests in flight, let the sinks deliver or spool
what they hold, close, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from aiohttp import web
from langgraph.runtime import Runtime

from src.mlops.otlp_decode import OtlpPayloadError, decode_request, encode_response, to_events

from .json_codec import json_bytes
from .nodes.span_emitter import emit_spans
from .redaction import redact_text
from .runtime import ConnectorContext

__all__ = ["DEFAULT_MAX_BODY_BYTES", "CollectorStats", "OtlpCollector", "serve"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_REASONS_SHOWN = 5
_RETRY_AFTER_S = "5"


@dataclass
class CollectorStats:
    requests: int = 0
    requests_refused: int = 0  # 4xx / 503 answers
    spans_received: int = 0
    spans_logged: int = 0  # stored, or spooled on disk for the store's replay
    spans_rejected: int = 0


class OtlpCollector:
    """The collector's request handling over one :class:`ConnectorContext` (tests use it directly)."""

    def __init__(
        self, context: ConnectorContext, *, token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ) -> None:
        self.context = context
        self.stats = CollectorStats()
        self._expected = f"Bearer {token}".encode() if token else None
        self.max_body_bytes = max_body_bytes
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/v1/traces", self.handle)
        app.router.add_get("/healthz", self.health)
        return app

    def _authorized(self, request: web.Request) -> bool:
        if self._expected is None:
            return True
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, self._expected)

    async def health(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _refusal(401, "a bearer token is required", "", {"WWW-Authenticate": "Bearer"})
        return web.Response(body=json_bytes({"status": "ok", **asdict(self.stats)}), content_type="application/json")

    async def handle(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        self._in_flight += 1
        self._idle.clear()
        try:
            response = await self._handle(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        if response.status >= 400:
            self.stats.requests_refused += 1
        return response

    async def wait_idle(self) -> None:
        """Until no request is being handled (shutdown waits for this before closing the sinks)."""
        await self._idle.wait()

    async def _handle(self, request: web.Request) -> web.Response:
        content_type = request.headers.get("Content-Type", "")
        if not self._authorized(request):
            return _refusal(401, "a bearer token is required", content_type, {"WWW-Authenticate": "Bearer"})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refusal(413, f"the request is larger than {self.max_body_bytes} bytes", content_type)
        try:
            decoded, refused = decode_request(body, content_type)
        except OtlpPayloadError as exc:
            status = 415 if "is not accepted" in str(exc) else 400
            return _refusal(status, str(exc), content_type)
        events, unreadable = to_events(decoded)
        refused.extend(unreadable)
        self.stats.spans_received += len(events) + len(refused)
        reasons = [f"span {span_id}: {reason}" for span_id, reason in refused[:_REASONS_SHOWN]]
        rejected = len(refused)
        if events:
            state = await emit_spans(
                {"events_to_log": events, "opik_wait_s": 0.0, "skip_metrics": True}, Runtime(context=self.context)
            )
            logged = int(state.get("events_logged") or 0)
            if not logged and state.get("error"):
                # Not even the spool took the batch: the client keeps it and retries.
                reason = redact_text(str(state.get("error")))[:500]
                log.error("collector: %d span(s) could not be stored or spooled: %s", len(events), reason)
                return _refusal(503, f"the spans could not be stored now: {reason}", content_type,
                                {"Retry-After": _RETRY_AFTER_S})  # fmt: skip
            self.stats.spans_logged += logged
            rejected += len(events) - logged
            reasons.extend(str(e) for e in (state.get("emission_errors") or [])[:_REASONS_SHOWN])
        self.stats.spans_rejected += rejected
        message = "; ".join(reasons[:_REASONS_SHOWN])[:2000] if rejected else ""
        if rejected:
            log.warning("collector: %d of %d span(s) rejected; %s", rejected, len(events) + len(refused), message)
        payload, kind = encode_response(rejected, message, content_type)
        return web.Response(body=payload, content_type=kind)


def _refusal(status: int, reason: str, content_type: str, headers: dict[str, str] | None = None) -> web.Response:
    """A 4xx/5xx answer with the reason: ``google.rpc.Status`` in JSON for JSON clients, plain text otherwise
    (OTLP clients log the body of a refused request as the reason)."""
    if content_type.split(";", 1)[0].strip().lower() == "application/json":
        return web.Response(status=status, body=json_bytes({"code": status, "message": reason}),
                            content_type="application/json", headers=headers)  # fmt: skip
    return web.Response(status=status, text=reason, headers=headers)


def _no_export_to(context: ConnectorContext, port: int) -> None:
    """Leave out an OTLP export aimed at this collector's own port on this machine (an
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` meant for the services): every span would come back, for ever."""
    delivery = context.otlp_delivery
    if delivery is None or port == 0:
        return
    target = urlsplit(delivery.sink.config.endpoint)
    if target.hostname in ("127.0.0.1", "localhost", "0.0.0.0", "::1") and target.port == port:
        log.error("OTLP export points at this collector (%s): left out, or every span would loop", target.netloc)
        context.otlp_delivery = None


async def serve(
    context: ConnectorContext,
    host: str = "127.0.0.1",
    port: int = 4318,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> CollectorStats:
    """Serve until SIGTERM / SIGINT (or ``stop`` is set); then shut down without losing a span.

    Order: stop listening, let the requests in flight finish (each answers after the store has
    its rows), give every sink half the shutdown budget to deliver or spool what it holds, close
    the store. Returns the counters.
    """
    collector = OtlpCollector(context, token=token, max_body_bytes=max_body_bytes)
    _no_export_to(context, port)
    budget = context.settings.batching.shutdown_timeout_s
    runner = web.AppRunner(collector.app(), access_log=None, shutdown_timeout=max(budget, 1.0))
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    bound = runner.addresses  # the real port when 0 asked for any free one
    address = f"http://{host}:{bound[0][1] if bound else port}"
    log.info("collector listening on %s/v1/traces", address)
    if on_ready is not None:
        on_ready(address)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info("collector stopping: finishing the requests in flight")
        await site.stop()  # no new connections
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(budget, 1.0)):
                await collector.wait_idle()
        await runner.cleanup()
        for delivery in context.deliveries:
            await delivery.aclose(budget / 2)
        with contextlib.suppress(Exception):
            await context.store.close()
        await context.cache.aclose()
    return collector.stats
