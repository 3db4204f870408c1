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
