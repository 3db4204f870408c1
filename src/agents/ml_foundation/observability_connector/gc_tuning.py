"""The interpreter's young-generation GC threshold, raised once so batches die young.

Why: the background path holds a batch (up to 1,000 spans: rows, Opik bodies) across many
allocations. With CPython's default threshold of 700 tracked allocations, every such batch
outlives two young collections and is promoted to the oldest generation, and each promotion
brings the next full collection closer: under a burst, full collections (each scanning every
object of the process) become a large share of its time. With a threshold of 10,000 the batch
is freed before a young collection sees it (the figures, with the command: benchmarks/README.md).
CPython itself moved this way (3.13 raised the default to 2,000).

It is a process-wide setting, so it is only changed while it still has CPython's default: an
application that tuned its collector keeps its own numbers. ``batching.gc_young_threshold: null``
leaves the collector alone.

The second setting, ``batching.gc_freeze_after_start`` (default true), calls ``gc.freeze()``
once per process, after the flusher delivered its first batch (by then the graph, the sinks and
their libraries are imported). Why: a full collection scans every tracked object of the process,
and a process that imported LangGraph, pydantic and a database driver holds hundreds of
thousands of them; under a burst full collections come more often, and each one stops every
thread, the application's event loop included, for tens of milliseconds. Frozen objects are not
scanned any more, so a full collection only walks what was allocated since. The cost: cyclic
garbage that already exists at that moment is never freed (a one-time, bounded amount), which is
why it is a setting; ``false`` leaves the collector alone. Nothing here calls ``gc.unfreeze()``:
an application that froze its own objects keeps them frozen.
"""

from __future__ import annotations

import gc
import logging
import threading

__all__ = ["CPYTHON_DEFAULT_YOUNG_THRESHOLD", "freeze_after_start", "raise_young_threshold"]

log = logging.getLogger(__name__)

CPYTHON_DEFAULT_YOUNG_THRESHOLD = 700
_lock = threading.Lock()
_frozen = False


def raise_young_threshold(threshold: int | None) -> bool:
    """Raise generation 0's threshold to ``threshold`` if it still has CPython's default; True if changed."""
    if threshold is None:
        return False
    with _lock:
        young, middle, old = gc.get_threshold()
        if young != CPYTHON_DEFAULT_YOUNG_THRESHOLD or threshold <= young:
            return False
        gc.set_threshold(threshold, middle, old)
    log.info(
        "garbage collector: young-generation threshold %d -> %d (batching.gc_young_threshold; null keeps the default)",
        young,
        threshold,
    )
    return True


def freeze_after_start() -> bool:
    """``gc.freeze()`` once per process (a forked child inherits the frozen set); True if it ran now."""
    global _frozen
    with _lock:
        if _frozen:
            return False
        _frozen = True
        gc.freeze()
    log.info(
        "garbage collector: %d start-up objects frozen (batching.gc_freeze_after_start; false leaves them)",
        gc.get_freeze_count(),
    )
    return True
