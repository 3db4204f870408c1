"""Opik's wire format: its REST client, gzip JSON bodies, the batch requests and their errors.

The ``opik`` package's REST client (``AsyncOpikApi``) is used for its auth, workspace header and
base URL; its SDK background queue is not (it drops data silently while the server is down).
Span batches are encoded once here and posted through the client's own transport: the generated
``create_spans`` converts every item against its type annotations, the SDK's own ceiling. Same
endpoints, same bodies, same ``ApiError``; ``OpikConfig(encode_once=False)`` uses the generated
methods (the tests run both).

Errors are sorted into two kinds the delivery layer understands: :class:`OpikRejectedError` (the data
is at fault: 400, 409, 413, 415, 422 — retrying cannot help) and :class:`OpikUnavailableError` (the
server or the network: timeouts, refused connections, 5xx, 429 — worth a retry, after
``retry_after_s`` when the server said so).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import time
import weakref
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from src.agents.ml_foundation.observability_connector.json_codec import json_bytes
from src.agents.ml_foundation.observability_connector.sink import SinkUnavailableError

from .opik_payloads import iso
from .opik_settings import OpikConfig

__all__ = [
    "PERMANENT_STATUSES",
    "OpikRejectedError",
    "OpikUnavailableError",
    "OpikWire",
    "encode_body",
    "load_rest_client",
]

#: The data, not the server, is at fault: retrying cannot help, and holding the batch would block the rest.
PERMANENT_STATUSES = frozenset({400, 409, 413, 415, 422})
_GZIP_MIN_BYTES = 1024
_REASON_LIMIT = 500
_RETRY_AFTER_MAX_S = 300.0


class OpikRejectedError(Exception):
    """Opik answered and refused the request's data for good (never retried)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class OpikUnavailableError(SinkUnavailableError):
    """Opik could not take the request now; ``retry_after_s`` is the server's own hint, if it gave one."""


def load_rest_client() -> tuple[Any, Any, Any]:
    """Import the ``opik`` REST client with its phone-home features off (they would reach the internet)."""
    os.environ.setdefault("OPIK_SENTRY_ENABLE", "false")
    os.environ.setdefault("OPIK_ANALYTICS_ENABLE", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import httpx
    from opik.rest_api.client import AsyncOpikApi
    from opik.rest_api.core.api_error import ApiError

    return AsyncOpikApi, ApiError, httpx


# --------------------------------------------------------------------------- encoding


def gzipped(raw: bytes) -> tuple[bytes, bool]:
    """Gzipped past 1 KB (level 1: this CPU is shared with the agents through the GIL)."""
    if len(raw) >= _GZIP_MIN_BYTES:
        return gzip.compress(raw, 1), True
    return raw, False


def encode_body(payload: dict[str, Any]) -> tuple[bytes, bool]:
    return gzipped(json_bytes(payload))


def _gzip_client_class(httpx: Any) -> Any:
    class GzipJsonClient(httpx.AsyncClient):  # type: ignore[misc, name-defined]
        """Gzips JSON bodies, as Opik's own client does."""

        def build_request(self, method: str, url: Any, **kwargs: Any) -> Any:
            payload = kwargs.get("json")
            if payload is not None and method.upper() in ("POST", "PUT", "PATCH"):
                raw, zipped = encode_body(payload)
                headers = {k: v for k, v in dict(kwargs.get("headers") or {}).items() if k.lower() != "content-type"}
                headers["Content-Type"] = "application/json"
                if zipped:
                    headers["Content-Encoding"] = "gzip"
                kwargs.update(json=None, content=raw, headers=headers)
            return super().build_request(method, url, **kwargs)

    return GzipJsonClient


# --------------------------------------------------------------------------- requests


class OpikWire:
    """The REST client for one Opik server, one HTTP connection pool per event loop.

    An httpx pool belongs to the loop it was opened on; the graph runs on the agents' flusher
    loop and on callers' loops (an orchestrator, Studio), so each loop gets its own client, kept
    only as long as the loop lives.
    """

    def __init__(self, config: OpikConfig) -> None:
        self.config = config
        self._parts = load_rest_client()  # at start-up, not on the first send while agents run
        self._client_class = _gzip_client_class(self._parts[2])
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def api(self) -> Any:
        """The ``AsyncOpikApi`` of the running loop (opened on first use)."""
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            async_api, _, httpx = self._parts
            limits = httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=30.0)
            client = self._client_class(
                timeout=httpx.Timeout(self.config.request_timeout_s), limits=limits, follow_redirects=True
            )
            api = async_api(
                base_url=self.config.url,
                api_key=self.config.api_key,
                workspace_name=self.config.workspace,
                timeout=self.config.request_timeout_s,
                httpx_client=client,
            )
            found = self._clients[loop] = (client, api)
        return found[1]

    async def aclose(self) -> None:
        """Close the running loop's connection pool; other loops' pools go with their loops."""
        found = self._clients.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].aclose()

    def forget_connections(self) -> None:
        """Drop every loop's pool without closing it (a forked child: they are the parent's)."""
        self._clients = weakref.WeakKeyDictionary()

    # -- the batch requests ----------------------------------------------------------------

    async def post_spans(self, encoded_items: bytes | list[dict[str, Any]]) -> None:
        """``encoded_items``: the JSON of the span bodies without brackets, or the bodies themselves."""
        if isinstance(encoded_items, bytes):
            await self._post("v1/private/spans/batch", gzipped(b'{"spans":[' + encoded_items + b"]}"))
        else:
            await self._call(lambda api: api.spans.create_spans(spans=_iso_times(encoded_items), **_NO_RETRY))

    async def post_traces(self, bodies: list[dict[str, Any]]) -> None:
        if self.config.encode_once:
            await self._post("v1/private/traces/batch", encode_body({"traces": bodies}))
        else:
            await self._call(lambda api: api.traces.create_traces(traces=bodies, **_NO_RETRY))

    async def post_feedback(self, scores: list[dict[str, Any]], *, on_spans: bool) -> None:
        if on_spans:
            await self._call(lambda api: api.spans.score_batch_of_spans(scores=scores, **_NO_RETRY))
        else:
            await self._call(lambda api: api.traces.score_batch_of_traces(scores=scores, **_NO_RETRY))

    async def _post(self, path: str, body: tuple[bytes, bool]) -> None:
        """POST an encoded batch through the REST client's own transport (its auth, workspace, base URL).

        The generated ``create_spans`` makes exactly this request after converting every item; a
        non-2xx answer raises the same ``ApiError`` it would.
        """

        async def send(api: Any) -> None:
            content, zipped = body
            headers = {"content-type": "application/json"}
            if zipped:
                headers["Content-Encoding"] = "gzip"
            transport = api._client_wrapper.httpx_client  # the client create_spans itself sends through
            response = await transport.request(path, method="POST", content=content, headers=headers, **_NO_RETRY)
            if 200 <= response.status_code < 300:
                return
            try:
                detail: Any = response.json()
            except ValueError:
                detail = response.text
            raise self._parts[1](status_code=response.status_code, headers=dict(response.headers), body=detail)

        await self._call(send)

    async def _call(self, request: Any) -> None:
        """Run one request; every failure leaves as :class:`OpikRejectedError` or :class:`OpikUnavailableError`."""
        try:
            async with asyncio.timeout(self.config.request_timeout_s):  # not wait_for: see delivery._send
                await request(self.api())
        except (OpikRejectedError, OpikUnavailableError):
            raise
        except Exception as exc:
            raise self.classify(exc) from exc

    def classify(self, exc: BaseException) -> OpikRejectedError | OpikUnavailableError:
        """Sort a failure: the data's fault (final) or the server's / the network's (retry)."""
        _, api_error, httpx = self._parts
        if isinstance(exc, api_error):
            status = getattr(exc, "status_code", None)
            body = getattr(exc, "body", None)
            text = json.dumps(body, default=str) if not isinstance(body, str) else body
            reason = self.scrub(f"HTTP {status}: {text[:_REASON_LIMIT]}")
            if status in PERMANENT_STATUSES:
                return OpikRejectedError(reason, status)
            return OpikUnavailableError(reason, retry_after(getattr(exc, "headers", None)))
        if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
            return OpikUnavailableError(f"no answer within {self.config.request_timeout_s:g} s ({type(exc).__name__})")
        if isinstance(exc, (httpx.TransportError, OSError)):
            return OpikUnavailableError(self.scrub(f"{type(exc).__name__}: {exc}"[:_REASON_LIMIT]))
        # Anything else (a body that cannot be encoded, a client bug) will not improve on retry.
        return OpikRejectedError(self.scrub(f"{type(exc).__name__}: {exc}"[:_REASON_LIMIT]))

    def scrub(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "[REDACTED]") if key else text


_NO_RETRY: dict[str, Any] = {"request_options": {"max_retries": 0}}


def _iso_times(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The generated methods take the times as strings."""
    out = []
    for body in bodies:
        body = dict(body)
        for key in ("start_time", "end_time"):
            if isinstance(body.get(key), datetime):
                body[key] = iso(body[key])
        out.append(body)
    return out


def retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped; None when absent or unreadable."""
    if not headers:
        return None
    value = next((v for k, v in dict(headers).items() if str(k).lower() == "retry-after"), None)
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _RETRY_AFTER_MAX_S)
