"""The one face every destination shows the delivery layer: ``send(spans) -> SinkResult``, ``aclose()``.

Core layer on purpose: the sinks (``src/repositories`` for the store, ``src/mlops`` for Opik)
implement it without importing the pipeline that drives them (``delivery.py``).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["RequestSlots", "Sink", "SinkResult", "SinkUnavailableError", "combine_failures"]


@dataclass(frozen=True, slots=True)
class SinkResult:
    """What a sink did with a batch it accepted: per-row rejections are final."""

    delivered: int
    rejected: Sequence[tuple[str, str]] = ()  # (span_id, the sink's reason)
    details: dict[str, int] = field(default_factory=dict)  # e.g. inserted / duplicates


class Sink(Protocol):
    """A destination of validated span rows.

    ``send`` raises for a transient failure of the whole batch (the delivery layer spools it and
    replays it later; an exception may carry ``retry_after_s``, the server's own hint); rows it
    refuses for good come back in :attr:`SinkResult.rejected` and are never retried.
    """

    name: str

    async def send(self, spans: list[Any]) -> SinkResult: ...

    async def aclose(self) -> None:
        """Release what the sink opened on the running loop (connections); the sink stays usable."""
        ...


class SinkUnavailableError(Exception):
    """The destination could not take the request now (transient); ``retry_after_s`` is the
    server's own hint, if it gave one. Each sink subclasses it under its own name."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def combine_failures(failures: Sequence[BaseException]) -> BaseException:
    """One exception for a batch sent as several requests: transient if any part was (so the
    delivery layer retries the batch), carrying the longest ``Retry-After`` any answer asked for."""
    transient = [f for f in failures if isinstance(f, SinkUnavailableError)]
    if not transient:
        return failures[0]
    hints = [f.retry_after_s for f in transient if f.retry_after_s is not None]
    reason = "; ".join(dict.fromkeys(f.reason for f in transient))
    return type(transient[0])(reason, max(hints) if hints else None)


class RequestSlots:
    """At most ``limit`` requests of one sink in flight at once, whichever batch (or replay) they
    belong to: the server sees the bound the setting names, however many batches overlap.

    One semaphore per event loop, because an asyncio semaphore belongs to the loop it first
    waits on (the flusher's loop, a host's own loop calling the sink directly).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def here(self) -> asyncio.Semaphore:
        """The running loop's semaphore."""
        loop = asyncio.get_running_loop()
        slots = self._by_loop.get(loop)
        if slots is None:
            slots = self._by_loop[loop] = asyncio.Semaphore(self.limit)
        return slots

    def forget(self) -> None:
        """In a forked child: the parent's loops never run here."""
        self._by_loop = weakref.WeakKeyDictionary()
