"""What the flusher reports: running counts (:class:`FlusherStats`) and, per flush, what became
of the spans handed over since the previous one (:class:`FlushReport`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BatchNotStoredError", "FlushReport", "FlusherStats"]


class BatchNotStoredError(RuntimeError):
    """``deliver`` could not store a batch and has already logged why: counted, not logged again."""


@dataclass
class FlusherStats:
    batches_sent: int = 0
    batches_failed: int = 0
    spans_delivered: int = 0  # taken by the sinks: stored, or spooled on disk for replay
    spans_failed: int = 0  # in batches that neither the store nor the spool took
    spans_rejected: int = 0  # refused one by one by validation or the store (each with a reason)
    last_flush_at: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class FlushReport:
    """What became of the spans handed over between the previous completed flush and this one.

    ``ok`` (what ``flush()`` returns) only when every one of them was delivered: stored, or
    spooled on disk for replay. Counts: ``delivered``; ``rejected`` one by one (invalid values,
    refused rows: see ``emission_errors`` and the dead letters); ``failed`` in batches nothing
    took; ``dropped`` at the full buffer; ``pending`` still queued or in flight when the flush
    gave up (``timed_out``, or the flusher is stuck behind a sink since a close timed out).
    """

    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0
    timed_out: bool = False
    at: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.rejected or self.failed or self.dropped or self.pending or self.timed_out)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}
