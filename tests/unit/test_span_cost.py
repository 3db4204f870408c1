"""The cost the row builder gives an LLM span (span_cost.py through rows.build_row), against the
pinned price library: several providers, cached and reasoning tokens read from the attributes
the callback handler writes, an override, an unknown model, and counts that cannot be priced."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from genai_prices import Usage, calc_price

from src.agents.ml_foundation.observability_connector.events import ObservabilityEvent
from src.agents.ml_foundation.observability_connector.pricing import Pricer, build_pricer
from src.agents.ml_foundation.observability_connector.settings import PricingSettings
from src.agents.ml_foundation.observability_connector.span_cost import INVALID_COST, call_cost


def library_usd(provider: str, model: str, **usage: int) -> float:
    """The library's own answer (its public ``calc_price``), independent of our linearisation."""
    return float(calc_price(Usage(**usage), model_ref=model, provider_id=provider).total_price)


@pytest.mark.parametrize(
    ("provider", "model", "attributes", "usage"),
    [
        # OpenAI: cached input from LangChain's usage_metadata details, reasoning from the output's.
        (
            "openai",
            "o3-mini",
            {"llm.usage.input_token_details.cache_read": 600, "llm.usage.output_token_details.reasoning": 300},
            {"input_tokens": 1000, "output_tokens": 500, "cache_read_tokens": 600},
        ),
        # Anthropic: cache reads and cache writes both priced on their own.
        (
            "anthropic",
            "claude-3-5-sonnet-20241022",
            {
                "llm.usage.input_token_details.cache_read": 2000,
                "llm.usage.input_token_details.cache_creation": 1000,
            },
            {"input_tokens": 5000, "output_tokens": 200, "cache_read_tokens": 2000, "cache_write_tokens": 1000},
        ),
        # Google through LangChain's provider name (google_genai), no details.
        ("google_genai", "gemini-1.5-flash", {}, {"input_tokens": 12000, "output_tokens": 800}),
        # OpenAI's raw spelling of cached tokens (copied from llm_output["token_usage"]).
        (
            "openai",
            "gpt-4o",
            {"llm.usage.input_token_details.cached_tokens": 1024},
            {"input_tokens": 2048, "output_tokens": 100, "cache_read_tokens": 1024},
        ),
    ],
)
def test_cost_matches_the_library_for_several_providers(
    provider: str, model: str, attributes: dict[str, Any], usage: dict[str, int]
) -> None:
    attrs = {"llm.provider": provider, **attributes}
    cost = call_cost(None, model, usage["input_tokens"], usage["output_tokens"], attrs)
    library_provider = "google" if provider == "google_genai" else provider
    assert cost is not None and cost > 0
    assert cost == pytest.approx(library_usd(library_provider, model, **usage), rel=1e-9)
    assert INVALID_COST not in attrs


def test_reasoning_tokens_are_priced_at_the_reasoning_rate_where_the_model_has_one() -> None:
    """Reasoning is part of the output count: with a separate rate, moving tokens into it changes
    the price exactly as the pricer says (and never on a model without one)."""
    pricer = Pricer()
    attrs = {"llm.provider": "openai", "llm.usage.output_token_details.reasoning": 400}
    with_reasoning = call_cost(pricer, "o3-mini", 1000, 500, attrs)
    direct = pricer.price_call("openai", "o3-mini", 1000, 500, reasoning_tokens=400)
    assert direct is not None and with_reasoning == pytest.approx(direct.total_usd, rel=1e-12)


def test_gpt_4o_mini_by_hand() -> None:
    # $0.15 / Mtok in, $0.60 / Mtok out (the pinned data): 1000 in and 100 out.
    assert call_cost(None, "gpt-4o-mini", 1000, 100, {"llm.provider": "openai"}) == pytest.approx(
        1000 * 0.15e-6 + 100 * 0.60e-6, rel=1e-9
    )


def test_override_wins_over_the_library_and_prices_a_self_hosted_model() -> None:
    pricer = build_pricer(
        PricingSettings(
            overrides={
                "openai/gpt-4o-mini": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                "llama-3-70b-internal": {"input_per_mtok": 0.5, "output_per_mtok": 0.5, "cache_read_per_mtok": 0.1},
            }
        )
    )
    assert call_cost(pricer, "gpt-4o-mini", 1_000_000, 500_000, {"llm.provider": "openai"}) == pytest.approx(2.0)
    attrs = {"llm.provider": "ollama", "llm.usage.input_token_details.cache_read": 400_000}
    assert call_cost(pricer, "llama-3-70b-internal", 1_000_000, 0, attrs) == pytest.approx(0.6 * 0.5 + 0.4 * 0.1)


def test_unknown_model_or_no_counts_is_null_never_zero() -> None:
    assert call_cost(None, "my-private-model-v9", 100, 10, {"llm.provider": "openai"}) is None
    assert call_cost(None, "gpt-4o", 100, 10, {"llm.provider": "ollama"}) is None  # same weights, other bill
    assert call_cost(None, "gpt-4o", None, None, {"llm.provider": "openai"}) is None  # failed before usage
    assert call_cost(None, None, 100, 10, {}) is None


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"llm.usage.input_token_details.cache_read": 500}, "exceed input_tokens"),
        ({"llm.usage.output_token_details.reasoning": 50}, "exceed output_tokens"),
        ({"llm.usage.input_token_details.cache_read": 1.5}, "whole number"),
        ({"llm.usage.input_token_details.cache_read": -3}, "non-negative"),
    ],
)
def test_counts_that_contradict_leave_the_cost_null_and_say_why(attributes: dict[str, Any], reason: str) -> None:
    attrs = {"llm.provider": "openai", **attributes}
    assert call_cost(None, "gpt-4o", 100, 10, attrs) is None
    assert reason in attrs[INVALID_COST]


def _event(**fields: Any) -> ObservabilityEvent:
    base: dict[str, Any] = {
        "agent_name": "explainer",
        "operation": "llm_call",
        "started_at": datetime(2026, 12, 7, 12, tzinfo=UTC),
        "duration_ms": 5.0,
        "model_used": "gpt-4o-mini",
        "input_tokens": 1000,
        "output_tokens": 100,
        "attributes": {"llm.provider": "openai"},
    }
    return ObservabilityEvent.model_validate({**base, **fields})


def test_row_builder_prices_events_and_keeps_a_given_cost() -> None:
    row = _event().to_span(5)
    assert row.cost_usd == pytest.approx(0.00021, rel=1e-9)
    assert _event(cost_usd=0.5).to_span(5).cost_usd == 0.5  # the caller's bill wins
    assert _event(model_used=None).to_span(5).cost_usd is None  # no model: not an LLM call
    pricer = build_pricer(PricingSettings(overrides={"gpt-4o-mini": {"input_per_mtok": 10, "output_per_mtok": 0}}))
    assert _event().to_span(5, pricer=pricer).cost_usd == pytest.approx(0.01)
    assert build_pricer(PricingSettings(enabled=False)).price_call("openai", "gpt-4o", 1, 1) is None
    assert _event().to_span(5, pricer=build_pricer(PricingSettings(enabled=False))).cost_usd is None


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf"), "a lot"])
def test_a_bad_given_cost_is_refused_with_its_field_named(bad: Any) -> None:
    with pytest.raises(ValueError, match="cost_usd"):
        _event(cost_usd=bad)


def test_the_spooled_row_keeps_the_cost() -> None:
    """The spool and PostgREST use ``to_row``; a row read back (or replayed) keeps its cost, and a
    row spooled before the column existed reads as unpriced."""
    from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan

    row = _event().to_span(5)
    back = ObservabilitySpan.model_validate(row.to_row())
    assert back.cost_usd == row.cost_usd and back == row
    old = {k: v for k, v in row.to_row().items() if k != "cost_usd"}
    assert ObservabilitySpan.model_validate(old).cost_usd is None


def test_an_otlp_span_is_priced_from_its_genai_attributes() -> None:
    """A span exported over OTLP and collected again (or any OTLP sender's LLM span): the provider
    and cache tokens arrive under the GenAI conventions' keys and price the call the same way."""
    from src.mlops.otlp_decode import decode_request, to_events
    from src.mlops.otlp_encode import encode_spans

    attrs = {"llm.provider": "anthropic", "llm.usage.input_token_details.cache_read": 3000}
    row = _event(model_used="claude-3-5-sonnet-20241022", input_tokens=5000, output_tokens=200, attributes=attrs)
    original = row.to_span(2)
    assert original.cost_usd is not None
    body, _ids, refused = encode_spans([original], "svc")
    request, unreadable = decode_request(body, "application/x-protobuf")
    (event,), rejected = to_events(request)
    assert refused == unreadable == rejected == []
    # Exported as OpenInference's llm.cost.total (Phoenix shows it) and taken back as the cost.
    assert event["cost_usd"] == original.cost_usd and "llm.cost.total" not in event["attributes"]
    assert ObservabilityEvent.model_validate(event).to_span(2).cost_usd == original.cost_usd
    # Without it (another sender), the GenAI keys price the call the same way.
    assert event["attributes"]["gen_ai.provider.name"] == "anthropic"
    del event["cost_usd"]
    collected = ObservabilityEvent.model_validate(event).to_span(2)
    assert collected.cost_usd == pytest.approx(original.cost_usd, rel=1e-12)
    # A sender's cost that is no price stays an attribute; the span is kept and priced.
    (span,) = request.resource_spans[0].scope_spans[0].spans
    (cost,) = [kv for kv in span.attributes if kv.key == "llm.cost.total"]
    cost.value.double_value = -5.0
    (event,), rejected = to_events(request)
    assert rejected == [] and "cost_usd" not in event and event["attributes"]["llm.cost.total"] == -5.0
    assert ObservabilityEvent.model_validate(event).to_span(2).cost_usd == pytest.approx(original.cost_usd)
