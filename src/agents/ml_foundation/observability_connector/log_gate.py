"""At most one log line per interval for a failure that repeats on every call.

A full disk, a down Redis or a full buffer fail every span or batch: logging each one would
flood the application's log (and cost it time) exactly when it is already in trouble. Each such
place counts every occurrence and asks a :class:`LogGate` whether this one may be said.
"""

from __future__ import annotations

import time

__all__ = ["LOG_INTERVAL_S", "LogGate"]

#: One line a minute: often enough to be seen in a tail, rare enough to be harmless.
LOG_INTERVAL_S = 60.0


class LogGate:
    """Opens at the first call, then at most once per ``interval_s``.

    Not locked: callers that race call it under their own lock, or accept the rare second line.
    """

    __slots__ = ("_last", "interval_s")

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: float | None = None  # time.monotonic() of the last opening

    def open(self, *, force: bool = False) -> bool:
        """True when a line may be logged now (always with ``force``); starts a new interval."""
        now = time.monotonic()
        if not force and self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        """The next call opens (a forked child, or a recovery that should be reported afresh)."""
        self._last = None
