"""The span_emitter builds rows for in-process ``Span`` objects directly (no event dict, no
pydantic validation of values we produced). These tests pin that it gives exactly the rows and the
rejections of the full path (``to_event`` → ``ObservabilityEvent`` → ``to_span``), still redacted
and sampled like every other row."""

from __future__ import annotations

import time
from typing import Any

from src.agents.ml_foundation.observability_connector.nodes import emit_spans, span_emitter
from src.agents.ml_foundation.observability_connector.spans import Span

T0 = time.time_ns()


def _record(span_id: str, **changes: Any) -> Span:
    record = Span(span_id, "0" * 31 + "1", changes.pop("parent", None), "execute", "gap_analyzer", start_ns=T0)
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def _records() -> list[Span]:
    plain = _record("a1").set_attributes({"segment": "NE", "n": 3, "x": 1.5}).finish(T0 + 2_000_000)
    io = _record("a2", parent="a1").set_input({"q": "why"}).set_output({"rows": [1, 2]}).finish(T0 + 3_000_000)
    failed = _record("a3", parent="a1").record_error(ValueError("boom")).finish(T0 + 4_000_000)
    llm = _record("a4", parent="a1").set_llm("gpt-4o", 812, 95).finish(T0 + 5_000_000)
    secret = _record("a5", parent="a1").set_attribute("api_key", "sk-live-0123456789abcdef0123").finish(T0 + 1)
    evented = _record("a6", parent="a1").add_event("retry", {"attempt": 1}, T0 + 10).finish(T0 + 20)
    unfinished = _record("a7", parent="a1")  # status "started", no end
    unsampled_error = _record("a8", parent="a1", sampled=False).record_error("bad").finish(T0 + 30)
    alias = _record("b1", parent="a1").finish(T0 + 40, status="completed")  # an alias: the full path
    odd_key = _record("b2", parent="a1").set_attributes({1: "int key"}).finish(T0 + 50)  # type: ignore[dict-item]
    too_long = _record("b3", parent="a1", agent_name="x" * 65).finish(T0 + 60)  # rejected
    backwards = _record("b4", parent="a1").finish(T0 - 1_000)  # end before start: rejected
    negative = _record("b5", parent="a1", input_tokens=-1).finish(T0 + 70)  # rejected
    return [plain, io, failed, llm, secret, evented, unfinished, unsampled_error, alias, odd_key, too_long, backwards,
            negative]  # fmt: skip


class _Wrapped:
    """Not a Span, only shaped like one (it has ``to_event``): the documented input is a list of
    event dicts or our own ``Span`` records, so the emitter must reject it, never read it."""

    def __init__(self, record: Span) -> None:
        self.record = record
        self.to_event_calls = 0

    def to_event(self) -> dict[str, Any]:
        self.to_event_calls += 1
        return self.record.to_event()


class _SubclassedRecord(Span):
    """A ``Span`` subclass: only the exact class is built directly, anything derived from it must
    go through its own ``to_event`` (which may change what a record reads as)."""

    def to_event(self) -> dict[str, Any]:
        event = super().to_event()
        event["attributes"] = {**event["attributes"], "via": "to_event"}
        return event


def _subclassed(record: Span) -> _SubclassedRecord:
    copy = _SubclassedRecord(record.span_id, record.trace_id, record.parent_span_id, record.operation_name,
                             record.agent_name, start_ns=record.start_ns)  # fmt: skip
    for name in Span.__slots__:
        if hasattr(record, name):
            setattr(copy, name, getattr(record, name))
    return copy


def _counting_fast_path(monkeypatch: Any) -> list[bool]:
    """Record every call of the fast path (``_from_record``): True when it built a row."""
    built: list[bool] = []
    real = span_emitter._from_record

    def counting(record: Span, tier_of: Any, created_at: Any, pricer: Any = None) -> Any:
        span = real(record, tier_of, created_at, pricer)
        built.append(span is not None)
        return span

    monkeypatch.setattr(span_emitter, "_from_record", counting)
    return built


def _rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for span in state["validated_spans"]:
        row = dict(span.__dict__)
        row.pop("created_at")
        rows.append(row)
    return rows


async def test_records_give_the_same_rows_and_rejections_as_the_full_path(monkeypatch: Any) -> None:
    built = _counting_fast_path(monkeypatch)
    fast = await emit_spans({"events_to_log": _records()})
    full = await emit_spans({"events_to_log": [record.to_event() for record in _records()]})
    # Built directly: everything the model would accept unchanged; the alias, the non-string key
    # and the three invalid ones went the full way.
    assert built == [True] * 8 + [False] * 5
    assert _rows(fast) == _rows(full)
    assert fast["emission_errors"] == full["emission_errors"] and len(fast["emission_errors"]) == 3
    assert fast["spans_sampled_out"] == full["spans_sampled_out"]
    by_id = {span.span_id: span for span in fast["validated_spans"]}
    assert "0123456789abcdef0123" not in repr(by_id["a5"].__dict__)  # redacted: no part of the key is stored
    assert by_id["a8"].attributes["trace_sampled_out"] is True  # an error of a dropped trace, kept
    assert by_id["a2"].attributes["input"] == {"q": "why"} and by_id["a4"].total_tokens == 907


async def test_span_subclasses_take_the_full_path_through_their_own_to_event(monkeypatch: Any) -> None:
    built = _counting_fast_path(monkeypatch)
    subclassed = [_subclassed(record) for record in _records()]
    state = await emit_spans({"events_to_log": subclassed})
    assert built == []  # none of them was built directly
    # Their rows are those of their own events (the override is kept), rejections included.
    expected = await emit_spans({"events_to_log": [record.to_event() for record in subclassed]})
    assert _rows(state) == _rows(expected) and len(_rows(state)) == 10
    assert all(span.attributes["via"] == "to_event" for span in state["validated_spans"])
    assert state["emission_errors"] == expected["emission_errors"] and len(state["emission_errors"]) == 3


async def test_objects_that_only_look_like_records_are_rejected_unread(monkeypatch: Any) -> None:
    built = _counting_fast_path(monkeypatch)
    wrapped = [_Wrapped(record) for record in _records()]
    state = await emit_spans({"events_to_log": wrapped})
    assert built == [] and [w.to_event_calls for w in wrapped] == [0] * len(wrapped)
    assert state["validated_spans"] == [] and state["events_rejected"] == len(wrapped)
    assert state["emission_errors"] == [
        f"event[{i}] expected an object with span fields, got _Wrapped" for i in range(len(wrapped))
    ]


async def test_the_callers_attributes_are_not_changed() -> None:
    record = _record("c1", sampled=False).set_attributes({"k": "v"}).record_error("x").finish(T0 + 1)
    state = await emit_spans({"events_to_log": [record]})
    assert record.attributes == {"k": "v"}
    assert state["validated_spans"][0].attributes == {"k": "v", "trace_sampled_out": True}


async def test_rows_keep_the_exact_duration_that_the_span_rounds_for_its_callers() -> None:
    record = _record("d1").finish(T0 + 2_500_000)  # 2.5 ms
    assert record.duration_ms == 2  # what host callers read: whole milliseconds
    fast = await emit_spans({"events_to_log": [record]})
    full = await emit_spans({"events_to_log": [record.to_event()]})
    assert fast["validated_spans"][0].duration_ms == full["validated_spans"][0].duration_ms == 2.5
