"""Opik ids (UUIDv7, deterministic, parent-computable) and the circuit breaker's state machine."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from src.agents.ml_foundation.observability_connector.models import row_id_for
from src.agents.ml_foundation.observability_connector.trace_context import new_span_id, new_trace_id
from src.mlops import CircuitBreaker, CircuitState, opik_span_id, opik_trace_id
from src.mlops.opik_ids import is_uuid7, uuid7_timestamp_ms

ids = st.text(min_size=1, max_size=64).filter(lambda s: s.strip())


def _valid_v7(value: str) -> bool:
    parsed = uuid.UUID(value)
    return parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


def test_our_trace_ids_are_used_as_they_are() -> None:
    trace_id = new_trace_id()
    mapped = opik_trace_id(trace_id)
    assert _valid_v7(mapped)
    assert mapped.replace("-", "") == trace_id
    assert opik_trace_id(mapped) == mapped  # already an Opik id: unchanged


def test_our_trace_id_timestamp_is_the_trace_start() -> None:
    before = time.time_ns() // 1_000_000
    mapped = opik_trace_id(new_trace_id())
    after = time.time_ns() // 1_000_000
    assert before <= uuid7_timestamp_ms(mapped) <= after


@given(ids)
def test_foreign_trace_ids_map_to_valid_past_uuid7(trace_id: str) -> None:
    mapped = opik_trace_id(trace_id)
    assert _valid_v7(mapped)
    assert opik_trace_id(trace_id) == mapped
    assert uuid7_timestamp_ms(mapped) < time.time_ns() // 1_000_000  # never in the future


@given(ids, ids)
def test_span_ids_are_valid_deterministic_and_share_the_trace_timestamp(trace_id: str, span_id: str) -> None:
    mapped = opik_span_id(trace_id, span_id)
    assert _valid_v7(mapped)
    assert mapped == opik_span_id(trace_id, span_id)
    assert uuid7_timestamp_ms(mapped) == uuid7_timestamp_ms(opik_trace_id(trace_id))


def test_span_ids_differ_per_trace_and_span() -> None:
    trace_a, trace_b = new_trace_id(), new_trace_id()
    spans = [new_span_id() for _ in range(2000)]
    mapped = {opik_span_id(trace_a, s) for s in spans} | {opik_span_id(trace_b, s) for s in spans}
    assert len(mapped) == 4000
    assert opik_trace_id("trace_456") != opik_trace_id("trace_457")


def test_mapping_is_the_same_in_another_process() -> None:
    code = (
        "from src.mlops.opik_ids import opik_span_id, opik_trace_id;"
        "print(opik_trace_id('trace_456'), opik_span_id('trace_456', 'span_123'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [opik_trace_id("trace_456"), opik_span_id("trace_456", "span_123")]


def test_is_uuid7() -> None:
    assert is_uuid7(opik_trace_id("x"))
    assert not is_uuid7(str(uuid.uuid4()))
    assert not is_uuid7("trace_456")


# --------------------------------------------------------------------------- breaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(5, 30.0, clock=clock)
    for _ in range(4):
        assert breaker.allow_request()
        breaker.record_failure("HTTP 500")
    assert breaker.state is CircuitState.CLOSED
    breaker.record_success()  # a success in between resets the count
    for _ in range(4):
        breaker.record_failure("HTTP 500")
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure("HTTP 500")
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow_request()
    assert breaker.seconds_until_probe() == pytest.approx(30.0)
    assert breaker.get_status()["times_opened"] == 1


def test_breaker_half_opens_after_timeout_and_allows_one_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 30.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 29.9
    assert breaker.state is CircuitState.OPEN
    clock.now += 0.2
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.allow_request()  # the probe
    assert not breaker.allow_request()  # only one at a time
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow_request()


def test_failed_probe_reopens_for_a_full_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    breaker.record_failure()
    clock.now += 10.0
    assert breaker.allow_request()
    breaker.record_failure("still down")
    assert breaker.state is CircuitState.OPEN
    assert breaker.seconds_until_probe() == pytest.approx(10.0)
    assert breaker.get_status()["last_failure"] == "still down"
    assert breaker.get_status()["times_opened"] == 2


def test_breaker_rejects_bad_settings_and_resets() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, -1)
    breaker = CircuitBreaker(1)
    breaker.record_failure()
    breaker.reset()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.get_status()["failures"] == 0


def test_ids_never_change_between_versions() -> None:
    """Spans already in Opik or the store keep their ids when this code is sped up or reordered.

    The values were produced by the first implementation (one keyed BLAKE2b per id, laid out bit
    by bit); a resend after an upgrade must land on the same ids, not duplicate the spans.
    """
    native = "0193a1b2c3d47e8f9a0b1c2d3e4f5a6b"
    assert opik_span_id(native, "a1b2c3d4e5f60718") == "0193a1b2-c3d4-7504-ac61-13726d81cdef"
    assert opik_trace_id("trace_456") == "0071f5aa-fbcf-723e-be94-4f2fc7936615"
    assert opik_span_id("trace_456", "span_123") == "0071f5aa-fbcf-7051-a950-e51b8b9ccbfe"
    assert row_id_for(native, "a1b2c3d4e5f60718") == "583a3d0a-7045-8dc1-8532-be929a506f67"
