"""Pricing one LLM call: the pinned library's prices, overrides, unknown models, no network.

Expected prices are computed here from the library's price data for the model (its per-million
rates, read from ``genai_prices.data``) with the token convention written out, never by calling
the code under test; one test also compares with the library's own ``calc_price`` on a model of
every price shape in the bundled data.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import data_snapshot
from genai_prices.data import providers as library_providers
from genai_prices.data_snapshot import find_provider_by_id
from genai_prices.types import ModelPrice, TieredPrices, Usage

from src.agents.ml_foundation.observability_connector import pricing
from src.agents.ml_foundation.observability_connector.config import ConfigError, load_settings
from src.agents.ml_foundation.observability_connector.pricing import (
    Price,
    Pricer,
    PricingInputError,
    build_pricer,
    library_version,
    price_call,
)
from src.agents.ml_foundation.observability_connector.settings import PriceOverride, PricingSettings

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def library_model_price(provider_id: str, model_ref: str, at: datetime = AT) -> ModelPrice:
    """The library's price entry for a model, found through the library's own lookup."""
    provider = find_provider_by_id(list(library_providers), provider_id)
    assert provider is not None, provider_id
    info = provider.find_model(model_ref, all_providers=list(library_providers))
    assert info is not None, (provider_id, model_ref)
    return info.get_prices(at)


def rate(model_price: ModelPrice, key: str, input_tokens: int) -> Decimal | None:
    """USD per million tokens for ``key``; a tiered price by the call's input tokens (cliff tiers)."""
    value = getattr(model_price, key)
    if isinstance(value, TieredPrices):
        for tier in reversed(value.tiers):
            if input_tokens > tier.start:
                return tier.price
        return value.base
    return value


def expected_usd(
    model_price: ModelPrice,
    input_tokens: int,
    output_tokens: int,
    cache_read: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> float:
    """The convention: input includes the cache, output includes reasoning; a part without its own
    price is billed at its total's price."""
    r_in = rate(model_price, "input_mtok", input_tokens) or Decimal(0)
    r_out = rate(model_price, "output_mtok", input_tokens) or Decimal(0)
    r_read = rate(model_price, "cache_read_mtok", input_tokens)
    r_write = rate(model_price, "cache_write_mtok", input_tokens)
    r_reason = rate(model_price, "output_reasoning_mtok", input_tokens)
    usd = (
        (input_tokens - cache_read - cache_write) * r_in
        + cache_read * (r_in if r_read is None else r_read)
        + cache_write * (r_in if r_write is None else r_write)
        + (output_tokens - reasoning) * r_out
        + reasoning * (r_out if r_reason is None else r_reason)
    ) / 1_000_000
    return float(usd)


# --- several providers against the library's data -------------------------------------------------


def test_openai_cache_reads_are_billed_at_the_cache_price_and_part_of_the_input() -> None:
    data = library_model_price("openai", "gpt-4o")
    assert data.cache_read_mtok is not None and data.cache_read_mtok < data.input_mtok  # a real discount to see
    price = price_call("openai", "gpt-4o", 12_000, 800, cache_read_tokens=10_000, at=AT)
    assert price is not None
    assert price.total_usd == pytest.approx(expected_usd(data, 12_000, 800, cache_read=10_000), rel=1e-12)
    # Reading the cache as if it were extra input would cost more: the convention is visible.
    assert price.total_usd < float((22_000 * data.input_mtok + 800 * data.output_mtok) / 1_000_000)
    assert (price.provider, price.model, price.source) == ("openai", "gpt-4o", "library")
    assert price.input_usd + price.output_usd == pytest.approx(price.total_usd, rel=1e-12)


def test_openai_reasoning_tokens_are_output_tokens() -> None:
    data = library_model_price("openai", "o3-mini")
    assert data.output_reasoning_mtok is None  # billed as output, as OpenAI does
    with_reasoning = price_call("openai", "o3-mini", 1_000, 5_000, reasoning_tokens=4_500, at=AT)
    without = price_call("openai", "o3-mini", 1_000, 5_000, at=AT)
    assert with_reasoning is not None and without is not None
    assert with_reasoning.total_usd == without.total_usd == pytest.approx(expected_usd(data, 1_000, 5_000), rel=1e-12)
    assert with_reasoning.output_usd == pytest.approx(float(5_000 * data.output_mtok / 1_000_000), rel=1e-12)


def test_a_distinct_reasoning_price_is_applied_to_the_reasoning_part_only() -> None:
    data = library_model_price("perplexity", "sonar-deep-research")
    assert data.output_reasoning_mtok is not None and data.output_reasoning_mtok != data.output_mtok
    price = price_call("perplexity", "sonar-deep-research", 2_000, 10_000, reasoning_tokens=7_000, at=AT)
    assert price is not None
    assert price.output_usd == pytest.approx(expected_usd(data, 0, 10_000, reasoning=7_000), rel=1e-12)
    assert price.total_usd == pytest.approx(expected_usd(data, 2_000, 10_000, reasoning=7_000), rel=1e-12)


def test_anthropic_cache_reads_and_writes_each_at_their_own_price() -> None:
    data = library_model_price("anthropic", "claude-sonnet-4-5")
    read, write, plain = (rate(data, key, 50_000) for key in ("cache_read_mtok", "cache_write_mtok", "input_mtok"))
    assert read is not None and write is not None and plain is not None and read < plain < write
    price = price_call(
        "anthropic", "claude-sonnet-4-5", 50_000, 1_200, cache_read_tokens=30_000, cache_write_tokens=15_000, at=AT
    )
    assert price is not None
    assert price.total_usd == pytest.approx(
        expected_usd(data, 50_000, 1_200, cache_read=30_000, cache_write=15_000), rel=1e-12
    )


def test_anthropic_long_prompt_tier_applies_to_every_token_above_the_threshold() -> None:
    data = library_model_price("anthropic", "claude-sonnet-4-5")
    assert isinstance(data.input_mtok, TieredPrices)
    threshold = data.input_mtok.tiers[0].start
    at_threshold = price_call(None, "claude-sonnet-4-5", threshold, 1_000, cache_read_tokens=100_000, at=AT)
    above = price_call(None, "claude-sonnet-4-5", threshold + 1, 1_000, cache_read_tokens=100_000, at=AT)
    assert at_threshold is not None and above is not None
    assert at_threshold.total_usd == pytest.approx(expected_usd(data, threshold, 1_000, cache_read=100_000), rel=1e-12)
    assert above.total_usd == pytest.approx(expected_usd(data, threshold + 1, 1_000, cache_read=100_000), rel=1e-12)
    assert above.total_usd > 1.5 * at_threshold.total_usd  # the higher tier, not one more token


def test_google_by_langchain_provider_name_with_tiers_and_reasoning() -> None:
    data = library_model_price("google", "gemini-2.5-pro")
    for input_tokens in (120_000, 250_000):
        price = price_call("google_genai", "gemini-2.5-pro", input_tokens, 3_000, 40_000, 0, 2_000, at=AT)
        assert price is not None and price.provider == "google"
        assert price.total_usd == pytest.approx(
            expected_usd(data, input_tokens, 3_000, cache_read=40_000, reasoning=2_000), rel=1e-12
        )
    vertex = price_call("google_vertexai", "gemini-2.5-pro", 1_000, 100, at=AT)
    assert vertex is not None and vertex.total_usd == pytest.approx(expected_usd(data, 1_000, 100), rel=1e-12)


def test_aws_bedrock_model_ids() -> None:
    data = library_model_price("aws", "anthropic.claude-3-haiku-20240307-v1:0")
    price = price_call("amazon_bedrock", "anthropic.claude-3-haiku-20240307-v1:0", 4_000, 500, at=AT)
    assert price is not None and price.provider == "aws"
    assert price.total_usd == pytest.approx(expected_usd(data, 4_000, 500), rel=1e-12)


@pytest.mark.parametrize(
    ("model", "provider_id"),
    [
        ("claude-3-5-haiku-latest", "anthropic"),
        ("gemini-2.5-flash", "google"),
        ("gpt-4o-mini", "openai"),
        ("mistral-large-latest", "mistral"),
        ("grok-3", "x-ai"),
    ],
)
def test_the_provider_is_inferred_from_the_model_name_when_missing(model: str, provider_id: str) -> None:
    data = library_model_price(provider_id, model)
    price = price_call(None, model, 3_000, 400, at=AT)
    assert price is not None and price.provider == provider_id
    assert price.total_usd == pytest.approx(expected_usd(data, 3_000, 400), rel=1e-12)


def test_a_provider_prefix_in_the_model_name_names_the_provider() -> None:
    data = library_model_price("openai", "gpt-4o")
    price = price_call(None, "openai/gpt-4o", 1_000, 100, at=AT)
    litellm = price_call("litellm", "openai/gpt-4o", 1_000, 100, at=AT)
    assert price is not None and litellm is not None and price.provider == litellm.provider == "openai"
    assert price.total_usd == litellm.total_usd == pytest.approx(expected_usd(data, 1_000, 100), rel=1e-12)
    both = price_call("openai", "openai/gpt-4o", 1_000, 100, at=AT)
    assert both is not None and both.total_usd == price.total_usd


def test_the_price_in_force_at_the_call_is_used() -> None:
    """DeepSeek's off-peak discount: the same call costs less at night (UTC)."""
    peak_at = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    night_at = datetime(2026, 11, 20, 20, 0, tzinfo=UTC)
    peak = price_call("deepseek", "deepseek-chat", 10_000, 2_000, cache_read_tokens=4_000, at=peak_at)
    night = price_call("deepseek", "deepseek-chat", 10_000, 2_000, cache_read_tokens=4_000, at=night_at)
    assert peak is not None and night is not None and night.total_usd < peak.total_usd
    for price, at in ((peak, peak_at), (night, night_at)):
        data = library_model_price("deepseek", "deepseek-chat", at)
        assert price.total_usd == pytest.approx(expected_usd(data, 10_000, 2_000, cache_read=4_000), rel=1e-12)


def test_matches_the_librarys_own_calculation_on_every_price_shape() -> None:
    """The per-token rates reproduce ``ModelPrice.calc_price`` on one model of each shape of price
    in the bundled data (which keys it prices, which are tiered and where), across tiers."""
    shapes: dict[tuple[object, ...], ModelPrice] = {}
    for provider in library_providers:
        for model in provider.models:
            prices = [model.prices] if isinstance(model.prices, ModelPrice) else [c.prices for c in model.prices]
            for model_price in prices:
                values = {k: v for k, v in vars(model_price).items() if v is not None}
                if values and not {"input_mtok", "output_mtok"} & values.keys():
                    continue  # priced by audio hours, characters...: not from tokens (None, tested below)
                shape = tuple(
                    sorted(
                        (key, tuple(t.start for t in v.tiers) if isinstance(v, TieredPrices) else None)
                        for key, v in values.items()
                    )
                )
                shapes.setdefault(shape, model_price)
    assert len(shapes) > 30
    rng = random.Random(19)
    checked = 0
    for model_price in shapes.values():
        rates = pricing._linearised(model_price)
        assert rates is not None
        match = pricing._Match(provider="p", model="m", source="library", info=None, rates=((model_price, rates),))
        edges = [t + d for t in rates.thresholds for d in (0, 1)]
        for input_tokens in [0, 1, rng.randrange(1, 50_000), rng.randrange(1, 2_000_000), *edges]:
            cache_read = rng.randrange(0, input_tokens // 2 + 1)
            cache_write = rng.randrange(0, input_tokens - cache_read + 1)
            output_tokens = rng.randrange(0, 100_000)
            reasoning = rng.randrange(0, output_tokens + 1)
            counts = (input_tokens, output_tokens, cache_read, cache_write, reasoning)
            ours = pricing._priced(match, rates, counts)
            theirs = model_price.calc_price(
                Usage(
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cache_read_tokens=cache_read,
                    cache_write_tokens=cache_write,
                    output_reasoning_tokens=reasoning,
                )
            )
            assert ours.total_usd == pytest.approx(float(theirs["total_price"]), rel=1e-12, abs=1e-15), model_price
            assert ours.input_usd == pytest.approx(float(theirs["input_price"]), rel=1e-12, abs=1e-15)
            assert ours.output_usd == pytest.approx(float(theirs["output_price"]), rel=1e-12, abs=1e-15)
            checked += 1
    assert checked > 150


# --- unknown, unpriced, bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        (None, "my-own-finetune"),
        ("openai", "not-a-model"),
        ("ollama", "llama3.1:8b"),  # a provider the library does not know: not guessed from the name
        ("ollama", "gpt-4o"),
        (None, ""),
        (None, None),
        ("openai", "x" * 300),
    ],
)
def test_an_unknown_model_or_provider_is_unpriced_not_free(provider: str | None, model: str | None) -> None:
    assert price_call(provider, model, 1_000, 100) is None


def test_a_model_priced_by_something_other_than_tokens_is_unpriced() -> None:
    data = library_model_price("groq", "whisper-large-v3")
    assert data.input_mtok is None and data.output_mtok is None
    assert price_call("groq", "whisper-large-v3", 1_000, 100) is None


def test_a_free_model_costs_zero() -> None:
    data = library_model_price("github-copilot", "gpt-4o")
    assert not {k for k, v in vars(data).items() if v is not None}  # the library lists it with no price
    price = price_call("github-copilot", "gpt-4o", 1_000, 100)
    assert price is not None and price.total_usd == 0.0


def test_a_model_or_provider_that_is_not_a_string_raises_a_clear_error() -> None:
    with pytest.raises(PricingInputError, match="model must be a string or None, got int"):
        price_call("openai", 4, 10, 10)  # type: ignore[arg-type]
    with pytest.raises(PricingInputError, match="provider must be a string or None, got dict"):
        price_call({}, "gpt-4o", 10, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 10), "input_tokens must be a non-negative integer, got -1"),
        ((10, 2.5), "output_tokens must be a non-negative integer, got 2.5"),
        ((True, 10), "input_tokens must be a non-negative integer, got True"),
        ((10, 10, "3"), "cache_read_tokens must be a non-negative integer, got '3'"),
        ((100, 10, 80, 30), "cache_read_tokens (80) + cache_write_tokens (30) exceed input_tokens (100)"),
        ((100, 10, 0, 0, 11), "reasoning_tokens (11) exceed output_tokens (10)"),
    ],
)
def test_impossible_token_counts_raise_a_clear_error(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(PricingInputError) as caught:
        price_call("openai", "gpt-4o", *args)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_model_lookups_are_memoised_and_bounded() -> None:
    info = pricing._library_match.cache_info
    assert pricing._library_match.cache_parameters()["maxsize"] == 4096
    price_call("anthropic", "claude-opus-4-1", 10, 10)
    before = info()
    for _ in range(3):
        price_call("Anthropic ", "Claude-Opus-4-1", 10, 10)
    after = info()
    assert after.hits - before.hits == 3 and after.misses == before.misses


# --- overrides and settings ----------------------------------------------------------------------


def test_an_override_wins_over_the_library_and_prices_an_unknown_model() -> None:
    pricer = Pricer(
        {
            "my-llama-70b": PriceOverride(
                input_per_mtok=0.2, output_per_mtok=0.6, cache_read_per_mtok=0.05, cache_write_per_mtok=0.25
            ),
            "gpt-4o": PriceOverride(input_per_mtok=1, output_per_mtok=4),
            "azure/gpt-4o": PriceOverride(input_per_mtok=2, output_per_mtok=8, reasoning_per_mtok=3),
        }
    )
    llama = pricer.price_call("ollama", "My-Llama-70B", 1_000_000, 1_000_000, 400_000, 100_000)
    assert llama == Price(
        total_usd=pytest.approx(0.5 * 0.2 + 0.4 * 0.05 + 0.1 * 0.25 + 0.6),  # type: ignore[arg-type]
        input_usd=pytest.approx(0.5 * 0.2 + 0.4 * 0.05 + 0.1 * 0.25),  # type: ignore[arg-type]
        output_usd=pytest.approx(0.6),  # type: ignore[arg-type]
        source="override",
        provider=None,
        model="my-llama-70b",
    )
    # No cache price: cache reads cost the input price (they are input tokens).
    mini = pricer.price_call("openai", "gpt-4o", 1_000_000, 1_000_000, cache_read_tokens=500_000)
    assert mini is not None and mini.source == "override" and mini.total_usd == pytest.approx(1 + 4)
    # "provider/model" wins over the bare model name for that provider only.
    azure = pricer.price_call("azure", "gpt-4o", 1_000_000, 1_000_000, reasoning_tokens=250_000)
    assert azure is not None and (azure.provider, azure.model) == ("azure", "azure/gpt-4o")
    assert azure.total_usd == pytest.approx(2 + 0.75 * 8 + 0.25 * 3)
    # Another model still comes from the library.
    other = pricer.price_call("openai", "gpt-4o-mini", 1_000, 100, at=AT)
    assert other is not None and other.source == "library"


def test_the_pricing_section_of_observability_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text(
        "pricing:\n"
        "  enabled: true\n"
        "  overrides:\n"
        "    my-llama-70b: {input_per_mtok: 0.2, output_per_mtok: 0.6, cache_read_per_mtok: 0.05}\n"
        "    openai/gpt-4o: {input_per_mtok: 1, output_per_mtok: 2}\n"
    )
    pricer = build_pricer(load_settings(file).pricing)
    llama = pricer.price_call(None, "my-llama-70b", 2_000_000, 0, cache_read_tokens=1_000_000)
    assert llama is not None and llama.total_usd == pytest.approx(0.2 + 0.05)
    gpt = pricer.price_call("openai", "gpt-4o", 1_000_000, 1_000_000)
    assert gpt is not None and gpt.total_usd == pytest.approx(3.0)
    monkeypatch.setenv("OBS_PRICING__ENABLED", "false")
    assert build_pricer(load_settings(file).pricing).price_call("openai", "gpt-4o", 1_000, 100) is None


def test_defaults_price_from_the_library() -> None:
    settings = PricingSettings()
    assert settings.enabled and settings.overrides == {}
    assert build_pricer(settings).price_call("openai", "gpt-4o", 1_000, 100) is not None
    assert load_settings(ROOT / "config" / "observability.yaml").pricing.enabled


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "pricing:\n  overrides:\n    m: {input_per_mtok: -0.1, output_per_mtok: 1}\n",
            "pricing.overrides.m.input_per_mtok: -0.1 is out of range: accepted values are at least 0",
        ),
        (
            "pricing:\n  overrides:\n    m: {input_per_mtok: 1, output_per_mtok: .inf}\n",
            "pricing.overrides.m.output_per_mtok: inf is not accepted: Input should be a finite number",
        ),
        (
            "pricing:\n  overrides:\n    m: {input_per_mtok: 1, output_per_mtok: 1, cache_read_per_mtok: -1}\n",
            "pricing.overrides.m.cache_read_per_mtok: -1 is out of range",
        ),
        ("pricing:\n  overrides:\n    m: {output_per_mtok: 1}\n", "pricing.overrides.m.input_per_mtok: is required"),
        (
            "pricing:\n  overrides:\n    m: {input_per_mtok: 1, output_per_mtok: 1, output_price: 2}\n",
            "pricing.overrides.m.output_price: unknown key; accepted keys: input_per_mtok, output_per_mtok",
        ),
        (
            "pricing:\n  overrides:\n    M: {input_per_mtok: 1, output_per_mtok: 1}\n"
            "    m: {input_per_mtok: 2, output_per_mtok: 2}\n",
            "pricing.overrides: override keys 'M' and 'm' name the same model (case is ignored)",
        ),
        (
            "pricing:\n  overrides:\n    ' ': {input_per_mtok: 1, output_per_mtok: 1}\n",
            "pricing.overrides: override key ' ' is not a model name",
        ),
        ("pricing:\n  overrides:\n    m: 3\n", "pricing.overrides.m: 3 is not a mapping of keys to values"),
        ("pricing:\n  enabled: sometimes\n", "pricing.enabled: 'sometimes' is not true or false"),
    ],
)
def test_bad_pricing_settings_name_the_key_and_what_is_accepted(tmp_path: Path, yaml_text: str, expected: str) -> None:
    file = tmp_path / "observability.yaml"
    file.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_settings(file)
    assert expected in str(caught.value), str(caught.value)


# --- offline -------------------------------------------------------------------------------------


def test_prices_never_come_from_an_auto_updated_snapshot() -> None:
    """``UpdatePrices`` installs a fetched snapshot process-wide; our prices stay the pinned ones."""
    expected = price_call("openai", "gpt-4o", 1_000, 100, at=AT)
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[], from_auto_update=True))
    try:
        pricing._library_match.cache_clear()
        assert price_call("openai", "gpt-4o", 1_000, 100, at=AT) == expected
    finally:
        data_snapshot.set_custom_snapshot(None)


def test_pricing_opens_no_socket_and_starts_no_thread(tmp_path: Path) -> None:
    """Cold, in a fresh interpreter: importing the library and pricing with and without overrides."""
    script = textwrap.dedent(
        """
        import socket, threading

        def refuse(*args, **kwargs):
            raise AssertionError(f"network used: {args!r}")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.socket.sendto = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        from src.agents.ml_foundation.observability_connector.pricing import Pricer, price_call
        from src.agents.ml_foundation.observability_connector.settings import PriceOverride

        assert price_call("openai", "gpt-4o", 1000, 100) is not None
        assert price_call(None, "claude-sonnet-4-5", 300000, 100, 1000, 1000) is not None
        assert price_call("google_genai", "gemini-2.5-pro", 1000, 100, 0, 0, 50) is not None
        assert price_call("ollama", "llama3", 1, 1) is None
        pricer = Pricer({"llama3": PriceOverride(input_per_mtok=0.1, output_per_mtok=0.2)})
        assert pricer.price_call("ollama", "llama3", 1, 1) is not None
        assert threading.active_count() == 1, threading.enumerate()
        print("offline ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "offline ok"


def test_the_library_version_is_the_pinned_one() -> None:
    pinned = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if '"genai-prices==' in line)
    assert f'"genai-prices=={library_version()}"' in pinned
