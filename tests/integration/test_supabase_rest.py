"""The Supabase REST backend, checked at the HTTP level.

No PostgREST server can be installed or reached here, so these tests intercept the backend's
HTTP with ``respx`` and assert the exact requests it sends — paths, query filters, ``Prefer``
headers, ``apikey``/``Authorization``, JSON bodies — and how it reads PostgREST's answers:
``Content-Range`` counts, error bodies mapped to typed errors, retries by our own layer (the
client's are off), bisection around bad rows. The answers mimic what PostgREST sends; the
semantics of the real database are covered by the last tests, which run the same backend through
the PostgREST emulator (``tests/fixtures/supabase_store.py``) against a real Postgres, and by
the cross-backend contract suite.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import respx

from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.repositories.base import (
    StoreAuthError,
    StoreConflictError,
    StorePermissionError,
    StoreRequestError,
    StoreSchemaError,
    StoreUnavailableError,
)
from src.repositories.supabase import COLUMNS, TABLE, SupabaseSpanRepository
from tests.fixtures import span_rows

#: Loopback on purpose: respx answers every request, and anything that slipped past it would
#: stay on this machine.
URL = "http://127.0.0.1:54321"
REST = f"{URL}/rest/v1"
KEY = "test-service-role-key-0123456789"
PREFER_UPSERT = {"return=minimal", "count=exact", "resolution=ignore-duplicates", "missing=default"}

#: Fixed times: the tests compare the rows' serialised form to exact text.
START = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
CREATED = datetime(2026, 11, 26, 10, 0, 1, tzinfo=UTC)


def make_span(**fields: Any) -> ObservabilitySpan:
    """The shared row at fixed times with every optional column null (no duration either)."""
    return span_rows.make_span(**{"start_time": START, "created_at": CREATED, "duration_ms": None, **fields})


def full_span() -> ObservabilitySpan:
    """Every column set, with values that are easy to serialise wrongly."""
    return make_span(
        span_id="00f067aa0ba902b7",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        parent_span_id="b7ad6b7169203331",
        operation_name="llm_call",
        agent_name="causal_impact",
        agent_tier=2,
        # +02:00 on input: the row must carry the same instant in UTC.
        start_time=datetime(2026, 11, 26, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
        end_time=datetime(2026, 11, 26, 10, 0, 0, 817505, tzinfo=UTC),
        duration_ms=812.5,
        status="error",
        error_type="TimeoutError",
        error_message='upstream "model" timed out — ünïcödé',
        attributes={"segment": "NE", "nested": {"list": [1, 2.5, None, True]}, "fallback_used": True},
        llm_model="claude-sonnet-4",
        input_tokens=812,
        output_tokens=95,
        total_tokens=907,
        events=[{"name": "retry", "attempt": 2}],
        thread_id="thread ünï 1",
        user_id="user-7",
        tags=["beta", "eu-west"],
        ttft_ms=42.25,
    )


def expected_row(span: ObservabilitySpan) -> dict[str, Any]:
    return {
        "id": span.id,
        "span_id": span.span_id,
        "trace_id": span.trace_id,
        "parent_span_id": span.parent_span_id,
        "operation_name": span.operation_name,
        "agent_name": span.agent_name,
        "agent_tier": span.agent_tier,
        "start_time": span.start_time.astimezone(UTC).isoformat(timespec="microseconds"),
        "end_time": None if span.end_time is None else span.end_time.astimezone(UTC).isoformat(timespec="microseconds"),
        "duration_ms": span.duration_ms,
        "status": span.status,
        "error_type": span.error_type,
        "error_message": span.error_message,
        "attributes": span.attributes,
        "llm_model": span.llm_model,
        "input_tokens": span.input_tokens,
        "output_tokens": span.output_tokens,
        "total_tokens": span.total_tokens,
        "events": span.events,
        "created_at": span.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "cost_usd": span.cost_usd,
        "thread_id": span.thread_id,
        "user_id": span.user_id,
        "tags": span.tags or None,
        "ttft_ms": span.ttft_ms,
    }


def prefer(request: httpx.Request) -> set[str]:
    return {t.strip() for t in request.headers.get("prefer", "").split(",") if t.strip()}


def pgrst_error(status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    """An error answer shaped like PostgREST's."""
    return httpx.Response(
        status,
        json={"code": code, "message": message, "details": extra.get("details"), "hint": extra.get("hint")},
        headers={"Proxy-Status": f"PostgREST; error={code}"},
    )


def inserted(n: int) -> httpx.Response:
    """PostgREST's answer to an upsert with return=minimal and count=exact."""
    return httpx.Response(201, headers={"Content-Range": f"*/{n}"})


def rows_of(request: httpx.Request) -> list[dict[str, Any]]:
    body = json.loads(request.content)
    assert isinstance(body, list)
    return body


def assert_near_now_minus(text: str, delta: timedelta, slack_s: float = 10.0) -> None:
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - delta - value).total_seconds()) < slack_s


@pytest.fixture
async def repo() -> AsyncIterator[SupabaseSpanRepository]:
    store = SupabaseSpanRepository(URL, KEY, max_attempts=3, retry_base_s=0, retry_max_s=0)
    yield store
    await store.close()


@pytest.fixture
def api() -> Any:
    with respx.mock(base_url=REST, assert_all_called=False) as mock:
        yield mock


# --------------------------------------------------------------------------- writes


async def test_upsert_sends_exact_request(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post(f"/{TABLE}").mock(return_value=inserted(2))
    spans = [full_span(), make_span()]  # the second leaves every optional column null

    result = await repo.insert_spans_batch(spans)

    assert (result.inserted, result.duplicates, result.failed) == (2, 0, 0)
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == f"/rest/v1/{TABLE}"
    assert request.url.params["on_conflict"] == "trace_id,span_id"
    # postgrest-py names the target columns (a set, in no fixed order), quoted.
    assert {c.strip('"') for c in request.url.params["columns"].split(",")} == set(COLUMNS)
    # default_to_null=False is what adds missing=default (postgrest-py pre_upsert).
    assert prefer(request) == PREFER_UPSERT
    assert request.headers["apikey"] == KEY
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-profile"] == "public"
    assert rows_of(request) == [expected_row(s) for s in spans]


async def test_every_column_serialised_as_postgres_expects(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post(f"/{TABLE}").mock(return_value=inserted(1))
    await repo.insert_spans_batch([full_span()])
    row = rows_of(route.calls.last.request)[0]
    assert list(row) == list(COLUMNS)  # every column, explicit nulls included
    assert row["start_time"] == "2026-11-26T10:00:00.000005+00:00"  # converted from +02:00
    assert row["end_time"] == "2026-11-26T10:00:00.817505+00:00"
    assert row["created_at"] == "2026-11-26T10:00:01.000000+00:00"
    assert row["duration_ms"] == 812.5
    assert row["attributes"] == {"segment": "NE", "nested": {"list": [1, 2.5, None, True]}, "fallback_used": True}
    assert row["events"] == [{"name": "retry", "attempt": 2}]
    assert row["error_message"] == 'upstream "model" timed out — ünïcödé'
    assert isinstance(row["agent_tier"], int) and isinstance(row["input_tokens"], int)


async def test_odd_attribute_values_become_plain_json(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post(f"/{TABLE}").mock(return_value=inserted(1))
    span = make_span(attributes={"nan": math.nan, "when": datetime(2026, 1, 1, tzinfo=UTC), "tags": {"a"}})
    result = await repo.insert_spans_batch([span])
    assert result.inserted == 1
    attributes = rows_of(route.calls.last.request)[0]["attributes"]
    assert attributes == {"nan": "nan", "when": "2026-01-01T00:00:00+00:00", "tags": ["a"]}


async def test_nul_characters_are_replaced_not_sent(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post(f"/{TABLE}").mock(return_value=inserted(1))
    span = make_span(error_message="a\x00b", attributes={"k\x00": ["v\x00"]}, events=[{"e": "\x00"}])
    assert (await repo.insert_spans_batch([span])).inserted == 1
    row = rows_of(route.calls.last.request)[0]
    assert row["error_message"] == "a\ufffdb"
    assert row["attributes"] == {"k\ufffd": ["v\ufffd"]} and row["events"] == [{"e": "\ufffd"}]
    assert b"\\u0000" not in route.calls.last.request.content


async def test_duplicates_are_counted_from_content_range(repo: SupabaseSpanRepository, api: Any) -> None:
    api.post(f"/{TABLE}").mock(return_value=inserted(1))
    result = await repo.insert_spans_batch([make_span(), make_span(), make_span()])
    assert (result.inserted, result.duplicates, result.failed, result.errors) == (1, 2, 0, [])


async def test_insert_span_single(repo: SupabaseSpanRepository, api: Any) -> None:
    api.post(f"/{TABLE}").mock(side_effect=[inserted(1), inserted(0)])
    span = make_span()
    assert await repo.insert_span(span) is True
    assert await repo.insert_span(span) is False


async def test_missing_count_is_not_fatal(
    repo: SupabaseSpanRepository, api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api.post(f"/{TABLE}").mock(return_value=httpx.Response(201))
    with caplog.at_level(logging.WARNING, logger="src.repositories.supabase"):
        result = await repo.insert_spans_batch([make_span(), make_span()])
    assert (result.inserted, result.duplicates) == (2, 0)
    assert "without a row count" in caplog.text


async def test_large_batches_are_split_into_requests(api: Any) -> None:
    route = api.post(f"/{TABLE}").mock(side_effect=lambda request: inserted(len(rows_of(request))))
    store = SupabaseSpanRepository(URL, KEY, max_rows_per_request=4)
    try:
        result = await store.insert_spans_batch([make_span() for _ in range(10)])
    finally:
        await store.close()
    assert result.inserted == 10
    assert [len(rows_of(call.request)) for call in route.calls] == [4, 4, 2]


async def test_empty_batch_sends_nothing(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post(f"/{TABLE}")
    result = await repo.insert_spans_batch([])
    assert (result.inserted, result.failed) == (0, 0)
    assert route.call_count == 0


# --------------------------------------------------------------------------- bad rows


def _reject_rows(bad: set[str], status: int = 400, code: str = "22P02") -> Callable[[httpx.Request], httpx.Response]:
    """PostgREST's behaviour: one transaction per request, so any bad row fails all of it."""

    def answer(request: httpx.Request) -> httpx.Response:
        rows = rows_of(request)
        culprit = next((r["span_id"] for r in rows if r["span_id"] in bad), None)
        if culprit is not None:
            return pgrst_error(status, code, f'invalid input for span "{culprit}"', details="row rejected")
        return inserted(len(rows))

    return answer


async def test_bad_rows_are_isolated_by_bisection(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post(f"/{TABLE}").mock(side_effect=_reject_rows({"bad-a", "bad-b"}))
    spans = [make_span() for _ in range(14)]
    spans.insert(3, make_span(span_id="bad-a"))
    spans.insert(11, make_span(span_id="bad-b"))

    result = await repo.insert_spans_batch(spans)

    assert (result.inserted, result.duplicates, result.failed) == (14, 0, 2)
    assert sorted(sid for sid, _ in result.errors) == ["bad-a", "bad-b"]
    for _, reason in result.errors:
        assert "request rejected (400)" in reason and "22P02" in reason and "row rejected" in reason
    stored = [r["span_id"] for call in route.calls for r in rows_of(call.request) if call.response.status_code == 201]
    assert sorted(stored) == sorted(s.span_id for s in spans if not s.span_id.startswith("bad"))
    assert route.call_count <= 1 + 2 * 2 * math.ceil(math.log2(16))  # about 2·k·log2(n), not n


async def test_conflict_on_a_row_is_reported_not_raised(repo: SupabaseSpanRepository, api: Any) -> None:
    api.post(f"/{TABLE}").mock(side_effect=_reject_rows({"clash"}, status=409, code="23505"))
    result = await repo.insert_spans_batch([make_span(), make_span(span_id="clash")])
    assert (result.inserted, result.failed) == (1, 1)
    assert result.errors[0][0] == "clash" and "conflict with stored data (409)" in result.errors[0][1]


async def test_insert_span_raises_with_the_reason(repo: SupabaseSpanRepository, api: Any) -> None:
    api.post(f"/{TABLE}").mock(return_value=pgrst_error(400, "23514", "violates check constraint"))
    with pytest.raises(ValueError, match="violates check constraint"):
        await repo.insert_span(make_span())


async def test_request_level_400_is_raised_without_bisecting(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post(f"/{TABLE}").mock(
        return_value=pgrst_error(400, "PGRST204", "Could not find the 'llm_model' column of 'ml_observability_spans'")
    )
    with pytest.raises(StoreSchemaError, match=r"mlops_tables\.sql"):
        await repo.insert_spans_batch([make_span() for _ in range(8)])
    assert route.call_count == 1


async def test_unsendable_row_is_dead_lettered_before_any_request(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post(f"/{TABLE}").mock(side_effect=lambda request: inserted(len(rows_of(request))))
    broken = make_span().model_copy(update={"duration_ms": math.inf})
    surrogate = make_span(error_message="half a pair: \ud800")
    good = make_span()
    result = await repo.insert_spans_batch([broken, good, surrogate])
    assert (result.inserted, result.failed) == (1, 2)
    assert {sid for sid, _ in result.errors} == {broken.span_id, surrogate.span_id}
    assert "finite" in dict(result.errors)[broken.span_id]
    assert [r["span_id"] for r in rows_of(route.calls.last.request)] == [good.span_id]


async def test_payload_too_large_splits_the_batch(repo: SupabaseSpanRepository, api: Any) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        rows = rows_of(request)
        if len(rows) > 2:
            return httpx.Response(413, text="<html>Request Entity Too Large</html>")
        return inserted(len(rows))

    api.post(f"/{TABLE}").mock(side_effect=answer)
    result = await repo.insert_spans_batch([make_span() for _ in range(7)])
    assert (result.inserted, result.failed) == (7, 0)


# --------------------------------------------------------------------------- reads


async def test_time_window_read_sends_exact_filters(repo: SupabaseSpanRepository, api: Any) -> None:
    spans = [full_span(), make_span()]
    route = api.get(f"/{TABLE}").mock(
        return_value=httpx.Response(200, json=[expected_row(s) for s in spans], headers={"Content-Range": "0-1/*"})
    )

    got = await repo.get_spans_by_time_window("1h", agent_name="causal_impact", trace_id="trace-1", limit=50)

    assert got == spans  # every column round-trips, timestamps timezone-aware
    assert all(s.start_time.tzinfo is not None for s in got)
    request = route.calls.last.request
    params = request.url.params
    assert params["select"] == ",".join(COLUMNS)
    since = params["start_time"]
    assert since.startswith("gte.")
    assert_near_now_minus(since.removeprefix("gte."), timedelta(hours=1))
    assert params["agent_name"] == "eq.causal_impact"
    assert params["trace_id"] == "eq.trace-1"
    # start_time first; the unique id makes the order total so pages never overlap.
    assert params["order"] == "start_time.asc,id.asc"
    assert params["limit"] == "50"
    assert "offset" not in params
    assert request.headers["apikey"] == KEY and request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept-profile"] == "public"


async def test_reads_paginate_past_max_rows(api: Any) -> None:
    rows = [
        expected_row(make_span(trace_id="t-1", start_time=datetime(2026, 1, 1, 0, i, tzinfo=UTC))) for i in range(5)
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", "0"))
        limit = int(request.url.params["limit"])
        return httpx.Response(200, json=rows[offset : offset + limit])

    route = api.get(f"/{TABLE}").mock(side_effect=answer)
    store = SupabaseSpanRepository(URL, KEY, page_size=2)
    try:
        got = await store.get_spans_by_trace_id("t-1")
        limited = await store.get_spans_by_time_window("7d", limit=3)
    finally:
        await store.close()
    assert [s.span_id for s in got] == [r["span_id"] for r in rows]
    by_trace = [call.request.url.params for call in route.calls[:3]]
    assert [p.get("offset") for p in by_trace] == [None, "2", "4"]
    assert all(p["trace_id"] == "eq.t-1" and "start_time" not in p for p in by_trace)
    assert all(p["order"] == "start_time.asc,id.asc" and p["limit"] == "2" for p in by_trace)
    assert len(limited) == 3
    assert [(c.request.url.params["limit"], c.request.url.params.get("offset")) for c in route.calls[3:]] == [
        ("2", None),
        ("1", "2"),
    ]


async def test_spans_by_agent_sends_exact_filters_newest_first(api: Any) -> None:
    rows = [
        expected_row(make_span(agent_name="explainer", start_time=datetime(2026, 1, 1, 0, 9 - i, tzinfo=UTC)))
        for i in range(5)
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", "0"))
        return httpx.Response(200, json=rows[offset : offset + int(request.url.params["limit"])])

    route = api.get(f"/{TABLE}").mock(side_effect=answer)
    store = SupabaseSpanRepository(URL, KEY, page_size=2)
    try:
        got = await store.get_spans_by_agent("explainer", hours=6, limit=3)
    finally:
        await store.close()

    assert [s.span_id for s in got] == [r["span_id"] for r in rows[:3]]
    pages = [call.request.url.params for call in route.calls]
    assert [(p["limit"], p.get("offset")) for p in pages] == [("2", None), ("1", "2")]
    for params in pages:
        assert params["select"] == ",".join(COLUMNS)
        assert params["agent_name"] == "eq.explainer"
        since = params["start_time"]
        assert since.startswith("gte.")
        assert_near_now_minus(since.removeprefix("gte."), timedelta(hours=6))
        # Newest first; the unique id keeps equal start times in one order across pages.
        assert params["order"] == "start_time.desc,id.desc"
        assert "trace_id" not in params


async def test_spans_by_agent_arguments_are_validated_before_any_request(
    repo: SupabaseSpanRepository, api: Any
) -> None:
    route = api.get(f"/{TABLE}")
    with pytest.raises(ValueError, match="hours must be a positive number of hours, got 0"):
        await repo.get_spans_by_agent("explainer", hours=0)
    with pytest.raises(ValueError, match="limit must be zero or positive, got -5"):
        await repo.get_spans_by_agent("explainer", limit=-5)
    assert await repo.get_spans_by_agent("explainer", limit=0) == []
    assert route.call_count == 0


async def test_window_and_limit_are_validated_before_any_request(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.get(f"/{TABLE}")
    with pytest.raises(ValueError, match="time window"):
        await repo.get_spans_by_time_window("yesterday")
    with pytest.raises(ValueError, match="limit"):
        await repo.get_spans_by_time_window("1h", limit=-1)
    assert await repo.get_spans_by_time_window("1h", limit=0) == []
    assert route.call_count == 0


async def test_count_spans_uses_head_with_exact_count(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.head(f"/{TABLE}").mock(return_value=httpx.Response(200, headers={"Content-Range": "0-0/4242"}))
    assert await repo.count_spans() == 4242
    request = route.calls.last.request
    assert prefer(request) == {"count=exact"}
    assert request.url.params["select"] == "id"


async def test_open_checks_key_and_table(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.get(f"/{TABLE}").mock(return_value=httpx.Response(200, json=[]))
    await repo.open()
    assert dict(route.calls.last.request.url.params) == {"select": "id", "limit": "0"}


# --------------------------------------------------------------------------- metrics through RPC


async def test_latency_stats_rpc(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post("/rpc/obs_latency_stats").mock(
        return_value=httpx.Response(
            200,
            json=[
                {
                    "key": "2",
                    "count": 10,
                    "avg_ms": 150.5,
                    "p50_ms": 120.0,
                    "p95_ms": 300.25,
                    "p99_ms": 310.0,
                    "error_count": 2,
                    "error_rate": 0.2,
                    "input_tokens": 1000,
                    "output_tokens": 200,
                    "total_tokens": 1200,
                }
            ],
        )
    )

    stats = await repo.get_latency_stats("24h", agent_name="gap_analyzer", group_by="tier")

    request = route.calls.last.request
    assert request.method == "POST"
    body = json.loads(request.content)
    assert set(body) == {"p_since", "p_agent", "p_trace", "p_group"}
    assert_near_now_minus(body["p_since"], timedelta(hours=24))
    assert (body["p_agent"], body["p_trace"], body["p_group"]) == ("gap_analyzer", None, "tier")
    assert request.headers["apikey"] == KEY and request.headers["authorization"] == f"Bearer {KEY}"
    assert len(stats) == 1
    s = stats[0]
    assert (s.key, s.count, s.avg_ms, s.p50_ms, s.p95_ms, s.p99_ms) == ("2", 10, 150.5, 120.0, 300.25, 310.0)
    # error_rate is errors over every span of the group (count), derived from the counts.
    assert (s.error_count, s.error_rate, s.input_tokens, s.output_tokens, s.total_tokens) == (2, 0.2, 1000, 200, 1200)


async def test_latency_stats_rejects_unknown_group_without_request(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post("/rpc/obs_latency_stats")
    with pytest.raises(ValueError, match="group_by"):
        await repo.get_latency_stats("1h", group_by="region")  # type: ignore[arg-type]
    assert route.call_count == 0


async def test_status_distribution_rpc(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post("/rpc/obs_status_distribution").mock(
        return_value=httpx.Response(
            200, json=[{"status": "error", "n": 3}, {"status": "ok", "n": 7}, {"status": "timeout", "n": 2}]
        )
    )
    assert await repo.get_status_distribution("7d", trace_id="t-9") == {
        "ok": 7,
        "error": 3,
        "timeout": 2,
        "started": 0,
    }
    body = json.loads(route.calls.last.request.content)
    assert (body["p_agent"], body["p_trace"]) == (None, "t-9")
    assert_near_now_minus(body["p_since"], timedelta(days=7))


async def test_quality_metrics_rpc(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post("/rpc/obs_quality_counts").mock(
        return_value=httpx.Response(
            200,
            json=[
                {
                    "total": 10,
                    "ok_count": 5,
                    "error_count": 2,
                    "timeout_count": 1,
                    "started_count": 2,
                    "fallback_count": 1,
                    "p50_ms": 100.0,
                    "p95_ms": 20_000.0,
                    "p99_ms": 25_000.0,
                    "avg_ms": 4_000.0,
                }
            ],
        )
    )
    q = await repo.get_quality_metrics("1h", agent_name="explainer")
    assert json.loads(route.calls.last.request.content)["p_agent"] == "explainer"
    counts = (q.total_spans, q.ok_count, q.error_count, q.timeout_count, q.started_count, q.fallback_count)
    assert counts == (10, 5, 2, 1, 2, 1)
    # Over all 10 spans: the started ones are successes, the timeout is neither success nor error.
    assert (q.success_rate, q.error_rate, q.timeout_rate, q.fallback_rate) == (0.7, 0.2, 0.1, 0.1)
    assert (q.p50_latency_ms, q.p95_latency_ms, q.p99_latency_ms, q.avg_latency_ms) == (
        100.0,
        20_000.0,
        25_000.0,
        4_000.0,
    )
    assert q.quality_score == pytest.approx(0.6 * 0.7 + 0.3 * 0.5 + 0.1 * 0.9)


async def test_quality_metrics_empty_window(repo: SupabaseSpanRepository, api: Any) -> None:
    api.post("/rpc/obs_quality_counts").mock(
        return_value=httpx.Response(
            200,
            json=[
                {
                    "total": 0,
                    "ok_count": 0,
                    "error_count": 0,
                    "timeout_count": 0,
                    "started_count": 0,
                    "fallback_count": 0,
                    "p50_ms": None,
                    "p95_ms": None,
                    "p99_ms": None,
                    "avg_ms": None,
                }
            ],
        )
    )
    q = await repo.get_quality_metrics("30m")
    assert (q.total_spans, q.success_rate, q.p95_latency_ms, q.quality_score) == (0, 1.0, None, 1.0)


# --------------------------------------------------------------------------- retention


async def test_retention_loops_over_the_rpc_with_progress(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post("/rpc/obs_delete_old_spans").mock(
        side_effect=[httpx.Response(200, json=n) for n in (100, 100, 37)]
    )
    seen: list[int] = []
    assert await repo.delete_old_spans(30, batch_size=100, progress=seen.append) == 237
    assert seen == [100, 200, 237]
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert [b["p_batch"] for b in bodies] == [100, 100, 100]
    assert len({b["p_cutoff"] for b in bodies}) == 1  # one cutoff for the whole run
    assert_near_now_minus(bodies[0]["p_cutoff"], timedelta(days=30))


async def test_retention_stops_on_an_empty_batch(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post("/rpc/obs_delete_old_spans").mock(side_effect=[httpx.Response(200, json=n) for n in (50, 0)])
    seen: list[int] = []
    assert await repo.delete_old_spans(1, batch_size=50, progress=seen.append) == 50
    assert route.call_count == 2 and seen == [50]


async def test_retention_halves_batches_that_hit_the_statement_timeout(repo: SupabaseSpanRepository, api: Any) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        batch = json.loads(request.content)["p_batch"]
        if batch > 250:
            return pgrst_error(500, "57014", "canceling statement due to statement timeout")
        return httpx.Response(200, json=min(batch, 100))

    route = api.post("/rpc/obs_delete_old_spans").mock(side_effect=answer)
    assert await repo.delete_old_spans(1, batch_size=1000) == 100
    # 1000 and 500 time out (each tried once: the same statement would time out again), 250 works.
    assert [json.loads(c.request.content)["p_batch"] for c in route.calls] == [1000, 500, 250]


async def test_retention_arguments_are_validated(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post("/rpc/obs_delete_old_spans")
    with pytest.raises(ValueError, match="days"):
        await repo.delete_old_spans(-1)
    with pytest.raises(ValueError, match="batch_size"):
        await repo.delete_old_spans(1, batch_size=0)
    assert route.call_count == 0


async def test_retention_is_retried_by_our_layer(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post("/rpc/obs_delete_old_spans").mock(
        side_effect=[httpx.Response(503, text="upstream unavailable"), httpx.Response(200, json=0)]
    )
    assert await repo.delete_old_spans(1) == 0
    assert route.call_count == 2


# --------------------------------------------------------------------------- errors and retries


async def test_401_is_a_clear_auth_error(repo: SupabaseSpanRepository, api: Any) -> None:
    # What Supabase's gateway answers for a wrong key: no PostgREST code at all.
    route = api.post(f"/{TABLE}").mock(
        return_value=httpx.Response(401, json={"message": "Invalid API key", "hint": "Double check your API key."})
    )
    with pytest.raises(StoreAuthError) as caught:
        await repo.insert_spans_batch([make_span(), make_span()])
    error = caught.value
    assert "service key rejected (401) — check SUPABASE_SERVICE_KEY" in str(error)
    assert "Invalid API key" in str(error)
    assert error.status == 401 and not error.retryable
    assert KEY not in str(error)
    assert route.call_count == 1  # never retried, never bisected


async def test_403_is_a_permission_error(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post("/rpc/obs_latency_stats").mock(
        return_value=pgrst_error(403, "42501", "permission denied for function obs_latency_stats")
    )
    with pytest.raises(StorePermissionError, match=r"permission denied \(403\).*service_role") as caught:
        await repo.get_latency_stats("1h")
    assert caught.value.code == "42501"
    assert route.call_count == 1


async def test_409_outside_a_batch_is_a_conflict_error(repo: SupabaseSpanRepository, api: Any) -> None:
    api.post("/rpc/obs_delete_old_spans").mock(
        return_value=pgrst_error(409, "23503", "update or delete violates foreign key constraint")
    )
    with pytest.raises(StoreConflictError, match=r"conflict with stored data \(409\).*foreign key"):
        await repo.delete_old_spans(1)


async def test_404_names_the_schema_file(repo: SupabaseSpanRepository, api: Any) -> None:
    api.post("/rpc/obs_quality_counts").mock(
        return_value=pgrst_error(404, "PGRST202", "Could not find the function public.obs_quality_counts")
    )
    with pytest.raises(StoreSchemaError, match=r"database/ml/mlops_tables.sql"):
        await repo.get_quality_metrics("1h")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_retried_by_our_layer_then_surfaced(repo: SupabaseSpanRepository, api: Any, status: int) -> None:
    route = api.post(f"/{TABLE}").mock(return_value=httpx.Response(status, text="<html>bad gateway</html>"))
    with pytest.raises(StoreUnavailableError) as caught:
        await repo.insert_spans_batch([make_span()])
    assert route.call_count == 3  # max_attempts: our retry layer, not the client's
    assert caught.value.retryable and caught.value.status == status
    assert f"({status})" in str(caught.value) and "gave up after 3 attempts" in str(caught.value)


async def test_5xx_then_success_stores_the_batch_once(repo: SupabaseSpanRepository, api: Any) -> None:
    route = api.post(f"/{TABLE}").mock(
        side_effect=[pgrst_error(503, "PGRST000", "Database connection error"), httpx.Response(502), inserted(2)]
    )
    result = await repo.insert_spans_batch([make_span(), make_span()])
    assert (result.inserted, result.failed) == (2, 0)
    assert route.call_count == 3
    assert rows_of(route.calls[0].request) == rows_of(route.calls[2].request)  # the same batch, re-sent


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("connection refused"), httpx.ReadTimeout("read timed out"), httpx.RemoteProtocolError("eof")],
)
async def test_connection_errors_and_timeouts_are_retried(
    repo: SupabaseSpanRepository, api: Any, failure: Exception
) -> None:
    route = api.post(f"/{TABLE}").mock(side_effect=failure)
    with pytest.raises(StoreUnavailableError, match="gave up after 3 attempts"):
        await repo.insert_spans_batch([make_span()])
    assert route.call_count == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 429])
async def test_4xx_is_never_retried(repo: SupabaseSpanRepository, api: Any, status: int) -> None:
    route = api.get(f"/{TABLE}").mock(return_value=pgrst_error(status, "PGRST100", "rejected"))
    with pytest.raises((StoreRequestError, StoreAuthError, StorePermissionError, StoreConflictError)):
        await repo.get_spans_by_trace_id("t")
    assert route.call_count == 1


async def test_reads_are_not_retried_by_the_client_itself(api: Any) -> None:
    """postgrest-py would retry a GET on 503 three times with 1-2-4 s sleeps; ours is the only layer."""
    route = api.get(f"/{TABLE}").mock(return_value=httpx.Response(503))
    store = SupabaseSpanRepository(URL, KEY, max_attempts=1)
    try:
        with pytest.raises(StoreUnavailableError):
            await store.get_spans_by_trace_id("t")
    finally:
        await store.close()
    assert route.call_count == 1


async def test_retries_back_off_with_jitter(api: Any) -> None:
    sleeps: list[float] = []
    original = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        await original(0)

    api.post(f"/{TABLE}").mock(return_value=httpx.Response(503))
    store = SupabaseSpanRepository(URL, KEY, max_attempts=4, retry_base_s=0.5, retry_max_s=3.0)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(asyncio, "sleep", fake_sleep)
            with pytest.raises(StoreUnavailableError):
                await store.insert_spans_batch([make_span()])
    finally:
        await store.close()
    assert len(sleeps) == 3
    # Full jitter: each wait is anywhere in [0, min(max, base·2^n)].
    for attempt, delay in enumerate(sleeps, start=1):
        assert 0 <= delay <= min(3.0, 0.5 * 2**attempt)


async def test_the_key_never_leaks(api: Any, caplog: pytest.LogCaptureFixture) -> None:
    api.post(f"/{TABLE}").mock(return_value=httpx.Response(503, text="down"))
    store = SupabaseSpanRepository(URL, KEY, max_attempts=2, retry_base_s=0)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(StoreUnavailableError) as caught:
            await store.insert_spans_batch([make_span()])
        await store.close()
    for text in (repr(store), store.describe(), str(caught.value), caplog.text, repr(vars(store))):
        assert KEY not in text
    assert "retrying" in caplog.text


# --------------------------------------------------------------------------- configuration


def test_describe_and_repr_show_only_scheme_and_host() -> None:
    store = SupabaseSpanRepository("https://abcdefghij.supabase.co", KEY)
    assert store.describe() == "supabase:https://abcdefghij.supabase.co"
    assert repr(store) == "SupabaseSpanRepository('https://abcdefghij.supabase.co')"
    assert store.backend == "supabase"


def _jwt(role: str) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'role': role, 'iss': 'supabase'})}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("url", "key", "message"),
    [
        ("ftp://x.supabase.co", KEY, "http"),
        ("https://user:pw@x.supabase.co", KEY, "credentials"),
        ("http://x.supabase.co", KEY, "plain http"),
        ("https://x.supabase.co", "  ", "service key is required"),
        ("https://x.supabase.co", _jwt("anon"), "'anon' role"),
        ("https://x.supabase.co", "sb_publishable_abc", "'anon' role"),
    ],
)
def test_bad_configuration_is_refused_up_front(url: str, key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        SupabaseSpanRepository(url, key)
    assert key.strip() == "" or key not in str(caught.value)


def test_service_role_keys_are_accepted() -> None:
    for key in (_jwt("service_role"), "sb_secret_abc", KEY):
        SupabaseSpanRepository("https://x.supabase.co", key)


def test_from_env_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="SUPABASE_SERVICE_KEY") as caught:
        SupabaseSpanRepository.from_env({"SUPABASE_URL": "https://x.supabase.co"})
    assert "SUPABASE_URL and" not in str(caught.value)
    store = SupabaseSpanRepository.from_env({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_SERVICE_KEY": KEY})
    assert store.describe() == "supabase:https://x.supabase.co"


def test_build_store_selects_supabase_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from src.agents.ml_foundation.observability_connector.config import (
        ConfigError,
        ObservabilitySettings,
        StoreSettings,
        build_store,
    )
    from src.repositories.observability_span import ObservabilitySpanRepository

    monkeypatch.setenv("SUPABASE_URL", "https://abcdefghij.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", KEY)
    built = build_store(ObservabilitySettings())
    assert isinstance(built, ObservabilitySpanRepository)
    assert isinstance(built.store, SupabaseSpanRepository)
    assert built.describe() == "supabase:https://abcdefghij.supabase.co"

    monkeypatch.delenv("SUPABASE_SERVICE_KEY")
    with pytest.raises(ConfigError, match="SUPABASE_SERVICE_KEY"):
        build_store(ObservabilitySettings(store=StoreSettings(backend="supabase")))


# --------------------------------------------------------------------------- event loops


async def test_each_event_loop_gets_its_own_client(repo: SupabaseSpanRepository, api: Any) -> None:
    api.post(f"/{TABLE}").mock(side_effect=lambda request: inserted(len(rows_of(request))))
    results: list[int] = []
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            results.append(asyncio.run(repo.insert_spans_batch([make_span()])).inserted)
        except BaseException as exc:
            errors.append(exc)

    assert (await repo.insert_spans_batch([make_span()])).inserted == 1
    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(30)
    assert errors == [] and results == [1]
    assert (await repo.insert_spans_batch([make_span()])).inserted == 1  # this loop's client still works
    await repo.close()
    await repo.close()  # idempotent


# --------------------------------------------------------------------------- against a real Postgres


@pytest.fixture
def emulated_dsn(request: pytest.FixtureRequest) -> str:
    """A fresh database with the schema, from the suite's throwaway Postgres cluster."""
    try:
        return str(request.getfixturevalue("postgres_dsn"))
    except pytest.FixtureLookupError:
        pytest.skip("the Postgres cluster fixture (postgres_dsn) is not registered in this build")
        raise  # unreachable


async def test_core_operations_through_the_emulator_on_real_postgres(emulated_dsn: str) -> None:
    from tests.fixtures.supabase_store import make_supabase_store

    store = make_supabase_store(emulated_dsn, max_rows=50)
    assert isinstance(store, SupabaseSpanRepository)
    now = datetime.now(UTC)
    spans = [
        make_span(
            trace_id="trace-emu",
            agent_name="explainer" if i % 2 else "gap_analyzer",
            agent_tier=5 if i % 2 else 2,
            start_time=now - timedelta(minutes=i + 1),
            duration_ms=float(i),
            status="error" if i % 10 == 0 else "timeout" if i % 10 == 5 else "ok",
            attributes={"i": i, "fallback_used": i % 4 == 0},
        )
        for i in range(120)
    ]
    # Postgres refuses a token count beyond integer: a real per-row failure, found by bisection.
    poisoned = make_span(trace_id="trace-emu", start_time=now, input_tokens=2**40)
    # NUL is not storable in text/jsonb either, but the backend replaces it instead of losing the span.
    with_nul = make_span(trace_id="trace-nul", start_time=now, error_message="a\x00b", attributes={"k\x00": "v\x00"})
    old = make_span(trace_id="trace-old", start_time=now - timedelta(days=40))
    try:
        await store.open()
        result = await store.insert_spans_batch([*spans[:60], poisoned, *spans[60:], old, with_nul])
        assert (result.inserted, result.duplicates, result.failed) == (122, 0, 1)
        assert result.errors[0][0] == poisoned.span_id
        assert "out of range" in result.errors[0][1] and "22003" in result.errors[0][1]

        again = await store.insert_spans_batch(spans[:10])
        assert (again.inserted, again.duplicates) == (0, 10)  # counted from the real Content-Range
        assert await store.count_spans() == 122
        (nul_back,) = await store.get_spans_by_trace_id("trace-nul")
        assert nul_back.error_message == "a\ufffdb" and nul_back.attributes == {"k\ufffd": "v\ufffd"}

        got = await store.get_spans_by_trace_id("trace-emu")  # 120 rows through pages of 50
        assert [s.span_id for s in got] == [s.span_id for s in sorted(spans, key=lambda s: s.start_time)]
        assert got[0] == sorted(spans, key=lambda s: s.start_time)[0]

        window = await store.get_spans_by_time_window("1h", agent_name="explainer", limit=20)
        assert len(window) == 20 and {s.agent_name for s in window} == {"explainer"}

        stats = {s.key: s for s in await store.get_latency_stats("24h", trace_id="trace-emu")}
        assert set(stats) == {"explainer", "gap_analyzer"}
        assert stats["gap_analyzer"].count == 60 and stats["gap_analyzer"].error_count == 12
        durations = sorted(float(i) for i in range(0, 120, 2))
        assert stats["gap_analyzer"].p50_ms == pytest.approx((durations[29] + durations[30]) / 2)

        assert stats["explainer"].error_count == 0 and stats["explainer"].error_rate == 0.0  # timeouts only
        assert await store.get_status_distribution("24h", trace_id="trace-emu") == {
            "ok": 96,
            "error": 12,
            "timeout": 12,
            "started": 0,
        }
        quality = await store.get_quality_metrics("24h", trace_id="trace-emu")
        assert (quality.total_spans, quality.fallback_count) == (120, 30)
        assert (quality.error_count, quality.timeout_count, quality.success_rate) == (12, 12, 0.8)

        assert await store.delete_old_spans(30, batch_size=1) == 1
        assert await store.count_spans() == 121
    finally:
        await store.close()


async def test_emulator_rejects_what_it_does_not_implement(emulated_dsn: str) -> None:
    from tests.fixtures.supabase_store import EmulatorUnsupportedError, make_supabase_store

    store = make_supabase_store(emulated_dsn)
    assert isinstance(store, SupabaseSpanRepository)
    try:
        client = await store._client()
        with pytest.raises(EmulatorUnsupportedError, match="DELETE"):
            await client.table(TABLE).delete().lt("start_time", "2020-01-01").execute()
        with pytest.raises(EmulatorUnsupportedError, match="operator"):
            await client.table(TABLE).select("id").like("agent_name", "gap%").execute()
        with pytest.raises(StoreAuthError):
            await SupabaseSpanRepository(
                "http://127.0.0.1:54321", "wrong-key", transport=store._transport, max_attempts=1
            ).count_spans()
    finally:
        await store.close()


async def test_rollup_metrics_rpc(repo: SupabaseSpanRepository, api: Any) -> None:
    """The metrics node's one request on Supabase: obs_rollup_metrics with the window start and
    agent, answered by group rows (idx null) and sketch rows."""
    from src.agents.ml_foundation.observability_connector.latency_sketch import bucket_index, bucket_value
    from src.agents.ml_foundation.observability_connector.rollups import latency_stats, quality_metrics

    figures = {"n_all": 4, "n_ok": 2, "n_error": 1, "n_timeout": 1, "n_started": 0, "n_fallback": 1,
               "tok_in": 10, "tok_out": 5, "tok_total": 15, "dur_n": 3, "dur_sum": 60.0}  # fmt: skip
    nulls = dict.fromkeys(figures)

    def array_send(values: list[int]) -> str:
        """Postgres' binary int4[] as PostgREST sends a bytea: ``\\x`` and hex."""
        head = [1, 0, 23, len(values), 1]
        body = [part for v in values for part in (4, v)]
        return "\\x" + b"".join(x.to_bytes(4, "big", signed=True) for x in head + body).hex()

    # Pairs as a sketch holds them: an index may repeat (appended by successive writes).
    idxs, counts = [bucket_index(10.0), bucket_index(40.0), bucket_index(10.0)], [1, 1, 1]
    route = api.post("/rpc/obs_rollup_metrics").mock(
        return_value=httpx.Response(
            200,
            json=[
                {
                    "agent_name": "explainer",
                    "agent_tier": 5,
                    "idx": None,
                    "n": None,
                    **figures,
                    "idxs": None,
                    "counts": None,
                },
                {
                    "agent_name": "explainer",
                    "agent_tier": 5,
                    "idx": 0,
                    "n": 1,
                    **nulls,
                    "idxs": array_send(idxs),
                    "counts": array_send(counts),
                },
            ],
        )
    )
    groups = await repo.rollup_groups("24h", agent_name="explainer")
    request = route.calls.last.request
    assert request.url.path == "/rest/v1/rpc/obs_rollup_metrics"
    body = json.loads(request.content)
    assert set(body) == {"p_since", "p_agent"} and body["p_agent"] == "explainer"
    assert_near_now_minus(body["p_since"], timedelta(hours=24))
    assert groups is not None
    (stats,) = latency_stats(groups, "tier")
    assert (stats.key, stats.count, stats.error_count, stats.total_tokens, stats.avg_ms) == ("5", 4, 1, 15, 20.0)
    assert stats.p50_ms == bucket_value(bucket_index(10.0))
    quality = quality_metrics("24h", groups)
    assert (quality.total_spans, quality.timeout_count, quality.fallback_rate) == (4, 1, 0.25)
    # Three durations of 10 and 40 ms plus one of zero (n): p50 is a 10 ms bucket, p99 the 40 ms one.
    assert stats.p99_ms == pytest.approx(bucket_value(bucket_index(40.0)), rel=0.03)


async def test_rollup_metrics_rpc_carries_cost(repo: SupabaseSpanRepository, api: Any) -> None:
    """The cost figures of ``obs_rollup_metrics`` (cost_sum, n_unpriced, appended after the sketch
    columns) reach the metrics answer's cost keys; a database migrated before them answers without
    those columns and reads as nothing spent, nothing unpriced."""
    from src.agents.ml_foundation.observability_connector.cost_metrics import cost_figures

    figures = {"n_all": 3, "n_ok": 3, "n_error": 0, "n_timeout": 0, "n_started": 0, "n_fallback": 0,
               "tok_in": 10, "tok_out": 5, "tok_total": 15, "dur_n": 0, "dur_sum": 0.0}  # fmt: skip
    rows = [
        {"agent_name": "explainer", "agent_tier": 5, "idx": None, "n": None, **figures, "idxs": None,
         "counts": None, "cost_sum": 0.0125, "n_unpriced": 2},
        {"agent_name": "gap_analyzer", "agent_tier": 2, "idx": None, "n": None, **figures, "idxs": None,
         "counts": None, "cost_sum": 0.0, "n_unpriced": 1},
    ]  # fmt: skip
    api.post("/rpc/obs_rollup_metrics").mock(return_value=httpx.Response(200, json=rows))
    answer = cost_figures(await repo.rollup_groups("24h") or [])
    assert answer == {
        "cost_by_agent": {"explainer": 0.0125, "gap_analyzer": None},
        "cost_by_tier": {"2": None, "5": 0.0125},
        "total_cost_usd": 0.0125,
        "unpriced_llm_calls": 3,
    }
    old = [{k: v for k, v in row.items() if k not in ("cost_sum", "n_unpriced")} for row in rows]
    api.post("/rpc/obs_rollup_metrics").mock(return_value=httpx.Response(200, json=old))
    assert cost_figures(await repo.rollup_groups("24h") or []) == {
        "cost_by_agent": {},
        "cost_by_tier": {},
        "total_cost_usd": 0.0,
        "unpriced_llm_calls": 0,
    }
