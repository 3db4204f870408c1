"""The repository's connection to Supabase: one REST client per event loop, and one retry layer.

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
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import urlsplit

import httpx
from postgrest.exceptions import APIError
from pydantic import SecretStr
from supabase import AsyncClient, AsyncClientOptions, acreate_client
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from src.repositories.base import (
    StoreError,
    StoreRequestError,
    StoreUnavailableError,
)
from src.repositories.supabase_errors import ENV_SERVICE_KEY, ENV_URL, raise_for_status, retryable

__all__ = ["SupabaseClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain"})


def origin(url: str) -> tuple[str, str]:
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


def key_role(key: str) -> str | None:
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


@dataclass(slots=True)
class LoopClient:
    supabase: AsyncClient
    http: httpx.AsyncClient


class SupabaseClient:
    """A Supabase project's REST API for the span repository: validated settings, per-loop clients, retries.

    Safe to share between event loops and threads: each loop gets its own client on first use.
    """

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
        max_connections: int = 10,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport`` replaces the network (tests, the PostgREST emulator); every loop's client shares it."""
        self._origin, self._host = origin(url)
        key = (service_key or "").strip()
        if not key:
            raise ValueError(f"a Supabase service key is required ({ENV_SERVICE_KEY})")
        role = key_role(key)
        if role is not None and role != "service_role":
            raise ValueError(
                f"{ENV_SERVICE_KEY} holds a key for the {role!r} role; the span table is readable and writable "
                "by service_role only (Row Level Security) — use the project's service_role / secret key"
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self._url = url.strip()
        # SecretStr: even vars(), a debugger or a rich traceback of this object shows '**********'.
        self._key = SecretStr(key)
        self._schema = schema
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._max_attempts = max_attempts
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._transport = transport
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopClient] = weakref.WeakKeyDictionary()

    def describe(self) -> str:
        return f"supabase:{self._origin}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._origin!r})"

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
            event_hooks={"response": [raise_for_status]},
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
            entry = self._clients.setdefault(loop, LoopClient(client, http))
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
            retry=retry_if_exception(retryable),
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
