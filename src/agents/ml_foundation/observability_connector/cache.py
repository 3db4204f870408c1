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

**Bounded staleness (stale-while-revalidate).** Under live traffic the rule above drops every
answer whose window ends now at the next write. A caller that accepts answers up to ``S`` seconds
old (``max_staleness_s``, or ``cache.live_staleness_s`` for callers that choose nothing; 0 =
strict, the default) reads :meth:`MetricsCache.aget_within` instead: a second entry per question
(its key prefixed ``"live"``) that span writes do not drop, recording when its snapshot of the
store was taken. Taken at most ``S`` before the question: served at once (and from half of
``S`` on, one background refresh replaces it). Absent or older: the reader awaits the one refresh
of that key (started by it or already running), so an answer is at most ``S`` plus one refresh's
duration old. Refreshes are single-flight per key and loop (:mod:`.cache_live`); one that fails
is logged and counted, never raised into a reader that was served. The same entries and rules
serve both backends (with Redis, through the near-cache), and a strict question never reads them.

**Near-cache (Redis backend).** Each process keeps the Redis answers it has seen in a small
local cache invalidated over Redis pub/sub, trusted only while its subscription is live (see
:mod:`.cache_near`).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .cache_entries import (
    EVERYTHING,
    LIVE_WINDOW_START,
    CachedValue,
    MemoryBackend,
    StartTimes,
    decode_entry,
    encode_entry,
    key_text,
    newest_start,
)
from .cache_live import SingleFlight
from .cache_redis import RedisBackend, RedisUnavailableError
from .lifecycle import watch_after_fork
from .settings import CacheSettings

__all__ = ["DEFAULT_REDIS_URL", "CachedValue", "MetricsCache", "newest_start"]

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: A bounded-staleness entry older than this share of its reader's bound is refreshed in the
#: background, so a steady reader normally finds one younger than its bound.
REFRESH_AT = 0.5

Compute = Callable[[], Awaitable[Any]]

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
        self._backend: MemoryBackend | RedisBackend
        if self.settings.backend == "redis":
            url = self.settings.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
            self._backend = RedisBackend(self.settings, url, near_cache=near_cache)
        else:
            self._backend = MemoryBackend(self.settings)
        self._counts_lock = threading.Lock()
        watch_after_fork(self)
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.stale_discarded = 0
        self.invalidations = 0
        self.entries_invalidated = 0
        self._refreshes = SingleFlight()

    def _after_fork_in_child(self) -> None:
        # Another thread of the parent may have held it at the fork (the Redis backend resets itself).
        self._counts_lock = threading.Lock()
        if isinstance(self._backend, MemoryBackend):
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
        entry = await self._fetch(key_text(key), ttl)
        self._count(**({"hits": 1} if entry is not None else {"misses": 1}))
        return entry

    async def _fetch(self, text_key: str, ttl: float) -> CachedValue | None:
        try:
            payload = await self._backend.get(text_key, ttl)
            return None if payload is None else decode_entry(payload)
        except RedisUnavailableError:
            return None
        except (ValueError, KeyError, TypeError) as exc:  # an entry written by an incompatible version
            log.warning("metrics cache: ignoring an unreadable entry: %s", exc)
            return None

    # -- bounded staleness: stale-while-revalidate (see the module docstring)

    async def aget_within(
        self, key: tuple[Any, ...], window_seconds: float, max_staleness_s: float, compute: Compute
    ) -> tuple[Any, bool, float]:
        """``(answer, from_cache, age_s)``: a cached answer whose snapshot was taken at most
        ``max_staleness_s`` before this call, else the one refresh of ``key`` awaited
        (``compute()`` reads the store; its errors reach only the readers that awaited it).
        ``age_s`` is the time from the snapshot to the answer (so it includes the fetch).
        ``max_staleness_s <= 0`` or caching off for this window: computed now, nothing cached.
        """
        ttl = self.ttl_for(window_seconds)
        if max_staleness_s <= 0 or ttl <= 0:
            return await compute(), False, 0.0
        live = key_text(("live", *key))
        # Staleness is measured from when the question was asked, not from when the entry was
        # fetched: a snapshot taken after the question (another reader's refresh that finished
        # while this one waited for Redis) is fresh enough, however slow the fetch was.
        asked_at = time.time()
        entry = await self._fetch(live, ttl)
        if entry is not None and asked_at - entry.computed_at <= max_staleness_s:
            self._count(hits=1)
            if asked_at - entry.computed_at >= max_staleness_s * REFRESH_AT:
                self._refreshes.start(live, lambda: self._refresh(key, live, window_seconds, compute))
            return entry.value, True, entry.age_s
        self._count(misses=1)
        task = self._refreshes.start(live, lambda: self._refresh(key, live, window_seconds, compute))
        value, computed_at = await asyncio.shield(task)
        # Every reader of one refresh gets its own copy, as a hit (decoded JSON) does.
        return copy.deepcopy(value), False, max(0.0, time.time() - computed_at)

    async def _refresh(
        self, key: tuple[Any, ...], live: str, window_seconds: float, compute: Compute
    ) -> tuple[Any, float]:
        """Compute once; keep it as the bounded-staleness entry and, if no write raced it, the strict one."""
        generation = await self.generation()  # before the store is read, as for compute_metrics
        computed_at = time.time()
        value = await compute()
        ttl = self.ttl_for(window_seconds)
        await self._put(key, value, ttl, generation, computed_at - window_seconds, computed_at=computed_at)
        await self._store(live, value, ttl, generation, LIVE_WINDOW_START, computed_at)
        return value, computed_at

    async def wait_for_refreshes(self) -> None:
        """Wait for this loop's background refreshes (tests, benchmarks, an orderly shutdown)."""
        await self._refreshes.wait_idle()

    async def generation(self) -> int | None:
        """Take this before reading the store; pass it to :meth:`aput`. None: do not store."""
        try:
            return await self._backend.generation()
        except RedisUnavailableError:
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
        self,
        key: tuple[Any, ...],
        value: Any,
        ttl: float,
        generation: int | None,
        window_start: float,
        *,
        computed_at: float | None = None,
    ) -> CachedValue | None:
        now = time.time() if computed_at is None else computed_at
        stored = await self._store(key_text(key), value, ttl, generation, window_start, now)
        if stored is None:
            return None
        self._count(**({"stores": 1} if stored else {"stale_discarded": 1}))
        return CachedValue(value, now, generation, window_start) if stored and generation is not None else None

    async def _store(
        self, text_key: str, value: Any, ttl: float, generation: int | None, window_start: float, computed_at: float
    ) -> bool | None:
        """True: stored; False: refused (a write raced it); None: not attempted or the backend is down."""
        if generation is None or ttl <= 0:
            return None
        payload = encode_entry(value, computed_at, generation, window_start, ttl)
        try:
            return await self._backend.put(text_key, payload, ttl, generation, window_start)
        except RedisUnavailableError:
            return None

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
        except RedisUnavailableError:
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
        if isinstance(backend, MemoryBackend):
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
        newest = EVERYTHING if window is None else time.time() - _window_seconds(window)
        return await self._drop_reaching_back_to(newest)

    async def clear(self) -> int:
        """Drop every cached answer (in Redis: for every process sharing this prefix); the number dropped."""
        return await self._drop_reaching_back_to(EVERYTHING)

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
                "live_staleness_s": self.settings.live_staleness_s,
                "refreshes": self._refreshes.started,
                "refresh_errors": self._refreshes.failed,
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
        """Stop this loop's background refreshes and release its Redis connections."""
        await self._refreshes.aclose()
        await self._backend.aclose()
