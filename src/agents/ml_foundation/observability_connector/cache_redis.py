"""The Redis backend of the metrics cache: entries shared by every process on the same Redis,
invalidations as atomic Lua scripts, and a near-cache (:mod:`.cache_near`) in front."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .cache_entries import INVALIDATION_LOG
from .cache_near import NearCache, near_acquire, near_existing, near_release
from .json_codec import loads
from .lifecycle import keep_inherited, watch_after_fork
from .log_gate import LogGate
from .redaction import redact_url
from .settings import CacheSettings

__all__ = ["INVALIDATE_LUA", "PUT_LUA", "RedisBackend", "RedisUnavailableError"]

log = logging.getLogger(__name__)

T = TypeVar("T")


# KEYS: gen, log, idx, entry. ARGV: token, window_start, payload, ttl_ms, log length.
PUT_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
local ws = tonumber(ARGV[2])
if current ~= token then
    if current < token or current - token > tonumber(ARGV[5]) then return 0 end
    local recent = redis.call('LRANGE', KEYS[2], 0, current - token - 1)
    if #recent < current - token then return 0 end
    for _, item in ipairs(recent) do
        local newest = string.sub(item, string.find(item, ' ') + 1)
        if newest == 'inf' or tonumber(newest) >= ws then return 0 end
    end
end
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
redis.call('ZADD', KEYS[3], ws, KEYS[4])
local ttl = redis.call('PTTL', KEYS[3])
if ttl < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[3], ARGV[4]) end
return 1
"""

# KEYS: gen, log, idx. ARGV: newest start ('inf' = everything), log length, pub/sub channel.
# Returns the generation and how many live entries it deleted (expired ones still indexed do not count).
INVALIDATE_LUA = """
local gen = redis.call('INCR', KEYS[1])
redis.call('LPUSH', KEYS[2], gen .. ' ' .. ARGV[1])
if ARGV[3] then redis.call('PUBLISH', ARGV[3], gen .. ' ' .. ARGV[1]) end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
local upper = ARGV[1]
if upper == 'inf' then upper = '+inf' end
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', upper)
local dropped = 0
for _, key in ipairs(stale) do dropped = dropped + redis.call('DEL', key) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', upper)
return {gen, dropped}
"""


class RedisUnavailableError(Exception):
    """Internal: the call did not happen (Redis down, or skipped while backing off)."""


class RedisBackend:
    """Entries in Redis, one asyncio client per event loop.

    One client per loop because a redis-py asyncio connection belongs to the loop that opened
    it, and this connector runs several loops (the flusher thread's, the caller's, the CLI's).
    """

    name = "redis"

    def __init__(self, settings: CacheSettings, url: str, near_cache: bool = True) -> None:
        self._url = url
        self._timeout = settings.redis_timeout_s
        self._retry_s = settings.redis_retry_s
        tag = "{" + settings.key_prefix + "}"  # one hash slot, so the Lua scripts work on Redis Cluster
        self._gen_key = f"{tag}:gen"
        self._log_key = f"{tag}:inv"
        self._idx_key = f"{tag}:idx"
        self._entry_prefix = f"{tag}:e:"
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()  # guards the client map and the health fields below
        self._down_until = 0.0
        self._available = True
        self._log_gate = LogGate()
        self._suppressed = 0
        self.errors = 0
        self.last_error: str | None = None
        self._pending: float | None = None  # newest start of invalidations not yet delivered
        self._settings = settings
        self._channel = f"{tag}:inv:ch"
        self.near_enabled = near_cache
        self._near: NearCache | None = None
        self._near_release: weakref.finalize | None = None
        self._near_lock = threading.Lock()
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: the per-loop clients belong to the parent's loops and sockets, and
        the near-cache's subscriber thread is the parent's; the child opens its own on first use
        (the inherited clients are held, never closed: closing could write on a shared socket)."""
        keep_inherited(list(self._clients.values()))
        self._clients = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._near_lock = threading.Lock()
        release, self._near_release, self._near = self._near_release, None, None
        if release is not None:
            release.detach()  # the parent's subscription is the parent's to release

    def describe(self) -> str:
        return redact_url(self._url)

    def entry_key(self, key: str) -> str:
        return self._entry_prefix + hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()

    # -- plumbing

    def _client(self) -> tuple[Any, Any, Any]:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._clients.get(loop)
            if found is not None:
                return found
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No client-side retries: the caller is waiting, and computing from the store is the retry.
        client = Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        found = (client, client.register_script(PUT_LUA), client.register_script(INVALIDATE_LUA))
        with self._lock:
            self._clients[loop] = found
        return found

    async def _drop_client(self) -> None:
        """Forget this loop's client after a failure: its connections may be half-open."""
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._clients.pop(loop, None)
        if found is not None:
            with contextlib.suppress(Exception):  # closing a broken client is best effort
                await found[0].aclose()

    async def _call(self, what: str, op: Callable[[Any, Any, Any], Awaitable[T]]) -> T:
        if time.monotonic() < self._down_until:
            raise RedisUnavailableError
        try:
            client, put_script, invalidate_script = self._client()
            pending = self._pending
            if pending is not None:
                await invalidate_script(
                    keys=[self._gen_key, self._log_key, self._idx_key],
                    args=[_num(pending), INVALIDATION_LOG, self._channel],
                )
                with self._lock:
                    if self._pending is not None and self._pending <= pending:
                        self._pending = None
            result = await op(client, put_script, invalidate_script)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the cache must become "compute it", never an error
            self._failed(what, exc)
            if self._near is not None:  # doubt: nothing local survives a Redis failure
                self._near.drop_all()
            await self._drop_client()
            raise RedisUnavailableError from exc
        self._succeeded()
        return result

    def _failed(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._down_until = now + self._retry_s
            was_available, self._available = self._available, False
            should_log = self._log_gate.open(force=was_available)
            suppressed = self._suppressed
            if should_log:
                self._suppressed = 0
            else:
                self._suppressed += 1
        if should_log:
            log.warning(
                "metrics cache: Redis at %s failed during %s (%s); answering from the store, retrying Redis in %gs%s",
                self.describe(),
                what,
                self.last_error,
                self._retry_s,
                f" ({suppressed} more failure(s) since the last message)" if suppressed else "",
            )

    def _succeeded(self) -> None:
        with self._lock:
            if self._available:
                return
            self._available = True
            suppressed = self._suppressed
            self._suppressed = 0
        log.warning(
            "metrics cache: Redis at %s is reachable again; caching resumed (%d failure(s) in total)",
            self.describe(),
            self.errors,
        )
        if suppressed:
            log.debug("%d Redis failure(s) were not logged individually", suppressed)

    # -- the near-cache

    def _near_cache(self) -> NearCache | None:
        """This process's near-cache for this Redis and prefix (its subscriber starts on first use)."""
        if not self.near_enabled:
            return None
        near = self._near
        if near is None:
            with self._near_lock:
                if self._near is None:
                    self._near = near_acquire(self._url, self._channel, self._settings)
                    # A cache dropped without aclose() still lets its subscriber stop.
                    self._near_release = weakref.finalize(self, near_release, self._near)
                near = self._near
        return near

    def _near_invalidate(self, newest: float) -> None:
        """Drop this process's local entries at once (also those of other caches on this Redis)."""
        near = self._near or near_existing(self._url, self._channel)
        if near is not None:
            near.invalidate(newest)

    def near_status(self) -> dict[str, Any]:
        near = self._near
        if near is None:
            return {"enabled": self.near_enabled, "live": False}
        return {"enabled": True, **near.status()}

    # -- the backend API (every method raises RedisUnavailableError instead of a Redis error)

    async def get(self, key: str, ttl_s: float) -> bytes | None:
        near = self._near_cache()
        token = None
        # Not while an invalidation of ours is undelivered (the next Redis call delivers it) or
        # while Redis is failing: then the near-cache is bypassed, as if it did not exist.
        if near is not None and self._pending is None and time.monotonic() >= self._down_until:
            payload = near.lookup(key)
            if payload is not None:
                return payload
            token = near.token()
        entry = self.entry_key(key)
        payload = await self._call("get", lambda client, _p, _i: client.get(entry))
        if payload is not None and token is not None:
            try:
                raw = loads(payload)
                lifetime = min(ttl_s, float(raw.get("t", ttl_s)))
                near.offer(token, key, payload, float(raw["ws"]), float(raw["at"]) + lifetime)  # type: ignore[union-attr]
            except (ValueError, KeyError, TypeError):
                pass  # unreadable: the caller logs it; never kept
        return payload

    async def generation(self) -> int | None:
        raw = await self._call("generation", lambda client, _p, _i: client.get(self._gen_key))
        return int(raw or 0)

    async def put(self, key: str, payload: bytes, ttl_s: float, generation: int, window_start: float) -> bool:
        entry = self.entry_key(key)
        ttl_ms = max(1, int(ttl_s * 1000))
        near = self._near_cache()
        token = near.token() if near is not None and self._pending is None else None
        stored = await self._call(
            "put",
            lambda _c, put_script, _i: put_script(
                keys=[self._gen_key, self._log_key, self._idx_key, entry],
                args=[generation, _num(window_start), payload, ttl_ms, INVALIDATION_LOG],
            ),
        )
        if stored and near is not None:
            near.offer(token, key, payload, window_start, loads(payload)["at"] + ttl_s)
        return bool(stored)

    async def invalidate(self, newest: float) -> int:
        self._near_invalidate(newest)  # before: no Redis answer read from now on is kept...
        try:
            _gen, dropped = await self._call(
                "invalidate",
                lambda _c, _p, invalidate_script: invalidate_script(
                    keys=[self._gen_key, self._log_key, self._idx_key],
                    args=[_num(newest), INVALIDATION_LOG, self._channel],
                ),
            )
        except RedisUnavailableError:
            self.defer_invalidation(newest)
            raise
        finally:
            self._near_invalidate(newest)  # ...and after: nor one read while the script ran
        return int(dropped)

    def defer_invalidation(self, newest: float) -> None:
        """Deliver this invalidation with this process's next successful Redis call."""
        self._near_invalidate(newest)
        with self._lock:
            self._pending = newest if self._pending is None else max(self._pending, newest)

    def entry_count(self) -> int | None:
        return None  # counting keys in a shared Redis is not a per-process figure

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "url": self.describe(),
                "available": self._available,
                "errors": self.errors,
                "last_error": self.last_error,
                "invalidation_pending": self._pending is not None,
                "near_cache": self.near_status(),
            }

    async def aclose(self) -> None:
        """Close this loop's client; clients of other (possibly finished) loops are dropped."""
        with self._near_lock:
            self._near = None
            release, self._near_release = self._near_release, None
        if release is not None:
            release()  # at most once; the subscriber stops with the last cache of this process using it
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            mine = self._clients.pop(loop, None) if loop is not None else None
            self._clients.clear()
        if mine is not None:
            try:
                await mine[0].aclose()
            except Exception as exc:
                log.debug("closing the Redis client failed: %s", exc)


def _num(value: float) -> str:
    """A float for Lua's ``tonumber`` and Redis scores; ``inf`` means "every window"."""
    return "inf" if value == math.inf else repr(float(value))
