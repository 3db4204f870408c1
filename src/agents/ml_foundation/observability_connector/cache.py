"""Metrics cache: repeated dashboard/orchestrator questions are answered without the store.

Two backends behind one async API (:class:`MetricsCache`), chosen by ``cache.backend``:

* ``memory`` (default): a per-process TTL cache. Nothing to run, nothing shared.
* ``redis``: entries live in Redis, so every process pointed at the same Redis (CLI, API
  workers, the agents' flusher threads) shares answers and invalidations.

**Lifetime.** An entry lives for a TTL that grows with its window (``ttl_for``): a 7-day answer
barely moves in ten minutes, a 30-minute one does in one. The TTL also bounds the drift of a
cached answer as its window slides forward with the clock.

**Invalidation, precisely.** Every window ends at "now" and the store counts a span when
``start_time >= window_start`` (no upper bound, so spans from a fast clock count too). An entry
computed at ``t`` for a window of ``W`` seconds therefore records ``window_start = t − W``
(taken *before* the store is read, so it is never later than the store's own bound), and a
write of new spans makes it stale exactly when the newest new ``start_time`` is
``>= window_start``. Writers call :meth:`MetricsCache.ainvalidate` with the start times they
stored; only the entries whose window reaches back to the newest of them are dropped: a backfill
of 3-hour-old spans drops the 24h and 7d answers and keeps the 30m and 1h ones. Filters are not
considered (a write for one agent drops that window's answers for every agent): conservative, and
it keeps the Redis side one sorted-set range query.

**The write/compute race.** A reader that misses reads the store and then stores its answer; a
write that commits after the reader's snapshot but invalidates before the reader stores would
leave a stale answer behind. Every invalidation therefore bumps a generation counter (Redis
``INCR`` across processes) and appends ``(generation, newest start)`` to a short log; a reader
takes the generation before it reads the store and its answer is stored only if no invalidation
since then touched its window (an atomic Lua script in Redis). When the log no longer reaches
back far enough the answer is simply not stored.

**Redis outages** never reach the caller: a failed call is logged (at most once a minute, with
the count of failures in between), the answer is computed from the store, and Redis is skipped
for ``redis_retry_s`` so an outage does not add a timeout to every question. An invalidation that
could not be delivered is kept and replayed on the next successful call, so a short blip does not
leave stale answers behind; a process that dies with one pending leaves them for at most one TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from cachetools import TLRUCache

from .config import CacheSettings

__all__ = ["DEFAULT_REDIS_URL", "CachedValue", "MetricsCache", "newest_start"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: How many recent invalidations a reader can check its answer against before storing it.
_INVALIDATION_LOG = 256
#: At most one "Redis unavailable" line per this many seconds (the rest are counted).
_LOG_EVERY_S = 60.0
#: Marks "every window": an invalidation without start times (e.g. after a bulk import).
_EVERYTHING = math.inf

StartTimes = Iterable[datetime | float] | datetime | float | None


@dataclass(frozen=True, slots=True)
class CachedValue:
    """One cached answer, with what is needed to say how old it is and what it covers."""

    value: Any
    computed_at: float  # wall clock (time.time()), comparable across processes
    generation: int
    window_start: float = -_EVERYTHING

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.computed_at)


def _epoch(value: datetime | float) -> float:
    if isinstance(value, datetime):
        return value.timestamp()  # naive datetimes are local time here; stored spans are UTC-aware
    return float(value)


def newest_start(start_times: StartTimes) -> float | None:
    """The newest start time in epoch seconds; ``inf`` for "everything"; None for "nothing new"."""
    if start_times is None:
        return _EVERYTHING
    if isinstance(start_times, datetime | int | float):
        return _epoch(start_times)
    newest: float | None = None
    for value in start_times:
        ts = _epoch(value)
        if newest is None or ts > newest:
            newest = ts
    return newest


def _key_text(key: tuple[Any, ...]) -> str:
    # JSON, not repr(): the same key must name the same entry in every process and version.
    return json.dumps(key, separators=(",", ":"), default=str)


try:  # a hit is mostly decoding: orjson (already installed with langsmith) is ~4x faster than json
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)

    _loads: Callable[[str | bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - same JSON on the wire either way

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads


def _encode(value: Any, computed_at: float, generation: int, window_start: float) -> bytes:
    return _dumps({"v": value, "at": computed_at, "g": generation, "ws": window_start})


def _decode(payload: str | bytes) -> CachedValue:
    # Entries are stored as JSON in both backends so a hit never hands out the cache's own
    # objects (a caller mutating its state dict must not corrupt the next answer).
    raw = _loads(payload)
    return CachedValue(raw["v"], float(raw["at"]), int(raw["g"]), float(raw["ws"]))


def redact_url(url: str) -> str:
    """The URL without its password, for logs and status output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{netloc}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


# --------------------------------------------------------------------------- memory backend


class _MemoryBackend:
    """Per-process entries; a lock because the flusher thread invalidates while others read."""

    name = "memory"

    def __init__(self, settings: CacheSettings) -> None:
        self._lock = threading.Lock()
        self._entries: TLRUCache[str, tuple[bytes, float]] = TLRUCache(
            maxsize=settings.max_entries,
            ttu=lambda _key, item, now: now + item[1],
            timer=time.monotonic,
        )
        self._window_starts: dict[str, float] = {}
        self._generation = 0
        self._log: deque[tuple[int, float]] = deque(maxlen=_INVALIDATION_LOG)

    def describe(self) -> str:
        return "memory"

    async def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self._entries.get(key)
            return None if found is None else found[0]

    async def generation(self) -> int | None:
        return self._generation

    async def put(self, key: str, payload: bytes, ttl_s: float, generation: int, window_start: float) -> bool:
        with self._lock:
            if not _unaffected_since(generation, self._generation, window_start, list(self._log)):
                return False
            self._entries[key] = (payload, ttl_s)
            self._window_starts[key] = window_start
            if len(self._window_starts) > 2 * self._entries.maxsize:  # forget evicted / expired keys
                self._window_starts = {k: v for k, v in self._window_starts.items() if k in self._entries}
            return True

    async def invalidate(self, newest: float) -> int:
        return self.invalidate_now(newest)

    def invalidate_now(self, newest: float) -> int:
        with self._lock:
            self._generation += 1
            self._log.appendleft((self._generation, newest))
            stale = [k for k, ws in self._window_starts.items() if ws <= newest]
            for k in stale:
                self._window_starts.pop(k, None)
                self._entries.pop(k, None)
            return len(stale)

    def entry_count(self) -> int:
        with self._lock:
            self._entries.expire()
            return len(self._entries)

    def status(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        return None


def _unaffected_since(token: int, current: int, window_start: float, log_newest_first: list[tuple[int, float]]) -> bool:
    """True when no invalidation after generation ``token`` reached back to ``window_start``."""
    if current == token:
        return True
    if current < token:  # the counter went backwards (a Redis restart): we know nothing
        return False
    missed = current - token
    recent = log_newest_first[:missed]
    if len(recent) < missed:
        return False
    return all(newest < window_start for _gen, newest in recent)


# --------------------------------------------------------------------------- Redis backend

# KEYS: gen, log, idx, entry. ARGV: token, window_start, payload, ttl_ms, log length.
_PUT_LUA = """
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

# KEYS: gen, log, idx. ARGV: newest start ('inf' = everything), log length.
_INVALIDATE_LUA = """
local gen = redis.call('INCR', KEYS[1])
redis.call('LPUSH', KEYS[2], gen .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
local upper = ARGV[1]
if upper == 'inf' then upper = '+inf' end
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', upper)
for _, key in ipairs(stale) do redis.call('DEL', key) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', upper)
return {gen, #stale}
"""


class _RedisUnavailableError(Exception):
    """Internal: the call did not happen (Redis down, or skipped while backing off)."""


class _RedisBackend:
    """Entries in Redis, one asyncio client per event loop.

    One client per loop because a redis-py asyncio connection belongs to the loop that opened
    it, and this connector runs several loops (the flusher thread's, the caller's, the CLI's).
    """

    name = "redis"

    def __init__(self, settings: CacheSettings, url: str) -> None:
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
        self._last_log = -math.inf
        self._suppressed = 0
        self.errors = 0
        self.last_error: str | None = None
        self._pending: float | None = None  # newest start of invalidations not yet delivered

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
        found = (client, client.register_script(_PUT_LUA), client.register_script(_INVALIDATE_LUA))
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
            raise _RedisUnavailableError
        try:
            client, put_script, invalidate_script = self._client()
            pending = self._pending
            if pending is not None:
                await invalidate_script(
                    keys=[self._gen_key, self._log_key, self._idx_key], args=[_num(pending), _INVALIDATION_LOG]
                )
                with self._lock:
                    if self._pending is not None and self._pending <= pending:
                        self._pending = None
            result = await op(client, put_script, invalidate_script)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the cache must become "compute it", never an error
            self._failed(what, exc)
            await self._drop_client()
            raise _RedisUnavailableError from exc
        self._succeeded()
        return result

    def _failed(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._down_until = now + self._retry_s
            was_available, self._available = self._available, False
            should_log = was_available or now - self._last_log >= _LOG_EVERY_S
            suppressed = self._suppressed
            if should_log:
                self._last_log = now
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

    # -- the backend API (every method raises _RedisUnavailableError instead of a Redis error)

    async def get(self, key: str) -> bytes | None:
        entry = self.entry_key(key)
        return await self._call("get", lambda client, _p, _i: client.get(entry))

    async def generation(self) -> int | None:
        raw = await self._call("generation", lambda client, _p, _i: client.get(self._gen_key))
        return int(raw or 0)

    async def put(self, key: str, payload: bytes, ttl_s: float, generation: int, window_start: float) -> bool:
        entry = self.entry_key(key)
        ttl_ms = max(1, int(ttl_s * 1000))
        stored = await self._call(
            "put",
            lambda _c, put_script, _i: put_script(
                keys=[self._gen_key, self._log_key, self._idx_key, entry],
                args=[generation, _num(window_start), payload, ttl_ms, _INVALIDATION_LOG],
            ),
        )
        return bool(stored)

    async def invalidate(self, newest: float) -> int:
        try:
            _gen, dropped = await self._call(
                "invalidate",
                lambda _c, _p, invalidate_script: invalidate_script(
                    keys=[self._gen_key, self._log_key, self._idx_key], args=[_num(newest), _INVALIDATION_LOG]
                ),
            )
        except _RedisUnavailableError:
            self.defer_invalidation(newest)
            raise
        return int(dropped)

    def defer_invalidation(self, newest: float) -> None:
        """Deliver this invalidation with this process's next successful Redis call."""
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
            }

    async def aclose(self) -> None:
        """Close this loop's client; clients of other (possibly finished) loops are dropped."""
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


# --------------------------------------------------------------------------- the facade


class MetricsCache:
    """The cache the metrics node uses, in front of the configured backend.

    Callers never see a backend failure: ``aget`` answers None (compute it), ``aput`` and
    ``ainvalidate`` do what they can. Counters are per process.
    """

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        self._backend: _MemoryBackend | _RedisBackend
        if self.settings.backend == "redis":
            url = self.settings.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
            self._backend = _RedisBackend(self.settings, url)
        else:
            self._backend = _MemoryBackend(self.settings)
        self._counts_lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.stale_discarded = 0
        self.invalidations = 0
        self.entries_invalidated = 0

    @property
    def backend(self) -> str:
        return self._backend.name

    def describe(self) -> str:
        """Where answers are cached, for people (no password)."""
        return self._backend.describe()

    def ttl_for(self, window_seconds: float) -> float:
        if window_seconds <= 3600:
            return self.settings.ttl_short_s
        if window_seconds <= 86_400:
            return self.settings.ttl_day_s
        return self.settings.ttl_long_s

    def _count(self, **deltas: int) -> None:
        with self._counts_lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    async def aget(self, key: tuple[Any, ...], window_seconds: float) -> CachedValue | None:
        """The cached answer, or None (absent, expired, invalidated, or the backend is down)."""
        if self.ttl_for(window_seconds) <= 0:
            return None
        try:
            payload = await self._backend.get(_key_text(key))
            entry = None if payload is None else _decode(payload)
        except _RedisUnavailableError:
            entry = None
        except (ValueError, KeyError, TypeError) as exc:  # an entry written by an incompatible version
            log.warning("metrics cache: ignoring an unreadable entry: %s", exc)
            entry = None
        self._count(**({"hits": 1} if entry is not None else {"misses": 1}))
        return entry

    async def generation(self) -> int | None:
        """Take this before reading the store; pass it to :meth:`aput`. None: do not store."""
        try:
            return await self._backend.generation()
        except _RedisUnavailableError:
            return None

    async def aput(
        self,
        key: tuple[Any, ...],
        value: Any,
        window_seconds: float,
        *,
        generation: int | None,
        window_start: float,
    ) -> CachedValue | None:
        """Store an answer unless a write since ``generation`` touched ``window_start`` onwards.

        ``window_start`` (epoch seconds) must not be later than the bound the store used, so take
        ``time.time() - window_seconds`` before reading the store.
        """
        ttl = self.ttl_for(window_seconds)
        if generation is None or ttl <= 0:
            return None
        now = time.time()
        payload = _encode(value, now, generation, window_start)
        try:
            stored = await self._backend.put(_key_text(key), payload, ttl, generation, window_start)
        except _RedisUnavailableError:
            return None
        if not stored:
            self._count(stale_discarded=1)
            return None
        self._count(stores=1)
        return CachedValue(value, now, generation, window_start)

    async def ainvalidate(self, start_times: StartTimes = None) -> None:
        """New spans were stored: drop every answer whose window reaches back to the newest of them.

        ``start_times``: the stored spans' start times (datetimes or epoch seconds), or one of
        them; None means "anything may have changed" (bulk import, deletion). Never raises.
        """
        newest = newest_start(start_times)
        if newest is None:
            return
        try:
            dropped = await self._backend.invalidate(newest)
        except _RedisUnavailableError:
            dropped = 0
        self._count(invalidations=1, entries_invalidated=dropped)

    def invalidate(self, start_times: StartTimes = None) -> None:
        """Synchronous variant for code without an event loop.

        In memory it takes effect at once; with Redis it is queued and delivered by this
        process's next Redis call (prefer :meth:`ainvalidate`, which delivers it now).
        """
        newest = newest_start(start_times)
        if newest is None:
            return
        backend = self._backend
        if isinstance(backend, _MemoryBackend):
            self._count(invalidations=1, entries_invalidated=backend.invalidate_now(newest))
        else:
            backend.defer_invalidation(newest)
            self._count(invalidations=1)

    def get_status(self) -> dict[str, Any]:
        with self._counts_lock:
            hits, misses = self.hits, self.misses
            status: dict[str, Any] = {
                "backend": self.backend,
                "where": self.describe(),
                "hits": hits,
                "misses": misses,
                "hit_rate": (hits / (hits + misses)) if hits + misses else 0.0,
                "stores": self.stores,
                "stale_discarded": self.stale_discarded,
                "invalidations": self.invalidations,
                "entries_invalidated": self.entries_invalidated,
            }
        count = self._backend.entry_count()
        if count is not None:
            status["entries"] = count
        extra = self._backend.status()
        if extra:
            status["redis"] = extra
        return status

    async def aclose(self) -> None:
        """Release Redis connections of the running loop (a no-op in memory)."""
        await self._backend.aclose()
