"""The USD cost of one LLM call: the pinned price library (``genai-prices``) or an override.

Token convention (LangChain's ``usage_metadata``, and the library's own): ``input_tokens`` is every
input token, cache reads and cache writes included; ``output_tokens`` is every output token,
reasoning included. ``cache_read_tokens``, ``cache_write_tokens`` and ``reasoning_tokens`` say how
many of those were of that kind, so each is at most its total. The library bills the remainder at
the plain input or output price and each part at its own price where the model has one (a model
without a reasoning price bills reasoning as output, as providers do). Anthropic's raw API counts
``input_tokens`` without the cache: callers add the cache back first, as LangChain does.

No network at run time: the library can fetch fresh prices (``UpdatePrices``), and its
``calc_price`` uses whatever snapshot such a thread installed. This module never calls it: it
reads the data bundled with the pinned release (``genai_prices.data``), so a price is the same on
every machine running the same lock, and nothing here opens a socket.

Speed: the library's ``ModelPrice.calc_price`` resolves its unit registry on every call, far too
slow for the flusher's path (``benchmarks/README.md``). Its arithmetic is linear in the token
counts between two tier thresholds of input tokens, so for each price a model has we ask the
library once per tier for the price of one token of each kind and then price a call as a sum of
products: the library's numbers (tests compare the two on every shape of price in its data),
without its walk.
The model lookup is memoised per (provider, model).

An unknown provider or model gives ``None``: the caller stores a null cost and counts the call as
unpriced, never as free. A provider the library does not know (``ollama``, a private gateway) is
not guessed from the model name, because the same weights cost something else there; an
override names such models. Without a provider the library finds one from the model name where
it can (``claude-*``, ``gpt-*``, ``gemini-*``...), or from a ``provider/model`` name.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Final, Literal

from .settings import MAX_MODEL_KEY_CHARS, PriceOverride, PricingSettings

if TYPE_CHECKING:  # the library's data module takes ~0.6 s to import: only on the first price
    from genai_prices.types import ModelInfo, ModelPrice, Provider

__all__ = [
    "Price",
    "Pricer",
    "PricingInputError",
    "build_pricer",
    "default_pricer",
    "library_version",
    "price_call",
]


def library_version() -> str:
    """The price data's release (pinned in pyproject.toml): prices change only with it."""
    from importlib.metadata import version

    return version("genai-prices")


# Matches kept by (provider, model): an LLM application uses a handful of models, a bad caller
# could send endless names; the bound keeps that from growing memory.
_MATCH_CACHE_SIZE: Final = 4096


class PricingInputError(ValueError):
    """Token counts that cannot describe a call (negative, not integers, a part above its total)."""


@dataclass(frozen=True, slots=True)
class Price:
    """A priced call. ``total_usd`` may exceed ``input_usd + output_usd`` by per-request fees."""

    total_usd: float
    input_usd: float
    output_usd: float
    source: Literal["library", "override"]
    provider: str | None  # the library's provider id, or an override key's provider part
    model: str  # the library's model id, or the override key that matched


# One part of a price (input, output or total) for one input-token tier, in USD: per call (per-
# request fees), then per input, output, cache-read, cache-write and reasoning token. Cache tokens
# are input tokens too and reasoning tokens output tokens: their rates are what they add on top.
# Floats: converting a Decimal to a float costs more than the whole sum, and a price is an estimate
# good to far more digits than a float loses (tests compare with the library to 1e-12).
_Part = tuple[float, float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class _TierRates:
    input: _Part
    output: _Part
    total: _Part


@dataclass(frozen=True, slots=True)
class _Rates:
    """One price of a model: ``tiers[i]`` applies when ``thresholds[i-1] < input_tokens <= thresholds[i]``."""

    thresholds: tuple[int, ...]
    tiers: tuple[_TierRates, ...]


@dataclass(frozen=True, slots=True)
class _Match:
    provider: str | None
    model: str
    source: Literal["library", "override"]
    info: ModelInfo | None  # the library's model (its prices may depend on the date), None for an override
    rates: tuple[tuple[ModelPrice, _Rates | None], ...]  # per price the model has; None: not priced by tokens


def price_call(
    provider: str | None,
    model: str | None,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    at: datetime | None = None,
) -> Price | None:
    """The library's price of one call (no overrides); see :meth:`Pricer.price_call`."""
    return _DEFAULT.price_call(
        provider, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, at
    )


def build_pricer(settings: PricingSettings) -> Pricer:
    """The pricer for the ``pricing`` section of ``observability.yaml``."""
    return Pricer(settings.overrides, enabled=settings.enabled)


class Pricer:
    """Prices calls from the library's bundled data, with per-model overrides that win over it."""

    def __init__(self, overrides: Mapping[str, PriceOverride] | None = None, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._overrides = {key.strip().lower(): _override_match(key, value) for key, value in (overrides or {}).items()}

    def price_call(
        self,
        provider: str | None,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        at: datetime | None = None,
    ) -> Price | None:
        """USD price of one call, or None when the model (or its provider) has no known price.

        ``at`` (default now) picks the price in force then: some models changed price over time,
        a few cost less at night. Raises :class:`PricingInputError` for impossible token counts.
        """
        counts = _checked_counts(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens)
        for name, value in (("provider", provider), ("model", model)):
            if value is not None and not isinstance(value, str):
                raise PricingInputError(f"{name} must be a string or None, got {type(value).__name__}")
        if not self.enabled or not model:
            return None
        model_key = model.strip().lower()
        provider_key = provider.strip().lower() if provider else ""
        if not model_key or len(model_key) > MAX_MODEL_KEY_CHARS or len(provider_key) > MAX_MODEL_KEY_CHARS:
            return None
        match = None
        if self._overrides:
            match = self._overrides.get(f"{provider_key}/{model_key}") if provider_key else None
            match = match or self._overrides.get(model_key)
        match = match or _library_match(provider_key, model_key)
        if match is None:
            return None
        rates = _rates_at(match, at)
        if rates is None:
            return None
        return _priced(match, rates, counts)


def _checked_counts(
    input_tokens: int, output_tokens: int, cache_read: int, cache_write: int, reasoning: int
) -> tuple[int, int, int, int, int]:
    counts = (input_tokens, output_tokens, cache_read, cache_write, reasoning)
    # bool is an int subclass, and no token count: hence ``type(...) is int``.
    if not all(type(value) is int and value >= 0 for value in counts):
        names = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
        name, value = next((n, v) for n, v in zip(names, counts, strict=True) if type(v) is not int or v < 0)
        raise PricingInputError(f"{name} must be a non-negative integer, got {value!r}")
    if cache_read + cache_write > input_tokens:
        raise PricingInputError(
            f"cache_read_tokens ({cache_read}) + cache_write_tokens ({cache_write}) exceed input_tokens "
            f"({input_tokens}): input_tokens must include the cached tokens"
        )
    if reasoning > output_tokens:
        raise PricingInputError(
            f"reasoning_tokens ({reasoning}) exceed output_tokens ({output_tokens}): "
            "output_tokens must include the reasoning tokens"
        )
    return counts


def _priced(match: _Match, rates: _Rates, counts: tuple[int, int, int, int, int]) -> Price:
    n_in, n_out, n_read, n_write, n_reason = counts
    tier = rates.tiers[bisect.bisect_left(rates.thresholds, n_in)]
    i, o, t = tier.input, tier.output, tier.total
    return Price(
        total_usd=t[0] + t[1] * n_in + t[2] * n_out + t[3] * n_read + t[4] * n_write + t[5] * n_reason,
        input_usd=i[0] + i[1] * n_in + i[2] * n_out + i[3] * n_read + i[4] * n_write + i[5] * n_reason,
        output_usd=o[0] + o[1] * n_in + o[2] * n_out + o[3] * n_read + o[4] * n_write + o[5] * n_reason,
        source=match.source,
        provider=match.provider,
        model=match.model,
    )


def _rates_at(match: _Match, at: datetime | None) -> _Rates | None:
    if match.info is None or len(match.rates) == 1:
        return match.rates[0][1]
    model_price = match.info.get_prices(at or datetime.now(UTC))
    for candidate, rates in match.rates:
        if candidate is model_price:
            return rates
    return None  # unreachable with the library's data: every price it can pick was linearised


# --- the library ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _providers() -> tuple[Provider, ...]:
    from genai_prices.data import providers

    return tuple(providers)


@lru_cache(maxsize=_MATCH_CACHE_SIZE)
def _library_match(provider_key: str, model_key: str) -> _Match | None:
    """The library's model for this provider and model name (both lower case), memoised."""
    from genai_prices.data_snapshot import find_provider_by_id

    providers = list(_providers())
    if provider_key and provider_key != "litellm":  # LiteLLM names the real provider in the model
        found = find_provider_by_id(providers, provider_key)
        if found is None:
            return None
        _, slash, rest = model_key.partition("/")  # "openai/gpt-4o" with provider "openai"
        return _model_match(found, model_key, providers) or (
            _model_match(found, rest, providers) if slash and rest else None
        )
    for candidate in providers:
        if candidate.model_match is not None and candidate.model_match.is_match(model_key):
            return _model_match(candidate, model_key, providers)
    prefix, slash, rest = model_key.partition("/")
    if slash and rest and (found := find_provider_by_id(providers, prefix)) is not None:
        return _model_match(found, rest, providers)
    return None


def _model_match(provider: Provider, model_key: str, providers: list[Provider]) -> _Match | None:
    from genai_prices.types import ModelPrice

    info = provider.find_model(model_key, all_providers=providers)
    if info is None:
        return None
    prices = [info.prices] if isinstance(info.prices, ModelPrice) else [c.prices for c in info.prices]
    return _Match(
        provider=provider.id,
        model=info.id,
        source="library",
        info=info,
        rates=tuple((price, _linearised(price)) for price in prices),
    )


# --- overrides -----------------------------------------------------------------------------------


def _override_match(key: str, override: PriceOverride) -> _Match:
    """An override becomes a library price, so both are computed by the same arithmetic."""
    from genai_prices.types import ModelPrice

    def mtok(value: float | None) -> Decimal | None:
        return None if value is None else Decimal(repr(value))

    price = ModelPrice(
        input_mtok=mtok(override.input_per_mtok),
        output_mtok=mtok(override.output_per_mtok),
        cache_read_mtok=mtok(override.cache_read_per_mtok),
        cache_write_mtok=mtok(override.cache_write_per_mtok),
        output_reasoning_mtok=mtok(override.reasoning_per_mtok),
    )
    provider, slash, _ = key.strip().partition("/")
    return _Match(
        provider=provider if slash else None,
        model=key.strip(),
        source="override",
        info=None,
        rates=((price, _linearised(price)),),
    )


# --- linearisation -------------------------------------------------------------------------------

_TOKEN_PRICES: Final = frozenset({"input_mtok", "output_mtok"})


def _linearised(price: ModelPrice) -> _Rates | None:
    """Per-token rates of one library price, tier by tier, measured with the library's arithmetic.

    None when the price is by something other than tokens (audio hours, characters): tokens
    cannot say what such a call cost. A price with nothing in it is the library saying "free".
    """
    from genai_prices.types import TieredPrices

    values = {key: value for key, value in vars(price).items() if not key.startswith("_") and value is not None}
    if values and not (_TOKEN_PRICES & values.keys()):
        return None
    thresholds = sorted(
        {tier.start for value in values.values() if isinstance(value, TieredPrices) for tier in value.tiers}
    )
    # A call with ``a`` input tokens is in tier i when thresholds[i-1] < a <= thresholds[i]: each tier
    # is measured at its first token count, and at the next one for the input rate.
    starts = [0, *(threshold + 1 for threshold in thresholds)]
    ends = [*thresholds, None]
    if any(end is not None and start + 1 > end for start, end in zip(starts, ends, strict=True)):
        return None  # tiers closer than two tokens cannot be measured this way (none in the pinned data)
    return _Rates(thresholds=tuple(thresholds), tiers=tuple(_tier_rates(price, start) for start in starts))


def _tier_rates(price: ModelPrice, a: int) -> _TierRates:
    """Rates measured at ``a`` input tokens (and ``a + 1``, for the input rate) with the library."""
    from genai_prices.types import Usage

    def cost(**usage: int) -> tuple[Decimal, Decimal, Decimal]:
        result = price.calc_price(Usage(**usage))
        return result["input_price"], result["output_price"], result["total_price"]

    base = cost(input_tokens=a)
    one_more = cost(input_tokens=a + 1)
    with_output = cost(input_tokens=a, output_tokens=1)
    read = cost(input_tokens=a + 1, cache_read_tokens=1)
    write = cost(input_tokens=a + 1, cache_write_tokens=1)
    reason = cost(input_tokens=a, output_tokens=1, output_reasoning_tokens=1)

    def part(k: int) -> _Part:
        per_input = one_more[k] - base[k]
        return (
            float(base[k] - per_input * a),
            float(per_input),
            float(with_output[k] - base[k]),
            float(read[k] - one_more[k]),
            float(write[k] - one_more[k]),
            float(reason[k] - with_output[k]),
        )

    return _TierRates(input=part(0), output=part(1), total=part(2))


_DEFAULT: Final = Pricer()


def default_pricer() -> Pricer:
    """The library's prices without overrides (what a row is priced with when nobody passes a pricer)."""
    return _DEFAULT
