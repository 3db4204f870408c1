"""The Redis backend's near-cache: this process's copy of Redis answers, kept only while a
pub/sub subscription proves that no invalidation was missed.

**Near-cache (Redis backend).** A Redis hit is a round trip plus a decode; a dashboard asking again
and again should not pay it. Each process therefore keeps the Redis answers it has
seen in a small local cache (:class:`NearCache`, one per process per Redis URL and key prefix,
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

The subscriber is a plain daemon thread with redis-py's synchronous client, not the
background-loop helper: it spends its life blocked in ``get_message`` on one socket, and an
event loop would add nothing but a second way of waiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

from cachetools import TLRUCache

from .lifecycle import register_after_fork
from .settings import CacheSettings

__all__ = ["NearCache", "near_acquire", "near_existing", "near_release"]

log = logging.getLogger(__name__)

#: Heartbeat on the pub/sub connection after this much silence; no answer within it = doubt.
_HEARTBEAT_S = 2.0
#: How long the subscriber blocks per read (also how soon it notices it should stop).
_POLL_S = 0.25


class NearCache:
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
_NEAR: dict[tuple[int, str, str], NearCache] = {}


def _near_after_fork_in_child() -> None:
    # Entries are keyed by pid, so the parent's are never found here; only the lock is replaced.
    global _NEAR_LOCK
    _NEAR_LOCK = threading.Lock()


register_after_fork(_near_after_fork_in_child)


def near_acquire(url: str, channel: str, settings: CacheSettings) -> NearCache:
    key = (os.getpid(), url, channel)  # after a fork the parent's subscriber thread is not ours
    with _NEAR_LOCK:
        near = _NEAR.get(key)
        if near is None:
            near = NearCache(url, channel, settings.max_entries, settings.redis_timeout_s, settings.redis_retry_s)
            _NEAR[key] = near
        near.refs += 1
        near.start()
        return near


def near_release(near: NearCache) -> None:
    with _NEAR_LOCK:
        near.refs -= 1
        if near.refs > 0:
            return
        _NEAR.pop((near._pid, near.url, near.channel), None)
    near.stop()


def near_existing(url: str, channel: str) -> NearCache | None:
    with _NEAR_LOCK:
        return _NEAR.get((os.getpid(), url, channel))
