"""Span rows → Opik request bodies (checked with the SDK's own models), and Opik's configuration."""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pydantic
import pytest

from src.agents.ml_foundation.observability_connector.config import (
    ObservabilitySettings,
    build_deliveries,
    load_registry,
)
from src.agents.ml_foundation.observability_connector.models import ObservabilityEvent, ObservabilitySpan
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext, default_context
from src.mlops import OpikConfig, OpikConnector, get_opik_connector, opik_configured, opik_span_id, opik_trace_id
from src.mlops.opik_payloads import TraceBook, json_safe, span_payload
from tests.fixtures.opik_receiver import _models

REGISTRY = load_registry()
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
SECRET_KEY = "opik-key-DO-NOT-LEAK-1234567890"


def make_span(**overrides: Any) -> ObservabilitySpan:
    event: dict[str, Any] = {
        "span_id": "span_1",
        "trace_id": "trace_456",
        "agent_name": "gap_analyzer",
        "operation": "execute",
        "started_at": T0,
        "duration_ms": 812.5,
        "status": "completed",
    }
    event.update(overrides)
    parsed = ObservabilityEvent.model_validate(event)
    return parsed.to_span(REGISTRY.tier_of(parsed.agent_name))


def validate(kind: str, body: dict[str, Any]) -> None:
    """What the receiver does: the SDK's model, and no field it does not know."""
    model = _models()[f"write:{kind}"]
    assert set(body) <= set(model.model_fields), set(body) - set(model.model_fields)
    model.model_validate(body)
    from src.agents.ml_foundation.observability_connector.json_codec import json_bytes as _dumps

    sent = json.loads(_dumps(body))  # what goes over the wire, as the receiver sees it
    model.model_validate(sent)


def test_llm_span_body() -> None:
    span = make_span(
        span_id="llm_1",
        parent_span_id="span_1",
        operation="llm.claude-sonnet-4",
        model_used="claude-sonnet-4",
        input_tokens=812,
        output_tokens=95,
        attributes={"llm.provider": "anthropic", "langchain.run_type": "llm"},
        input_data={"messages": ["hi"]},
        output_data="hello",
    )
    body = span_payload(span, "proj", REGISTRY.tier_names)
    validate("spans", body)
    assert body["type"] == "llm"
    assert body["model"] == "claude-sonnet-4"
    assert body["provider"] == "anthropic"
    assert body["usage"] == {"prompt_tokens": 812, "completion_tokens": 95, "total_tokens": 907}
    assert body["id"] == opik_span_id("trace_456", "llm_1")
    assert body["parent_span_id"] == opik_span_id("trace_456", "span_1")
    assert body["trace_id"] == opik_trace_id("trace_456")
    assert body["input"] == {"messages": ["hi"]}
    assert body["output"] == "hello"
    # Times stay datetimes in UTC; the connector's encoder writes them as RFC 3339 with a Z.
    assert body["start_time"] == datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
    assert body["end_time"] == datetime(2026, 11, 26, 10, 0, 0, 812500, tzinfo=UTC)
    assert body["start_time"].tzinfo is UTC
    assert body["metadata"]["obs_span_id"] == "llm_1"
    assert body["metadata"]["agent_name"] == "gap_analyzer"
    assert "tier:2-causal_analytics" in body["tags"]


def test_failed_and_tool_spans() -> None:
    failed = span_payload(
        make_span(status="failed", error="rate limit", error_type="RateLimitError"), "p", REGISTRY.tier_names
    )
    validate("spans", failed)
    assert failed["error_info"] == {
        "exception_type": "RateLimitError",
        "message": "rate limit",
        "traceback": "RateLimitError: rate limit",
    }
    timed_out = span_payload(make_span(status="timeout"), "p", REGISTRY.tier_names)
    validate("spans", timed_out)
    assert timed_out["error_info"]["exception_type"] == "Timeout" and timed_out["metadata"]["status"] == "timeout"
    tool = span_payload(make_span(attributes={"langchain.run_type": "tool", "tool.name": "q"}), "p", {})
    assert tool["type"] == "tool"
    assert "error_info" not in tool and "usage" not in tool and "parent_span_id" not in tool


def test_values_that_are_not_json_are_made_safe() -> None:
    odd: dict[str, Any] = {
        "nan": math.nan,
        "inf": -math.inf,
        "bytes": b"\x00\x01",
        "when": T0,
        "set": {1},
        "obj": object(),
        "deep": {"a": [{"b": (1, 2)}]},
    }
    span = make_span(attributes={"odd": odd}, input_data=[1, 2, 3], metadata={"request_id": "r1"})
    body = span_payload(span, "p", {})
    validate("spans", body)
    assert body["input"] == {"value": [1, 2, 3]}  # Opik takes an object, a list of objects or a string
    assert body["metadata"]["request_id"] == "r1"
    assert body["metadata"]["odd"]["nan"] == "nan"
    assert json_safe({"x": math.inf}) == {"x": "inf"}


def test_trace_book_builds_one_cumulative_trace_per_trace_id() -> None:
    book = TraceBook("proj", REGISTRY.tier_names, max_traces=2)
    child = make_span(span_id="c1", parent_span_id="root", agent_name="gap_analyzer", operation="execute")
    first = book.update([child])
    assert len(first) == 1
    validate("traces", first[0])
    assert first[0]["name"] == "execute"  # the root has not arrived yet
    root = make_span(
        span_id="root",
        agent_name="orchestrator",
        operation="route_request",
        started_at=T0 - timedelta(milliseconds=5),
        duration_ms=900,
        input_data={"q": "why"},
        output_data={"gaps": 3},
        status="failed",
        error="boom",
    )
    second = book.update([root])[0]
    validate("traces", second)
    assert second["id"] == opik_trace_id("trace_456") == first[0]["id"]
    assert second["name"] == "route_request"
    assert second["input"] == {"q": "why"} and second["output"] == {"gaps": 3}
    assert second["error_info"]["exception_type"] == "Error"
    assert second["tags"] == [
        "agent:gap_analyzer",
        "agent:orchestrator",
        "tier:1-coordination",
        "tier:2-causal_analytics",
    ]
    assert second["metadata"]["span_count"] == 2
    assert second["last_updated_at"] >= first[0]["last_updated_at"]
    book.update([make_span(trace_id="t2"), make_span(trace_id="t3")])
    assert len(book) == 2  # bounded: the least recently touched trace is forgotten


# --------------------------------------------------------------------------- configuration


def test_opik_is_configured_by_env_or_setting() -> None:
    settings = ObservabilitySettings()
    assert not opik_configured(settings, {})
    assert opik_configured(settings, {"OPIK_URL_OVERRIDE": "http://127.0.0.1:1/api"})
    assert opik_configured(settings, {"OPIK_API_KEY": "k"})
    assert opik_configured(ObservabilitySettings(opik={"enabled": True}), {})
    assert not opik_configured(ObservabilitySettings(opik={"enabled": False}), {"OPIK_API_KEY": "k"})


def test_config_from_settings_and_env() -> None:
    settings = ObservabilitySettings(
        opik={"project_name": "file-project", "request_timeout_s": 2.5, "max_requests_in_flight": 3},
    )
    config = OpikConfig.from_settings(settings, {"OPIK_URL_OVERRIDE": "http://127.0.0.1:9/api/"})
    assert config.url == "http://127.0.0.1:9/api"
    assert config.project_name == "file-project"
    assert (config.request_timeout_s, config.max_requests_in_flight) == (2.5, 3)
    env = {"OPIK_API_KEY": SECRET_KEY, "OPIK_WORKSPACE": "team", "OPIK_PROJECT_NAME": "env-project"}
    cloud = OpikConfig.from_settings(settings, env)
    assert cloud.url.startswith("https://www.comet.com/opik/api")
    assert (cloud.workspace, cloud.project_name) == ("team", "env-project")
    assert OpikConfig.from_settings(ObservabilitySettings(), {}).url == "http://localhost:5173/api"


def test_the_key_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    from src.mlops.opik_wire import OpikWire

    caplog.set_level(logging.DEBUG)
    connector = OpikConnector(OpikConfig(url="http://127.0.0.1:9/api", api_key=SECRET_KEY))
    shown = [repr(connector), repr(connector.config), json.dumps(connector.get_status(), default=str)]
    assert not any(SECRET_KEY in text for text in shown)
    assert connector.get_status()["api_key_set"] is True
    assert OpikWire(connector.config).scrub(f"server said {SECRET_KEY}") == "server said [REDACTED]"
    assert SECRET_KEY not in caplog.text


def test_a_password_in_the_opik_url_never_shows() -> None:
    connector = OpikConnector(OpikConfig(url="http://opik-user:hunter2-secret@127.0.0.1:9/api"))
    shown = [repr(connector), repr(connector.config), connector.url, json.dumps(connector.get_status(), default=str)]
    assert not any("hunter2-secret" in text for text in shown)
    assert connector.get_status()["url"] == "http://opik-user:***@127.0.0.1:9/api"
    assert connector.config.url.endswith("hunter2-secret@127.0.0.1:9/api")  # what the client uses


def test_context_from_config_gets_the_opik_sink_and_the_process_wide_facade(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert build_deliveries(store, ObservabilitySettings()).opik is None
    assert ConnectorContext.from_config().opik is None
    assert get_opik_connector() is None
    monkeypatch.setenv("OPIK_URL_OVERRIDE", "http://127.0.0.1:9/api")
    context = ConnectorContext.from_config()
    assert isinstance(context.opik, OpikConnector) and context.opik_delivery.name == "opik"
    assert context.opik.url == "http://127.0.0.1:9/api"
    assert [d.name for d in context.deliveries] == ["store", "opik"]
    assert context.opik_delivery.spool is context.store_delivery.spool, "one spool for every sink"
    assert default_context().opik is get_opik_connector() is OpikConnector.instance()


def test_without_an_agent_the_convenience_api_says_how_to_get_one() -> None:
    from src.mlops import opik_connector

    connector = OpikConnector(OpikConfig(url="http://127.0.0.1:9/api"))
    saved = opik_connector._agent_factory
    opik_connector.register_agent_factory(None)
    try:
        with pytest.raises(RuntimeError, match="bind_agent"):
            connector.log_metric("rows", 1.0)
    finally:
        opik_connector.register_agent_factory(saved)


def test_bad_opik_settings_name_the_key() -> None:
    with pytest.raises(pydantic.ValidationError, match="max_items_per_request"):
        ObservabilitySettings(opik={"max_items_per_request": 5000})


def test_encoder_writes_times_in_utc_with_z_and_never_fails_a_batch_on_an_odd_value() -> None:
    from src.agents.ml_foundation.observability_connector.json_codec import json_bytes as _dumps

    plus_two = timezone(timedelta(hours=2))
    span = make_span(started_at=datetime(2026, 11, 26, 12, 0, 0, 5, tzinfo=plus_two))
    body = span_payload(span, "p", {})
    encoded = json.loads(_dumps([body]))[0]
    assert encoded["start_time"] == "2026-11-26T10:00:00.000005Z"  # converted from +02:00
    validate("spans", encoded)
    # What orjson refuses goes through the standard encoder: same JSON, nothing lost.
    odd = {"big": 2**70, "surrogate": "\ud800", "when": datetime(2026, 1, 1, tzinfo=UTC)}
    assert json.loads(_dumps(odd)) == {
        "big": 2**70,
        "surrogate": "\ud800",
        "when": "2026-01-01T00:00:00Z",
    }  # as orjson writes it
    assert _dumps({"nan": math.nan}) == b'{"nan":null}'  # never a 400 (json_safe upstream makes it "nan")
