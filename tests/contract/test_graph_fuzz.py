"""Property: whatever a caller puts in ``events_to_log``, ``graph.ainvoke`` answers and accounts
for every event.

Arbitrary JSON-like events (non-finite and huge numbers, dates from year 1 to 9999 in extreme time
zones, wrong types in every field, huge and control-character strings, deep values) go through the
compiled graph into a real SQLite store behind its spool. For every invocation:

* it never raises;
* every event is stored or rejected with a reason (``event[i] ...``) or, when its producer said
  so (``sampled: false``), sampled out: stored + rejected + sampled out = sent;
* the store gained exactly the rows the graph says it inserted, and refused none (validation
  judged every value before the store saw it);
* every rejection is dead-lettered in the spool.

Bounded (``max_examples``) to stay within a few seconds per property.
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.agents.ml_foundation.observability_connector.constants import MAX_DURATION_NS
from src.agents.ml_foundation.observability_connector.graph import graph
from src.agents.ml_foundation.observability_connector.models import (
    STATUS_ALIASES,
    ObservabilityEvent,
)
from src.agents.ml_foundation.observability_connector.nodes.record_rows import _from_record
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.agents.ml_foundation.observability_connector.spans import Span

NOW = datetime.now(UTC)
NONFINITE = [math.nan, math.inf, -math.inf]
HUGE = ["x" * (1 << 20), "é" * 200_000, "\x00" * 1_000, "a\ud800b", "span\n" * 50, " " * 100]
ZONES = [
    None,
    UTC,
    timezone(timedelta(hours=14)),
    timezone(timedelta(hours=-14)),
    timezone(timedelta(hours=5, minutes=45)),
]

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([*NONFINITE, 1e15, 1e308, 2**31, 2**63, -1, 0, 1]),
)
texts = st.one_of(st.text(max_size=70), st.sampled_from(HUGE), st.from_regex(r"[0-9a-f]{1,70}", fullmatch=True))
dates = st.datetimes(timezones=st.sampled_from(ZONES))
date_values = st.one_of(dates, dates.map(datetime.isoformat), st.sampled_from(["0001-01-01T00:00:00+14:00",
                        "9999-12-31T23:59:59-14:00", "2262-04-10T23:59:00Z", "not a date", ""]))  # fmt: skip
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, date_values)
json_like = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)
recent = st.integers(min_value=0, max_value=3_600_000).map(lambda ms: NOW - timedelta(milliseconds=ms))


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's plausible values, mixed with anything at all (so that some events get stored)."""
    return st.one_of(valid, valid, json_like)


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "span_id": mostly(st.from_regex(r"[0-9a-f]{16}", fullmatch=True)),
    "trace_id": mostly(st.sampled_from(["trace_456", "0" * 31 + "1", "t"])),
    "parent_span_id": mostly(st.sampled_from([None, "", "span_0"])),
    "agent_name": mostly(st.sampled_from(["gap_analyzer", "explainer", "some new agent", " padded "])),
    "operation": mostly(st.sampled_from(["execute", "llm.gpt-4o"])),
    "event_type": json_like,
    "started_at": mostly(st.one_of(recent, recent.map(datetime.isoformat))),
    "timestamp": date_values,
    "completed_at": st.one_of(date_values, recent),
    "duration_ms": mostly(st.floats(min_value=0, max_value=1e6)),
    "status": mostly(st.sampled_from(sorted(STATUS_ALIASES))),
    "error": mostly(texts),
    "error_type": mostly(st.sampled_from(["ValueError", "Timeout"])),
    "input_data": json_like,
    "output_data": json_like,
    "metadata": mostly(st.dictionaries(st.text(max_size=12), json_like, max_size=3)),
    "tokens_used": mostly(st.integers(min_value=0, max_value=10**6)),
    "input_tokens": mostly(st.integers(min_value=0, max_value=10**6)),
    "output_tokens": mostly(st.integers(min_value=0, max_value=10**6)),
    "model_used": mostly(st.sampled_from(["gpt-4o", "claude-sonnet-4"])),
    "confidence": mostly(st.floats(min_value=0, max_value=1)),
    "attributes": mostly(st.dictionaries(st.text(max_size=12), json_like, max_size=4)),
    "events": mostly(st.lists(st.fixed_dictionaries({"name": st.text(max_size=10)}), max_size=2)),
    "agent_tier": mostly(st.integers(min_value=-1, max_value=5)),
    "sampled": mostly(st.booleans()),
}
events = st.fixed_dictionaries({}, optional=FIELDS)
event_lists = st.lists(st.one_of(events, events, events, json_like), max_size=12)

FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


class Harness:
    """One store, spool and event loop for all the examples of a property."""

    def __init__(self, root: Path) -> None:
        self.db = root / "spans.db"
        self.spool_path = root / "spool.db"
        settings_ = ObservabilitySettings(
            store={"sqlite_path": str(self.db)}, batching={"spool_path": str(self.spool_path)}
        )
        self.context = ConnectorContext.from_config(settings_)
        self.loop = asyncio.new_event_loop()
        self.examples = 0
        self.stored = 0
        self.rejected = 0

    def count(self, sql: str, path: Path) -> int:
        if not path.exists():
            return 0
        with sqlite3.connect(path) as db:
            try:
                return int(db.execute(sql).fetchone()[0])
            except sqlite3.OperationalError:  # the table is created with the first write
                return 0

    def rows(self) -> int:
        return self.count("SELECT COUNT(*) FROM ml_observability_spans", self.db)

    def dead(self) -> int:
        return self.count("SELECT COUNT(*) FROM dead_letters", self.spool_path)

    def invoke(self, sent: list[Any], *, metrics: bool) -> dict[str, Any]:
        """Run the graph and check the accounting every invocation must satisfy."""
        rows_before, dead_before = self.rows(), self.dead()
        payload = {"events_to_log": sent, "skip_metrics": not metrics}
        state = self.loop.run_until_complete(graph.ainvoke(payload, context=self.context))  # never raises

        logged, rejected, sampled_out = state["events_logged"], state["events_rejected"], state["spans_sampled_out"]
        assert logged + rejected + sampled_out == len(sent), state["emission_errors"]
        assert logged == len(state["span_ids_logged"])
        # Every rejection has its reason, naming the event by its position; each event at most once.
        reasons = [r for r in state["emission_errors"] if re.match(r"event\[\d+\] \S", r)]
        assert len(reasons) == rejected, state["emission_errors"]
        positions = [int(r[6 : r.index("]")]) for r in reasons]
        assert len(set(positions)) == len(positions) and all(0 <= p < len(sent) for p in positions)
        # The store refused nothing (validation judged every value) and gained what the graph says.
        assert state["db_writes_successful"] is True and "error" not in state, state.get("error")
        assert self.rows() - rows_before == state["db_write_count"] - state["db_duplicate_count"]
        assert self.dead() - dead_before == rejected
        if metrics:
            assert state["quality_metrics_computed"] is True
        self.examples += 1
        self.stored += logged
        self.rejected += rejected
        return state

    def close(self) -> None:
        self.loop.run_until_complete(self.context.store.close())
        self.loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def test_any_json_like_events_are_stored_or_rejected_with_a_reason(harness: Harness) -> None:
    @FUZZ
    @given(sent=event_lists, metrics=st.booleans())
    def check(sent: list[Any], metrics: bool) -> None:
        harness.invoke(sent, metrics=metrics)

    check()
    # The property was exercised on both sides: events were stored and events were rejected.
    assert harness.examples >= 60 and harness.stored > 0 and harness.rejected > 0


# -- in-process Span objects: the agents' fast path, with fields set to anything --------------------

T0 = int((NOW - timedelta(minutes=10)).timestamp() * 1e9)
ns_values = st.one_of(
    st.integers(min_value=T0, max_value=T0 + 10**12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([T0 + 10**21, -1, 0, 2**63, *NONFINITE, 1.5]),
)
RECORD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "span_id": mostly(st.from_regex(r"[0-9a-f]{16}", fullmatch=True)),
    "trace_id": mostly(st.just("0" * 31 + "5")),
    "parent_span_id": mostly(st.sampled_from([None, "", "00000000000000aa"])),
    "agent_name": mostly(st.sampled_from(["gap_analyzer", "orchestrator"])),
    "operation_name": mostly(st.just("execute")),
    "start_ns": mostly(st.just(T0)),
    "end_ns": st.one_of(st.none(), ns_values),
    "status": mostly(st.sampled_from(["ok", "error", "started", "completed"])),
    "error_type": json_like,
    "error_message": json_like,
    "llm_model": json_like,
    "input_tokens": st.one_of(st.none(), numbers, texts),
    "output_tokens": st.one_of(st.none(), numbers),
    "total_tokens": st.one_of(st.none(), numbers),
    "attributes": mostly(st.dictionaries(st.text(max_size=12), json_like, max_size=4)),
    "input_data": json_like,
    "sampled": mostly(st.just(True)),
}


@st.composite
def records(draw: st.DrawFn) -> Span:
    span = Span("0000000000000001", "0" * 31 + "5", None, "execute", "gap_analyzer", start_ns=T0)
    span.finish(T0 + 1_000_000)
    for name, strategy in RECORD_FIELDS.items():
        if draw(st.booleans()):
            setattr(span, name, draw(strategy))
    return span


def test_any_field_of_an_in_process_span_is_stored_or_rejected_with_a_reason(harness: Harness) -> None:
    @FUZZ
    @given(sent=st.lists(records(), max_size=10))
    def check(sent: list[Span]) -> None:
        harness.invoke(sent, metrics=False)

    check()
    assert harness.examples >= 60 and harness.stored > 0 and harness.rejected > 0


valid_ids = st.from_regex(r"[!-~]{1,64}", fullmatch=True)
ids = st.one_of(valid_ids, valid_ids, valid_ids, st.text(max_size=70))
valid_names = st.text(st.characters(exclude_categories=("C", "Z")), min_size=1, max_size=64)
names = st.one_of(valid_names, valid_names, valid_names, st.text(max_size=70))


def test_the_fast_path_accepts_only_what_the_model_accepts_unchanged() -> None:
    """``_from_record`` builds rows without pydantic: whatever it accepts, the full path
    (``to_event`` → ``ObservabilityEvent`` → ``to_span``) accepts too and turns into the same row."""
    built = []

    @settings(FUZZ, max_examples=400)  # cheap: no graph, no store
    @given(
        span_id=ids,
        trace_id=ids,
        agent_name=names,
        operation=names,
        model=st.one_of(st.none(), names, st.text(max_size=300)),
        input_tokens=st.one_of(st.none(), st.integers(min_value=-5, max_value=2**32)),
        end_offset=st.one_of(st.integers(0, 10**12), st.integers(min_value=-10, max_value=2 * MAX_DURATION_NS)),
    )
    def check(
        span_id: str, trace_id: str, agent_name: str, operation: str, model: str | None, input_tokens: int | None,
        end_offset: int,
    ) -> None:  # fmt: skip
        span = Span(span_id, trace_id, None, operation, agent_name, start_ns=T0)
        span.llm_model = model
        span.input_tokens = input_tokens
        span.finish(T0 + end_offset)
        created = datetime.now(UTC)
        fast = _from_record(span, lambda name: 3, created)
        if fast is None:
            return
        full = ObservabilityEvent.model_validate(span.to_event()).to_span(3, created_at=created)
        assert fast.__dict__ == full.__dict__
        built.append(fast)

    check()
    assert len(built) >= 10  # the property was tested on rows the fast path built
