"""Cache entries and the in-memory backend: what a cached answer records, how it is encoded,
and the rule deciding whether an answer computed before an invalidation may still be stored."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cachetools import TLRUCache

from .json_codec import json_bytes, json_text, loads
from .settings import CacheSettings

__all__ = [
    "EVERYTHING",
    "INVALIDATION_LOG",
    "LIVE_WINDOW_START",
    "CachedValue",
    "MemoryBackend",
    "StartTimes",
    "decode_entry",
    "encode_entry",
    "key_text",
    "newest_start",
    "unaffected_since",
]

#: How many recent invalidations a reader can check its answer against before storing it.
INVALIDATION_LOG = 256
#: Marks "every window": an invalidation without start times (e.g. after a bulk import).
EVERYTHING = math.inf

#: The window start recorded for bounded-staleness entries (cache_live.py): later than any span's
#: start time, so span writes never drop them (their age is their bound); a clear (``EVERYTHING``)
#: still does. Finite, so it is a valid Redis score and Lua number.
LIVE_WINDOW_START = 1e18

StartTimes = Iterable[datetime | float] | datetime | float | None


@dataclass(frozen=True, slots=True)
class CachedValue:
    """One cached answer, with what is needed to say how old it is and what it covers."""

    value: Any
    computed_at: float  # wall clock (time.time()), comparable across processes
    generation: int
    window_start: float = -EVERYTHING

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
        return EVERYTHING
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


def key_text(key: tuple[Any, ...]) -> str:
    # JSON, not repr(): the same key must name the same entry in every process and version.
    return json_text(key, "null")


def encode_entry(value: Any, computed_at: float, generation: int, window_start: float, ttl_s: float) -> bytes:
    # "t": the entry's own TTL, so a near-cache copy never outlives a shorter TTL given at store time.
    return json_bytes({"v": value, "at": computed_at, "g": generation, "ws": window_start, "t": ttl_s})


def decode_entry(payload: str | bytes) -> CachedValue:
    # Entries are stored as JSON in both backends so a hit never hands out the cache's own
    # objects (a caller mutating its state dict must not corrupt the next answer).
    raw = loads(payload)
    return CachedValue(raw["v"], float(raw["at"]), int(raw["g"]), float(raw["ws"]))


# --------------------------------------------------------------------------- memory backend


class MemoryBackend:
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
        self._log: deque[tuple[int, float]] = deque(maxlen=INVALIDATION_LOG)

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
            if not unaffected_since(generation, self._generation, window_start, list(self._log)):
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


def unaffected_since(token: int, current: int, window_start: float, log_newest_first: list[tuple[int, float]]) -> bool:
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
