"""The overflow: an encrypted, append-only file that extends the in-memory buffer under a burst.

Why it exists: producers can finish spans ten times faster than the pipeline (validation,
redaction, the sinks) delivers them. Rather than make the caller wait (which stalls its event
loop) or drop, the spiller thread moves raw spans out of the buffer into this file in bulk, and
the flusher feeds the pipeline from the file's head, in order, until the file is empty.

Why raw and encrypted, not redacted: redaction costs far more per span than the spill may (the
spill must outrun the producers while sharing the GIL with them), so spans are written as they
were finished, which may include secrets. Each chunk is sealed with AES-GCM under a random key
that exists only in this process's memory: the file is an extension of the in-memory buffer,
never a durable store. A crash loses it exactly as it loses the buffer; a file left by a dead
process is unreadable and is deleted when the next process opens its overflow in that
directory. What must outlive the process is kept by the flusher at shutdown the way queued
spans are (validated, redacted, into the durable spool).

The encoding is a tuple of the span's fields through orjson (values orjson cannot encode become
text). Chunks are appended to segment files (``overflow-<pid>-<n>.seg``, one set per process, so
processes sharing a data directory never touch each other's); a segment is deleted once read.
A chunk that would take the overflow past its disk bound is dropped and counted.

Thread-safety: the spiller (and, at a bound, a caller) writes, the flusher reads, shutdown may
read from another thread. One lock guards the chunk index, taken per chunk, not per span; a
read decrypts and decodes its chunk outside it, so a write never waits for a read's decode.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .background import share_gil
from .conversation import Conversation
from .json_codec import json_text, loads, safe_str
from .log_gate import LOG_INTERVAL_S, LogGate
from .spans import Span

__all__ = ["OverflowFile", "OverflowStats", "overflow_files"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^overflow-(\d+)-(\d+)\.seg$")
_HEADER = struct.Struct("<IIQ")  # ciphertext length, span count, nonce counter (bound as associated data)
_SEGMENT_BYTES = 16 * 2**20
_UNBOUNDED = 1 << 62  # rotate past this: a read segment is deleted, so disk use follows the backlog

try:  # orjson is a required dependency; the import is guarded only so the module always imports
    import orjson

    _OPTIONS = orjson.OPT_NON_STR_KEYS
    _dumps: Any = orjson.dumps
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]


def _text(value: object) -> object:
    """orjson's fallback for a value it cannot encode: the stores' JSON of it, read back, or text."""
    try:
        return loads(json_text(value, "null"))
    except Exception:
        return safe_str(value)


def _encode(spans: list[Span]) -> bytes:
    rows = [
        (
            s.span_id,
            s.trace_id,
            s.parent_span_id,
            s.operation_name,
            s.agent_name,
            s.start_ns,
            s.end_ns,
            s.status,
            s.error_type,
            s.error_message,
            s.attributes,
            s._events,
            s.sampled,
            s.llm_model,
            s.input_tokens,
            s.output_tokens,
            s.total_tokens,
            s.input_data,
            s.output_data,
            s.tracestate,
            s.baggage,
            None if s.conversation is None else list(s.conversation),  # a NamedTuple is not plain JSON
        )
        for s in spans
    ]
    try:
        return bytes(_dumps(rows, option=_OPTIONS, default=_text))
    except (TypeError, ValueError):  # an integer past 64 bits, a lone surrogate, deep nesting
        return b"[" + b",".join(_encode_one(row) for row in rows) + b"]"


def _encode_one(row: tuple[Any, ...]) -> bytes:
    try:
        return bytes(_dumps(row, option=_OPTIONS, default=_text))
    except (TypeError, ValueError):
        return json_text(list(row), "null").encode()


def _decode(data: bytes) -> list[Span]:
    spans: list[Span] = []
    for row in loads(data):
        (sid, tid, parent, op, agent, start_ns, end_ns, status, etype, emsg, attrs, events, sampled,
         model, tin, tout, ttotal, inp, out, tracestate, baggage, conversation) = row  # fmt: skip
        span = Span(sid, tid, parent, op, agent, None, status, attrs, start_ns, sampled,
                    tuple(tuple(m) for m in tracestate or ()), baggage,
                    None if conversation is None else Conversation(conversation[0], conversation[1],
                                                                   tuple(conversation[2] or ())))  # fmt: skip
        span.end_ns = end_ns
        span.error_type = etype
        span.error_message = emsg
        span._events = events
        span.llm_model = model
        span.input_tokens, span.output_tokens, span.total_tokens = tin, tout, ttotal
        span.input_data, span.output_data = inp, out
        spans.append(span)
    return spans


@dataclass
class OverflowStats:
    pending: int = 0  # spans in the file not yet taken for delivery
    spilled: int = 0  # spans written so far
    drained: int = 0  # spans read back for delivery
    dropped: int = 0  # spans not written: the disk bound was reached or the disk refused
    dropped_reason: str | None = None
    bytes_on_disk: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Segment:
    path: Path
    fd: int
    size: int = 0
    unread: int = 0  # chunks written and not read yet


class OverflowFile:
    """This process's overflow in ``directory``: :meth:`write` a chunk at the tail, :meth:`read`
    the head. ``max_bytes`` bounds the bytes on disk; past it a chunk is dropped and counted."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.stats = OverflowStats()
        self._lock = threading.Lock()
        self._chunks: deque[tuple[_Segment, int, int, int, int]] = deque()  # segment, offset, length, count, nonce
        self._head: list[Span] = []  # the chunk being handed out, decrypted
        self._segments: deque[_Segment] = deque()
        self._pid = 0  # the pid whose files and key these are: 0 until the first write
        self._aead: Any = None
        self._nonce = 0
        self._seq = 0
        self._log_gate = LogGate()
        self._broken: str | None = None
        self._broken_at = 0.0
        self.last_write = 0.0  # time.monotonic() of the latest chunk written

    @property
    def pending(self) -> int:
        return self.stats.pending

    @property
    def writable(self) -> bool:
        """False for a minute after the directory refused a file (not merely a full disk): the
        spiller then leaves the spans in the buffer rather than lose them to a write that fails."""
        return self._broken is None or time.monotonic() - self._broken_at >= LOG_INTERVAL_S

    # -- writing ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Import the cipher, make the key and remove stale files now (the spiller's start-up), so
        that the first spill of a burst does not pay for them while the buffer fills."""
        with self._lock:
            if self._pid != os.getpid():
                try:
                    self._open()
                except OSError as exc:  # spans stay in the buffer; the bounds apply as without an overflow
                    log.warning("the span overflow cannot be prepared in %s: %s", self.directory, exc)
                    self._pid = 0
                    self._broken, self._broken_at = f"overflow not writable: {exc}", time.monotonic()

    def _open(self) -> None:
        """First write in this process: a fresh key, stale files of dead processes removed."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._pid = os.getpid()
        self._aead = AESGCM(AESGCM.generate_key(bit_length=128))
        self._nonce = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale(self.directory, keep_pid=None)

    def _segment(self, need: int) -> _Segment:
        segments = self._segments
        if segments and segments[-1].size + need <= _SEGMENT_BYTES:
            return segments[-1]
        self._seq += 1
        path = self.directory / f"overflow-{self._pid}-{self._seq}.seg"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        segment = _Segment(path, fd)
        segments.append(segment)
        return segment

    def write(self, spans: list[Span]) -> int:
        """Append ``spans`` as one chunk; returns how many were written (0: dropped and counted)."""
        if not spans:
            return 0
        with self._lock:
            try:
                if self._pid != os.getpid():
                    self._open()
                if self.writable:
                    data = _encode(spans)
                    if self.stats.bytes_on_disk + len(data) + 28 + _HEADER.size > self.max_bytes:
                        return self._drop(len(spans), f"overflow disk bound reached ({self.max_bytes / 2**20:.0f} MB)")
                    self._nonce += 1
                    header = _HEADER.pack(len(data) + 16, len(spans), self._nonce)
                    sealed = self._aead.encrypt(self._nonce.to_bytes(12, "little"), data, header)
                    segment = self._segment(len(sealed) + _HEADER.size)
                    offset = segment.size
                    written = os.writev(segment.fd, (header, sealed))  # O_APPEND; one write per chunk
                    if written != len(header) + len(sealed):  # the disk filled up mid-chunk: cut the partial frame
                        os.ftruncate(segment.fd, offset)
                        raise OSError(28, "short write to the overflow file")
                    segment.size += len(sealed) + _HEADER.size
                    segment.unread += 1
                    self._chunks.append((segment, offset + _HEADER.size, len(sealed), len(spans), self._nonce))
                    self.stats.bytes_on_disk += len(sealed) + _HEADER.size
                    self.stats.spilled += len(spans)
                    self.last_write = time.monotonic()
                    self.stats.pending += len(spans)
                    return len(spans)
                return self._drop(len(spans), self._broken or "overflow not writable")
            except OSError as exc:  # disk full, a file-size limit, an unwritable directory
                self._pid = 0 if not self._segments else self._pid  # not opened: try again later
                if exc.errno not in (errno.ENOSPC, errno.EFBIG):
                    self._broken, self._broken_at = f"overflow not writable: {exc}", time.monotonic()
                return self._drop(len(spans), f"overflow write failed: {exc}")

    def _drop(self, count: int, reason: str) -> int:
        stats = self.stats
        stats.dropped += count
        stats.dropped_reason = reason
        if self._log_gate.open(force=stats.dropped == count):
            log.error("span overflow: %d span(s) dropped so far (%s)", stats.dropped, reason)
        return 0

    # -- reading ------------------------------------------------------------------------

    def read(self, limit: int = 1_000, max_bytes: int | None = None) -> list[Span]:
        """Up to ``limit`` spans from the head, oldest first (empty when nothing is pending).

        Chunks are decrypted whole, one after another until ``limit`` is reached (the rest of
        the last one waits for the next read) or, with ``max_bytes``, until that many encrypted
        bytes were read (big spans: a batch's worth of memory, not ``limit`` spans' worth), with
        the GIL offered between them (:func:`.background.share_gil`: decoding holds it); a
        segment goes once every chunk of it is read.
        """
        out: list[Span] = []
        budget = _UNBOUNDED if max_bytes is None else max_bytes
        while True:
            with self._lock:
                if self._pid != os.getpid():
                    return out
                head = self._head
                if head:
                    take = head[: limit - len(out)]
                    del head[: len(take)]
                    self.stats.pending -= len(take)
                    self.stats.drained += len(take)
                    out.extend(take)
                if len(out) >= limit or not self._chunks or budget <= 0:
                    return out
                sealed, count, header, nonce, aead = self._pop_chunk()
                budget -= len(sealed or b"")
            share_gil()
            # Decrypted and decoded outside the lock: the spiller's writes never wait for it.
            try:
                if sealed is None:
                    raise OSError("the chunk could not be read back")
                spans = _decode(aead.decrypt(nonce.to_bytes(12, "little"), sealed, header))
            except Exception as exc:  # a disk error or a damaged file: these spans are lost, counted
                with self._lock:
                    self.stats.pending -= count
                    self._drop(count, f"overflow read failed: {type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self._head = spans

    def _pop_chunk(self) -> tuple[bytes | None, int, bytes, int, Any]:
        segment, offset, length, count, nonce = self._chunks.popleft()
        try:
            sealed: bytes | None = os.pread(segment.fd, length, offset)
        except OSError:
            sealed = None
        segment.unread -= 1
        self._retire()
        return sealed, count, _HEADER.pack(length, count, nonce), nonce, self._aead

    def _retire(self) -> None:
        """Delete read segments; an empty overflow restarts its last segment from byte 0."""
        segments = self._segments
        while segments and segments[0].unread == 0 and (len(segments) > 1 or not self._chunks):
            segment = segments.popleft()
            self.stats.bytes_on_disk -= segment.size
            _close_and_remove(segment)

    def read_all(self) -> list[Span]:
        """Everything pending, in order (shutdown: kept the way queued spans are)."""
        out: list[Span] = []
        while self.pending:
            chunk = self.read(1 << 30)
            if not chunk:
                break
            out.extend(chunk)
        return out

    def close(self) -> None:
        """Forget everything pending and delete this process's files (nothing of it is readable later)."""
        with self._lock:
            if self._pid == os.getpid():
                for segment in self._segments:
                    _close_and_remove(segment)
            self._reset()

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's chunks, key and files are the parent's; close only the
        inherited descriptors (the parent's files stay open in the parent) and start afresh."""
        self._lock = threading.Lock()
        for segment in self._segments:
            with contextlib.suppress(OSError):
                os.close(segment.fd)
        self._reset()
        self.stats = OverflowStats()

    def _reset(self) -> None:
        self._chunks = deque()
        self._head = []
        self._segments = deque()
        self._pid = 0
        self._aead = None
        self._broken = None
        self.stats.pending = 0
        self.stats.bytes_on_disk = 0


def _close_and_remove(segment: _Segment) -> None:
    with contextlib.suppress(OSError):
        os.close(segment.fd)
    with contextlib.suppress(OSError):
        segment.path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def overflow_files(directory: Path) -> list[tuple[Path, int, int, bool]]:
    """``(path, pid, bytes, pid alive)`` of every overflow segment in ``directory`` (for status)."""
    out: list[tuple[Path, int, int, bool]] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return out
    for path in entries:
        match = _NAME.match(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            size = path.stat().st_size
        except OSError:
            continue
        out.append((path, pid, size, _alive(pid)))
    return sorted(out)


def remove_stale(directory: Path, keep_pid: int | None) -> int:
    """Delete segments whose process is gone (their key died with it) and, when this process
    has none open yet, an old file under its own pid (a reused pid); returns how many went."""
    removed = 0
    me = os.getpid()
    for path, pid, _, alive in overflow_files(directory):
        if pid == keep_pid or (alive and pid != me):
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d unreadable overflow file(s) left by ended processes in %s", removed, directory)
    return removed
