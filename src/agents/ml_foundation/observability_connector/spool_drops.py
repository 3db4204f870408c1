"""Batches the spool could not write (disk full, a file-size limit, the file gone read-only).

When the disk itself fails there is nowhere left to keep a batch: its spans are lost. That must
never raise into the caller nor stop the flusher, and it must not flood the log either (a full
disk fails every batch). So each loss is counted here, in memory (the spool file is what cannot
be written), and said in at most one log line per ``interval_s``, carrying the counts since the
previous line, the path and what to do.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .log_gate import LOG_INTERVAL_S, LogGate

__all__ = ["SpoolWriteFailures", "WriteFailureStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriteFailureStats:
    batches: int
    spans: int
    last_error: str | None
    last_at: float | None

    def as_dict(self) -> dict[str, object]:
        return {"batches": self.batches, "spans": self.spans, "last_error": self.last_error}


class SpoolWriteFailures:
    """Counts of batches lost because the spool could not write them; logs at most once per interval."""

    def __init__(self, path: str, interval_s: float = LOG_INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._batches = self._spans = 0
        self._unlogged_batches = self._unlogged_spans = 0
        self._last_error: str | None = None
        self._last_at: float | None = None
        self._log_gate = LogGate(interval_s)

    def record(self, spans: int, error: str) -> None:
        """One batch of ``spans`` lost; logs now unless a line was logged within the interval."""
        with self._lock:
            self._batches += 1
            self._spans += spans
            self._unlogged_batches += 1
            self._unlogged_spans += spans
            self._last_error = error
            self._last_at = time.time()
            if not self._log_gate.open():
                return
            batches, lost = self._unlogged_batches, self._unlogged_spans
            self._unlogged_batches = self._unlogged_spans = 0
            total = self._spans
        log.error(
            "the spool %s cannot be written (%s): %d span(s) in %d batch(es) lost since the last report, "
            "%d in all; free disk space (or raise the file-size limit) where the spool lives, or set "
            "batching.spool_path / OBS_BATCHING__SPOOL_PATH elsewhere; the sinks that work keep receiving "
            "spans (next report in %.0f s at the earliest)",
            self.path,
            error,
            lost,
            batches,
            total,
            self.interval_s,
        )

    def stats(self) -> WriteFailureStats:
        with self._lock:
            return WriteFailureStats(self._batches, self._spans, self._last_error, self._last_at)

    def reset_after_fork(self) -> None:
        """A forked child counts its own losses (and may hold a lock a parent thread held)."""
        self._lock = threading.Lock()
        self._batches = self._spans = self._unlogged_batches = self._unlogged_spans = 0
        self._log_gate.reset()
