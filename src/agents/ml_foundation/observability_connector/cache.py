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
``>= window_start``. Writers call :meth:`MetricsCache.ainvalidate_since` with the start times they
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

**Near-cache (Redis backend).** A Redis hit is a round trip plus a decode (~170 µs); a dashboard
asking again and again should not pay it. Each process therefore keeps the Redis answers it has
seen in a small local cache (:class:`_NearCache`, one per process per Redis URL and key prefix,
shared by every :class:`MetricsCache` of that process) and invalidates them from Redis pub/sub:
the invalidation script ``PUBLISH``-es ``"<generation> <newest start>"`` on ``{prefix}:inv:ch``,
and a daemon thread per near-cache holds a ``SUBSCRIBE`` on it. Correctness never rests on a
message arriving:

* the near-cache answers only while that subscription is *live*: from the server's confirmation
  of ``SUBSCRIBE`` until any error, EOF, unanswered heartbeat ``PING``, or gap in the generations
  it hears; losing it drops every local entry at once, and until the next confirmation every
  question goes to Redis exactly as without a near-cache (a confirmation drops everything again,
  so nothing published while unsubscribed can survive);
* an answer read from (or stored in) Redis enters the near-cache only if no invalidation and no
  loss of the subscription happened since before the Redis call (a sequence number), so a reply
  that raced an invalidation is never kept;
* invalidations by this process (delivered or deferred) drop local entries directly, before and
  after the Redis call, so a process reads its own writes without waiting for its own message;
  a pending (undelivered) invalidation, or a Redis failure, bypasses / drops the near-cache.

Across processes an invalidation therefore reaches a near-cache when its pub/sub message does
(sub-millisecond on a LAN), and a dead or doubtful subscription costs the round trip, never a
stale answer. A near-cache entry lives no longer than the Redis entry's TTL (``computed_at + ttl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
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

from cachetools import TLRUCache

from .config import CacheSettings
from .lifecycle import keep_inherited, register_after_fork, watch_after_fork
from .redaction import redact_url

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
    values = list(start_times)
    if not values:
        return None
    try:
        # One C comparison per value instead of a conversion each (a batch brings a thousand).
        newest = max(values)
    except TypeError:  # datetimes mixed with numbers, or naive with aware
        newest = None
    if newest is None or (isinstance(newest, datetime) and newest.tzinfo is None):
        return max(_epoch(value) for value in values)  # as instants (local wall clocks do not order like them)
    return _epoch(newest)


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


def _encode(value: Any, computed_at: float, generation: int, window_start: float, ttl_s: float) -> bytes:
    # "t": the entry's own TTL, so a near-cache copy never outlives a shorter TTL given at store time.
    return _dumps({"v": value, "at": computed_at, "g": generation, "ws": window_start, "t": ttl_s})


def _decode(payload: str | bytes) -> CachedValue:
    # Entries are stored as JSON in both backends so a hit never hands out the cache's own
    # objects (a caller mutating its state dict must not corrupt the next answer).
    raw = _loads(payload)
    return CachedValue(raw["v"], float(raw["at"]), int(raw["g"]), float(raw["ws"]))


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

    async def get(self, key: str, ttl_s: float) -> bytes | None:
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
            dropped = 0
            for k in stale:
                self._window_starts.pop(k, None)
                dropped += self._entries.pop(k, None) is not None  # an expired entry does not count
            return dropped

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

# KEYS: gen, log, idx. ARGV: newest start ('inf' = everything), log length, pub/sub channel.
# Returns the generation and how many live entries it deleted (expired ones still indexed do not count).
_INVALIDATE_LUA = """
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


# --------------------------------------------------------------------------- near-cache

#: Heartbeat on the pub/sub connection after this much silence; no answer within it = doubt.
_HEARTBEAT_S = 2.0
#: How long the subscriber blocks per read (also how soon it notices it should stop).
_POLL_S = 0.25


class _NearCache:
    """This process's copy of Redis answers, valid only while its pub/sub subscription is live.

    Entries are the Redis payloads (bytes: a hit still decodes, so callers get their own copy),
    keyed by the key text, each with its window start and a monotonic expiry. ``_seq`` grows with
    every invalidation and every change of liveness; a fill carries the ``_seq`` taken before its
    Redis call and is refused if it moved.
    """

    def __init__(self, url: str, channel: str, max_entries: int, timeout_s: float, retry_s: float) -> None:
        self.url = url
        self.channel = channel
        self._timeout = timeout_s
        self._retry_s = max(0.05, retry_s)
        self._lock = threading.Lock()
        self._entries: TLRUCache[str, tuple[bytes, float, float]] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, item, _now: item[2], timer=time.monotonic
        )
        self._seq = 0
        self._live = False
        self._last_gen: int | None = None
        self.refs = 0
        self.hits = 0
        self.subscriptions = 0
        self.losses = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- the reader's side

    def lookup(self, key: str) -> bytes | None:
        with self._lock:
            if not self._live:
                return None
            found = self._entries.get(key)
            if found is None:
                return None
            self.hits += 1
            return found[0]

    def token(self) -> int | None:
        """Take before a Redis call whose answer may be kept; None: keep nothing."""
        with self._lock:
            return self._seq if self._live else None

    def offer(self, token: int | None, key: str, payload: bytes, window_start: float, expires_at: float) -> bool:
        """Keep ``payload`` unless something happened since ``token`` was taken (wall-clock expiry)."""
        if token is None:
            return False
        remaining = expires_at - time.time()
        with self._lock:
            if not self._live or token != self._seq or remaining <= 0:
                return False
            self._entries[key] = (payload, window_start, time.monotonic() + remaining)
            return True

    def invalidate(self, newest: float) -> None:
        with self._lock:
            self._seq += 1
            for key in [k for k, item in self._entries.items() if item[1] <= newest]:
                self._entries.pop(key, None)

    def drop_all(self, live: bool | None = None) -> None:
        with self._lock:
            self._seq += 1
            self._entries.clear()
            if live is not None:
                self._live = live
                self._last_gen = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            self._entries.expire()
            return {
                "live": self._live,
                "entries": len(self._entries),
                "hits": self.hits,
                "subscriptions": self.subscriptions,
                "losses": self.losses,
            }

    @property
    def live(self) -> bool:
        with self._lock:
            return self._live

    # -- the subscriber thread

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        # Imported before the thread starts: redis-py imported by two threads at once (this one's
        # sync client, the caller's asyncio client) can fail with a partially initialised module.
        import redis.asyncio
        import redis.backoff
        import redis.retry  # noqa: F401

        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name=f"metrics-cache-near:{self.channel}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread = None
        self.drop_all(live=False)

    def _lost(self, why: str) -> None:
        with self._lock:
            was_live = self._live
            self.losses += 1 if was_live else 0
        self.drop_all(live=False)
        if was_live:
            log.info("metrics cache: near-cache off until Redis pub/sub is back (%s)", why)

    def _on_message(self, data: bytes) -> None:
        gen_text, _, newest_text = data.decode().partition(" ")
        gen, newest = int(gen_text), float(newest_text)
        with self._lock:
            # A gap in the generations means a message this subscription never saw: trust nothing.
            gap = self._last_gen is not None and gen != self._last_gen + 1
            self._last_gen = gen
        if gap:
            self.drop_all()
        else:
            self.invalidate(newest)

    def _run(self, stop: threading.Event) -> None:
        from redis import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        while not stop.is_set():
            client = pubsub = None
            try:
                # No retries: redis-py would reconnect and resubscribe behind our back, hiding a gap.
                client = Redis.from_url(
                    self.url,
                    socket_timeout=self._timeout + _HEARTBEAT_S,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),
                    health_check_interval=0,
                )
                pubsub = client.pubsub()
                pubsub.subscribe(self.channel)
                last_heard = time.monotonic()
                ping_sent: float | None = None
                while not stop.is_set():
                    message = pubsub.get_message(timeout=_POLL_S)
                    now = time.monotonic()
                    if message is None:
                        if ping_sent is not None and now - ping_sent > self._timeout + _HEARTBEAT_S:
                            raise TimeoutError("no answer to a pub/sub heartbeat")
                        if ping_sent is None and now - last_heard > _HEARTBEAT_S:
                            pubsub.ping()
                            ping_sent = now
                        continue
                    last_heard, ping_sent = now, None
                    kind = message["type"]
                    if kind == "subscribe" and not stop.is_set():
                        # (Re)subscribed: whatever was published before this is unknown to us.
                        with self._lock:
                            self.subscriptions += 1
                        self.drop_all(live=True)
                    elif kind == "message":
                        self._on_message(message["data"])
                    elif kind in ("unsubscribe", "punsubscribe"):
                        raise ConnectionError("unsubscribed")
            except Exception as exc:  # any doubt: no near-cache until a fresh subscription
                if not stop.is_set():
                    self._lost(f"{type(exc).__name__}: {exc}")
            finally:
                for closing in (pubsub, client):
                    if closing is not None:
                        with contextlib.suppress(Exception):
                            closing.close()
            stop.wait(self._retry_s)


_NEAR_LOCK = threading.Lock()
_NEAR: dict[tuple[int, str, str], _NearCache] = {}


def _near_after_fork_in_child() -> None:
    # Entries are keyed by pid, so the parent's are never found here; only the lock is replaced.
    global _NEAR_LOCK
    _NEAR_LOCK = threading.Lock()


register_after_fork(_near_after_fork_in_child)


def _near_acquire(url: str, channel: str, settings: CacheSettings) -> _NearCache:
    key = (os.getpid(), url, channel)  # after a fork the parent's subscriber thread is not ours
    with _NEAR_LOCK:
        near = _NEAR.get(key)
        if near is None:
            near = _NearCache(url, channel, settings.max_entries, settings.redis_timeout_s, settings.redis_retry_s)
            _NEAR[key] = near
        near.refs += 1
        near.start()
        return near


def _near_release(near: _NearCache) -> None:
    with _NEAR_LOCK:
        near.refs -= 1
        if near.refs > 0:
            return
        _NEAR.pop((near._pid, near.url, near.channel), None)
    near.stop()


def _near_existing(url: str, channel: str) -> _NearCache | None:
    with _NEAR_LOCK:
        return _NEAR.get((os.getpid(), url, channel))


class _RedisUnavailableError(Exception):
    """Internal: the call did not happen (Redis down, or skipped while backing off)."""


class _RedisBackend:
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
        self._last_log = -math.inf
        self._suppressed = 0
        self.errors = 0
        self.last_error: str | None = None
        self._pending: float | None = None  # newest start of invalidations not yet delivered
        self._settings = settings
        self._channel = f"{tag}:inv:ch"
        self.near_enabled = near_cache
        self._near: _NearCache | None = None
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
                    keys=[self._gen_key, self._log_key, self._idx_key],
                    args=[_num(pending), _INVALIDATION_LOG, self._channel],
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

    # -- the near-cache

    def _near_cache(self) -> _NearCache | None:
        """This process's near-cache for this Redis and prefix (its subscriber starts on first use)."""
        if not self.near_enabled:
            return None
        near = self._near
        if near is None:
            with self._near_lock:
                if self._near is None:
                    self._near = _near_acquire(self._url, self._channel, self._settings)
                    # A cache dropped without aclose() still lets its subscriber stop.
                    self._near_release = weakref.finalize(self, _near_release, self._near)
                near = self._near
        return near

    def _near_invalidate(self, newest: float) -> None:
        """Drop this process's local entries at once (also those of other caches on this Redis)."""
        near = self._near or _near_existing(self._url, self._channel)
        if near is not None:
            near.invalidate(newest)

    def near_status(self) -> dict[str, Any]:
        near = self._near
        if near is None:
            return {"enabled": self.near_enabled, "live": False}
        return {"enabled": True, **near.status()}

    # -- the backend API (every method raises _RedisUnavailableError instead of a Redis error)

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
                raw = _loads(payload)
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
                args=[generation, _num(window_start), payload, ttl_ms, _INVALIDATION_LOG],
            ),
        )
        if stored and near is not None:
            near.offer(token, key, payload, window_start, _loads(payload)["at"] + ttl_s)
        return bool(stored)

    async def invalidate(self, newest: float) -> int:
        self._near_invalidate(newest)  # before: no Redis answer read from now on is kept...
        try:
            _gen, dropped = await self._call(
                "invalidate",
                lambda _c, _p, invalidate_script: invalidate_script(
                    keys=[self._gen_key, self._log_key, self._idx_key],
                    args=[_num(newest), _INVALIDATION_LOG, self._channel],
                ),
            )
        except _RedisUnavailableError:
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


# --------------------------------------------------------------------------- the facade

#: Key namespace of the host API's answers (``MetricsCache.get_metrics`` & co.).
_HOST_NAMESPACE = "host_metrics"


def _window_seconds(window: str) -> float:
    from src.repositories.base import parse_window  # ValueError naming the accepted forms

    return parse_window(window).total_seconds()


def _host_key(window: str, agent: str | None) -> tuple[tuple[Any, ...], float]:
    seconds = _window_seconds(window)
    # Seconds, not the text: "24h" and "1d" are the same question.
    return (_HOST_NAMESPACE, int(seconds), agent), seconds


class MetricsCache:
    """The cache the metrics node uses, in front of the configured backend.

    Callers never see a backend failure: ``aget`` answers None (compute it), ``aput`` and
    ``ainvalidate_since`` do what they can. Counters are per process.
    """

    def __init__(self, settings: CacheSettings | None = None, *, near_cache: bool = True) -> None:
        """``near_cache=False``: with Redis, every question is a Redis round trip (benchmarks, tests)."""
        self.settings = settings or CacheSettings()
        self._backend: _MemoryBackend | _RedisBackend
        if self.settings.backend == "redis":
            url = self.settings.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
            self._backend = _RedisBackend(self.settings, url, near_cache=near_cache)
        else:
            self._backend = _MemoryBackend(self.settings)
        self._counts_lock = threading.Lock()
        watch_after_fork(self)
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.stale_discarded = 0
        self.invalidations = 0
        self.entries_invalidated = 0

    def _after_fork_in_child(self) -> None:
        # Another thread of the parent may have held it at the fork (the Redis backend resets itself).
        self._counts_lock = threading.Lock()
        if isinstance(self._backend, _MemoryBackend):
            self._backend._lock = threading.Lock()

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
        ttl = self.ttl_for(window_seconds)
        if ttl <= 0:
            return None
        try:
            payload = await self._backend.get(_key_text(key), ttl)
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
        return await self._put(key, value, self.ttl_for(window_seconds), generation, window_start)

    async def _put(
        self, key: tuple[Any, ...], value: Any, ttl: float, generation: int | None, window_start: float
    ) -> CachedValue | None:
        if generation is None or ttl <= 0:
            return None
        now = time.time()
        payload = _encode(value, now, generation, window_start, ttl)
        try:
            stored = await self._backend.put(_key_text(key), payload, ttl, generation, window_start)
        except _RedisUnavailableError:
            return None
        if not stored:
            self._count(stale_discarded=1)
            return None
        self._count(stores=1)
        return CachedValue(value, now, generation, window_start)

    async def ainvalidate_since(self, start_times: StartTimes = None) -> None:
        """New spans were stored: drop every answer whose window reaches back to the newest of them.

        ``start_times``: the stored spans' start times (datetimes or epoch seconds), or one of
        them; None means "anything may have changed" (bulk import, deletion). Never raises.
        """
        newest = newest_start(start_times)
        if newest is None:
            return
        await self._drop_reaching_back_to(newest)

    async def _drop_reaching_back_to(self, newest: float) -> int:
        """Drop every answer whose window starts at or before ``newest``; how many went (0: unknown)."""
        try:
            dropped = await self._backend.invalidate(newest)
        except _RedisUnavailableError:
            dropped = 0  # queued: this process's next Redis call delivers it
        self._count(invalidations=1, entries_invalidated=dropped)
        return dropped

    def invalidate_since(self, start_times: StartTimes = None) -> None:
        """Synchronous variant of :meth:`ainvalidate_since` for code without an event loop.

        In memory it takes effect at once; with Redis it is queued and delivered by this
        process's next Redis call (prefer :meth:`ainvalidate_since`, which delivers it now).
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

    # -- the host codebase's API: answers named by (window, agent) ----------------------------
    #
    # Same backend, TTLs, invalidation and counters as above. Its entries live under their own
    # key namespace: get_metrics hands out only what set_metrics / get_or_compute stored, never
    # the metrics node's answers (whose shape a host caller did not choose).

    def get_ttl(self, window: str) -> float:
        """Seconds an answer for ``window`` (``"1h"``, ``"24h"``, ``"7d"``, ...) stays cached."""
        return self.ttl_for(_window_seconds(window))

    async def get_metrics(self, window: str, agent: str | None = None) -> dict[str, Any] | None:
        """The answer stored for ``(window, agent)``, or None (absent, expired, invalidated, backend down)."""
        key, seconds = _host_key(window, agent)
        entry = await self.aget(key, seconds)
        return None if entry is None else entry.value  # type: ignore[no-any-return]

    async def set_metrics(
        self, window: str, agent: str | None, metrics: dict[str, Any], ttl: float | None = None
    ) -> bool:
        """Cache ``metrics`` for ``(window, agent)`` for ``ttl`` seconds (default: :meth:`get_ttl`).

        False when it was not stored: caching is off for that window (TTL 0), the backend is
        down, or spans were stored into the window while this call ran.
        """
        key, seconds = _host_key(window, agent)
        generation = await self.generation()
        lifetime = self.ttl_for(seconds) if ttl is None else float(ttl)
        return await self._put(key, metrics, lifetime, generation, time.time() - seconds) is not None

    async def get_or_compute(
        self,
        window: str,
        agent: str | None,
        compute_fn: Callable[[], Awaitable[dict[str, Any]] | dict[str, Any]],
        ttl: float | None = None,
    ) -> dict[str, Any]:
        """The cached answer for ``(window, agent)``, else ``compute_fn()``'s (awaited if async), cached.

        As for the metrics node, an answer is cached only if no spans were stored into its window
        while it was being computed.
        """
        key, seconds = _host_key(window, agent)
        cached = await self.aget(key, seconds)
        if cached is not None:
            return cached.value  # type: ignore[no-any-return]
        generation = await self.generation()  # both before computing: see compute_metrics
        window_start = time.time() - seconds
        result = compute_fn()
        value = await result if inspect.isawaitable(result) else result
        lifetime = self.ttl_for(seconds) if ttl is None else float(ttl)
        await self._put(key, value, lifetime, generation, window_start)
        return value

    async def invalidate(self, agent: str | None = None, window: str | None = None) -> int:
        """Drop cached answers covering ``window`` (None: every window); the number dropped.

        Conservative, as for span writes: the cache does not index answers by agent, so every
        agent's answers go, not only ``agent``'s, and with a window every answer reaching back at
        least that far (that window and longer ones). Answers of both APIs go. With Redis
        unreachable the invalidation is queued for this process's next Redis call and 0 is returned.
        """
        newest = _EVERYTHING if window is None else time.time() - _window_seconds(window)
        return await self._drop_reaching_back_to(newest)

    async def clear(self) -> int:
        """Drop every cached answer (in Redis: for every process sharing this prefix); the number dropped."""
        return await self._drop_reaching_back_to(_EVERYTHING)

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
                "ttl_s": {
                    "up_to_1h": self.settings.ttl_short_s,
                    "up_to_24h": self.settings.ttl_day_s,
                    "longer": self.settings.ttl_long_s,
                },
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
