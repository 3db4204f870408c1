"""Trace-consistent sampling: every process makes the same keep/drop decision for one trace.

Like OpenTelemetry's TraceIdRatioBased, the decision is a pure function of the trace id, so
the spans of one trace are kept or dropped together wherever they are produced. W3C ids use
their lower 56 bits (random in both UUIDv7 and W3C ids); other ids (``"trace_456"``) are hashed.

The policy (:class:`Sampler`) is parent-based: the decision is taken once, at a trace's root,
and every descendant follows its parent's flag, local or remote (``traceparent`` flags). Only
the root's agent chooses the rate, so an override never splits a trace. Built from settings by
``config.build_sampler``; this module stays import-light because the hot path calls it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from hashlib import blake2b

__all__ = ["Sampler", "check_sample_rate", "trace_sampled"]

_BOUND = 1 << 56
_HEX = frozenset("0123456789abcdef")


def _trace_bits(trace_id: str) -> int:
    if len(trace_id) == 32 and _HEX.issuperset(trace_id):
        return int(trace_id[18:], 16)
    return int.from_bytes(blake2b(trace_id.encode(), digest_size=7).digest(), "big")


def _threshold(rate: float) -> int:
    # A trace is kept when its 56 random bits fall below the threshold; comparing integers
    # (not floats) keeps the answer identical on every platform.
    if rate >= 1.0:
        return _BOUND
    if rate <= 0.0:
        return 0
    return int(rate * _BOUND)


def check_sample_rate(value: object) -> float:
    """A caller's ``sample_rate`` as a float, or a ValueError saying what is accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"sample_rate {value!r} is not a number between 0 and 1")
    return float(value)


def trace_sampled(trace_id: str, rate: float) -> bool:
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return _trace_bits(trace_id) < int(rate * _BOUND)


class Sampler:
    """The sampling policy: which traces are kept, decided at the root, from the trace id.

    ``production_rate`` replaces ``default_rate`` when ``environment`` is production;
    ``agent_rates`` and ``always_sample_agents`` apply to traces whose root span is started
    by that agent. Because every rate compares the same trace-id bits against a threshold,
    a lower rate keeps a subset of what a higher rate keeps: combining two rates (the
    configured one and a caller's ``sample_rate``) is simply the smaller of the two.
    """

    __slots__ = ("_agent_thresholds", "_default", "agent_rates", "always_sample_agents", "always_sample_errors", "rate")

    def __init__(
        self,
        default_rate: float = 1.0,
        *,
        always_sample_errors: bool = True,
        agent_rates: Mapping[str, float] | None = None,
        always_sample_agents: Iterable[str] = (),
        production_rate: float | None = None,
        environment: str | None = None,
    ) -> None:
        in_production = (environment or "").strip().lower() in ("production", "prod")
        self.rate = production_rate if in_production and production_rate is not None else default_rate
        self.always_sample_errors = always_sample_errors
        self.agent_rates = dict(agent_rates or {})
        self.always_sample_agents = frozenset(always_sample_agents)
        self._default = _threshold(self.rate)
        thresholds = {name: _threshold(rate) for name, rate in self.agent_rates.items()}
        thresholds.update(dict.fromkeys(self.always_sample_agents, _BOUND))
        self._agent_thresholds = thresholds

    def rate_for(self, agent_name: str | None) -> float:
        """The rate a trace rooted at ``agent_name`` is sampled at (None: the default)."""
        if agent_name in self.always_sample_agents:
            return 1.0
        return self.agent_rates.get(agent_name, self.rate) if agent_name is not None else self.rate

    def sample_root(self, trace_id: str, agent_name: str | None = None, cap: float = 1.0) -> bool:
        """Keep a new trace rooted at ``agent_name``? ``cap`` lowers the rate (a caller's rate).

        On the hot path for every root span: two dict lookups and, below rate 1, one integer
        parse of the trace id.
        """
        threshold = self._agent_thresholds.get(agent_name, self._default) if agent_name is not None else self._default
        if cap < 1.0:
            threshold = min(threshold, _threshold(cap))
        if threshold >= _BOUND:
            return True
        if threshold <= 0:
            return False
        return _trace_bits(trace_id) < threshold

    def decide(
        self,
        trace_id: str,
        agent_name: str | None = None,
        parent_sampled: bool | None = None,
        cap: float = 1.0,
    ) -> bool:
        """Parent-based: an existing decision (local or from a ``traceparent``) is honoured;
        a caller's ``cap`` can still lower it, never raise it."""
        if parent_sampled is not None:
            return parent_sampled and (cap >= 1.0 or _trace_bits(trace_id) < _threshold(cap))
        return self.sample_root(trace_id, agent_name, cap)

    def keep(self, sampled: bool, status: str | None) -> bool:
        """Whether a finished span goes on: sampled, or an error that ``always_sample_errors`` keeps."""
        return sampled or (self.always_sample_errors and status == "error")

    def __repr__(self) -> str:
        return (
            f"Sampler(rate={self.rate}, agent_rates={self.agent_rates}, "
            f"always_sample_agents={sorted(self.always_sample_agents)}, "
            f"always_sample_errors={self.always_sample_errors})"
        )
