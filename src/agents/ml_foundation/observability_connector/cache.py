"""Metrics cache: repeated dashboard/orchestrator questions are answered without the store.

Entries live for a TTL that grows with the window (a 7-day answer changes slowly) and are
invalidated when new spans land inside a cached window: every store write bumps a
generation number that is part of each entry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from .config import CacheSettings

__all__ = ["CachedValue", "MetricsCache"]


@dataclass(frozen=True, slots=True)
class CachedValue:
    value: Any
    computed_at: float
    generation: int

    @property
    def age_s(self) -> float:
        return time.time() - self.computed_at


class MetricsCache:
    """In-process TTL cache keyed by (window, filters)."""

    backend = "memory"

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        self._entries: TTLCache[tuple[Any, ...], CachedValue] = TTLCache(
            maxsize=self.settings.max_entries, ttl=self.settings.ttl_long_s
        )
        self._generation = 0
        self.hits = 0
        self.misses = 0

    def ttl_for(self, window_seconds: float) -> float:
        if window_seconds <= 3600:
            return self.settings.ttl_short_s
        if window_seconds <= 86_400:
            return self.settings.ttl_day_s
        return self.settings.ttl_long_s

    def get(self, key: tuple[Any, ...], window_seconds: float) -> CachedValue | None:
        entry = self._entries.get(key)
        if entry is None or entry.generation != self._generation or entry.age_s > self.ttl_for(window_seconds):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: tuple[Any, ...], value: Any) -> CachedValue:
        entry = CachedValue(value, time.time(), self._generation)
        self._entries[key] = entry
        return entry

    def invalidate(self) -> None:
        """Called after spans are stored: every cached window may now be stale."""
        self._generation += 1

    def get_status(self) -> dict[str, Any]:
        total = self.hits + self.misses
        return {
            "backend": self.backend,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": (self.hits / total) if total else 0.0,
            "entries": len(self._entries),
        }
