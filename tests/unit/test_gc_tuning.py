"""The young-generation GC threshold: raised only from CPython's default, never lowered, opt-out."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.agents.ml_foundation.observability_connector.gc_tuning import (
    CPYTHON_DEFAULT_YOUNG_THRESHOLD,
    raise_young_threshold,
)


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def test_raised_from_the_default_and_the_other_generations_kept(thresholds: None) -> None:
    gc.set_threshold(CPYTHON_DEFAULT_YOUNG_THRESHOLD, 7, 9)
    assert raise_young_threshold(10_000)
    assert gc.get_threshold() == (10_000, 7, 9)
    assert not raise_young_threshold(20_000)  # now ours, no longer the default: left as it is
    assert gc.get_threshold() == (10_000, 7, 9)


def test_an_applications_own_tuning_and_null_are_left_alone(thresholds: None) -> None:
    gc.set_threshold(1_234, 10, 10)
    assert not raise_young_threshold(10_000)
    assert gc.get_threshold() == (1_234, 10, 10)
    gc.set_threshold(CPYTHON_DEFAULT_YOUNG_THRESHOLD, 10, 10)
    assert not raise_young_threshold(None)
    assert gc.get_threshold() == (CPYTHON_DEFAULT_YOUNG_THRESHOLD, 10, 10)


def test_setting_is_validated_and_defaults_to_ten_thousand() -> None:
    assert ObservabilitySettings().batching.gc_young_threshold == 10_000
    assert ObservabilitySettings(batching={"gc_young_threshold": None}).batching.gc_young_threshold is None
    with pytest.raises(ValueError, match="gc_young_threshold"):
        ObservabilitySettings(batching={"gc_young_threshold": 50})


FREEZE_SCRIPT = """
import asyncio, gc, sys
sys.path.insert(0, {repo!r})
from src.agents.ml_foundation.observability_connector.batch_processor import BatchProcessor
from src.agents.ml_foundation.observability_connector.gc_tuning import freeze_after_start
from tests.fixtures.spans import RecordingSink, make_record

off = BatchProcessor(RecordingSink(), max_batch_size=10, max_wait_seconds=60)
off.add_span(make_record(0))
assert off.flush_sync(10) and off.close(10)
assert gc.get_freeze_count() == 0, "gc_freeze=False (the processor's default) froze objects"
on = BatchProcessor(RecordingSink(), max_batch_size=10, max_wait_seconds=60, gc_freeze=True)
on.add_span(make_record(1))
assert on.flush_sync(10) and on.close(10)
frozen = gc.get_freeze_count()
assert frozen > 1000, frozen  # the modules and objects of start-up
assert not freeze_after_start() and gc.get_freeze_count() == frozen  # once per process
print("ok")
"""


def test_gc_freeze_runs_once_after_the_first_batch_and_only_when_asked() -> None:
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_SCRIPT.format(repo=repo)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert ObservabilitySettings().batching.gc_freeze_after_start is True
