"""The host codebase's Opik face (``mlops.opik_connector``): names its callers use, nothing more.

Spans reach Opik through the delivery layer like every other sink (``opik_sink.OpikSink`` behind
a ``SinkDelivery``: retries, circuit breaker, spool, replay). This module keeps the names the
host's code and contract script expect — ``OpikConnector`` with ``trace_agent``,
``trace_llm_call``, ``log_metric``, ``log_feedback``; ``CircuitBreaker`` / ``CircuitState``;
``get_opik_connector`` & co. — as a thin facade.

It never imports the agent: the agent binds itself (``bind_agent``, done when an agent resolves
a context that has Opik) and registers a factory for callers that use the facade before any
agent exists (:func:`register_agent_factory`). The wiring that builds the Opik delivery attaches
it (:meth:`OpikConnector.attach_delivery`) for status and flushing, and registers how to find
the process's configured connector (:func:`register_default_connector`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from src.agents.ml_foundation.observability_connector.redaction import redact_url

from .circuit_breaker import CircuitBreaker, CircuitState
from .opik_settings import OPIK_ENV_VARS, OpikConfig, opik_configured

__all__ = [
    "OPIK_ENV_VARS",
    "CircuitBreaker",  # re-exported: the host imports both from mlops.opik_connector
    "CircuitState",
    "OpikConfig",
    "OpikConnector",
    "get_opik_connector",
    "opik_configured",
    "register_agent_factory",
    "register_default_connector",
    "reset_opik_connector",
    "set_opik_connector",
]

log = logging.getLogger(__name__)


class DeliveryHandle(Protocol):
    """What the facade reads of the Opik sink's delivery (``delivery.SinkDelivery``)."""

    def status(self) -> dict[str, Any]: ...

    async def wait_idle(self, timeout: float | None = None) -> bool: ...


class OpikConnector:
    """The process's Opik facade: names, status, flushing, and a convenience API in Opik's terms."""

    def __init__(self, config: OpikConfig, *, delivery: DeliveryHandle | None = None, sink: Any = None) -> None:
        self.config = config
        self._delivery = delivery
        self._sink = sink
        self._agent_ref: weakref.ref[Any] | None = None
        self._owned_agent: Any = None
        self._lock = threading.Lock()
        self.feedback_sent = 0
        self._feedback_delivery: DeliveryHandle | None = None

    @classmethod
    def from_settings(cls, settings: Any = None, environ: Mapping[str, str] | None = None) -> OpikConnector:
        return cls(OpikConfig.from_settings(settings, environ))

    @classmethod
    def instance(cls) -> OpikConnector | None:
        """The process-wide connector when Opik is configured, else None."""
        return get_opik_connector()

    def attach_delivery(self, delivery: DeliveryHandle, sink: Any = None) -> None:
        """The Opik sink's delivery (status, :meth:`wait_until_sent`); set by the wiring that built it."""
        self._delivery = delivery
        self._sink = sink

    def attach_feedback_delivery(self, delivery: DeliveryHandle) -> None:
        """The feedback scores' Opik delivery (``opik_feedback``): its status, and :meth:`wait_until_sent`."""
        self._feedback_delivery = delivery

    @property
    def project_name(self) -> str:
        return self.config.project_name

    @property
    def workspace(self) -> str:
        return self.config.workspace

    @property
    def url(self) -> str:
        """Where spans go, without a password the URL may carry (for output; the client uses config.url)."""
        return redact_url(self.config.url)

    def __repr__(self) -> str:
        key = "set" if self.config.api_key else "unset"
        return (
            f"OpikConnector(url={self.url!r}, workspace={self.config.workspace!r}, "
            f"project={self.config.project_name!r}, api_key={key})"
        )

    # -- status and flushing ------------------------------------------------------------------

    def get_status(self) -> dict[str, Any]:
        """Where Opik is, and its delivery's breaker, counters and spool backlog."""
        status: dict[str, Any] = {
            "enabled": True,
            "url": self.url,
            "workspace": self.config.workspace,
            "project_name": self.config.project_name,
            "api_key_set": bool(self.config.api_key),
            "feedback_sent": self.feedback_sent,
        }
        if self._delivery is not None:
            status.update(self._delivery.status())
            status["spans_rejected"] = status.get("dead_lettered", 0)  # refused by Opik, kept as dead letters
        sink = self._sink
        if sink is not None:
            status["rejections"] = list(getattr(sink, "rejections", ()))[-10:]
        if self._feedback_delivery is not None:  # the scores' own breaker, counters and backlog
            status["feedback"] = self._feedback_delivery.status()
        return status

    async def wait_until_sent(self, timeout: float | None = 30.0) -> bool:
        """True once every batch handed to the Opik sink (spans, and feedback scores) was answered and
        its spool backlog is empty."""
        started = time.monotonic()
        for delivery in (self._delivery, self._feedback_delivery):
            if delivery is None:
                continue
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            if not await delivery.wait_idle(left):
                return False
        return True

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Deliver the bound agent's pending spans, then wait for Opik to have them (within ``timeout``)."""
        started = time.monotonic()
        agent = self._bound()
        if agent is not None and not await agent.flush(timeout):
            return False
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return await self.wait_until_sent(left)

    # -- the convenience API --------------------------------------------------------------------

    def bind_agent(self, agent: Any) -> None:
        """The agent whose collector :meth:`trace_agent` and friends record into."""
        self._agent_ref = weakref.ref(agent)

    def _bound(self) -> Any:
        return self._agent_ref() if self._agent_ref is not None else None

    def _agent(self) -> Any:
        agent = self._bound()
        if agent is not None:
            return agent
        with self._lock:
            agent = self._bound()
            if agent is None:
                if _agent_factory is None:
                    raise RuntimeError(
                        "OpikConnector has no agent to record spans with: create an ObservabilityConnectorAgent "
                        "(importing its module registers one) or call bind_agent(agent)"
                    )
                agent = self._owned_agent = _agent_factory()
                self._agent_ref = weakref.ref(agent)
        return agent

    @staticmethod
    def _context(trace_id: str | None, parent_span_id: str | None) -> dict[str, Any] | None:
        """A host-style context dict naming the span about to open inside trace ``trace_id``."""
        if trace_id is None:
            return None
        return {"trace_id": trace_id, "span_id": f"{random.getrandbits(64):016x}", "parent_span_id": parent_span_id}

    @contextlib.asynccontextmanager
    async def trace_agent(
        self,
        agent_name: str,
        operation: str,
        trace_id: str | None = None,
        parent_span_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        """``async with opik.trace_agent("gap_analyzer", "execute") as span:`` — a span, nested as usual.

        With ``trace_id`` the span joins that trace (under ``parent_span_id`` when given); without
        it, under the current span or as a new trace.
        """
        agent = self._agent()
        async with agent.span(operation, agent_name, self._context(trace_id, parent_span_id), metadata) as span:
            yield span

    @contextlib.asynccontextmanager
    async def trace_llm_call(
        self,
        agent_name: str,
        model: str,
        provider: str | None = None,
        *,
        operation: str = "llm_call",
        trace_id: str | None = None,
        parent_span_id: str | None = None,
        input_data: Any = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        """An LLM span (Opik type ``llm``); set tokens on the yielded span with ``span.set_llm(...)``."""
        async with self.trace_agent(agent_name, operation, trace_id, parent_span_id, metadata) as span:
            span.set_llm(model, input_tokens, output_tokens)
            if provider:
                span.attributes["llm.provider"] = provider
            if input_data is not None:
                span.set_input(input_data)
            yield span

    def log_metric(
        self,
        name: str,
        value: float,
        agent_name: str | None = None,
        trace_id: str | None = None,
        parent_span_id: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """A measurement on the current span; with ``trace_id``, a span of its own in that trace."""
        agent = self._agent()
        if trace_id is None:
            agent.log_metric(name, value, agent_name, attributes)
            return
        payload = {"metric.name": name, "metric.value": value, **(attributes or {})}
        with agent.span(f"metric.{name}", agent_name or "observability_connector",
                        self._context(trace_id, parent_span_id), payload):  # fmt: skip
            pass

    async def log_feedback(
        self,
        trace_id: str | None,
        name: str,
        value: float,
        *,
        span_id: str | None = None,
        reason: str | None = None,
        category_name: str | None = None,
    ) -> None:
        """A feedback score on a trace (or one of its spans): the agent's ``log_feedback``.

        Stored in the feedback table and sent to Opik through the delivery layer (spooled while
        Opik is down, replayed after), so an outage never raises here; a bad argument raises
        ``FeedbackInputError`` (a ``ValueError``). The bound agent's finished spans are delivered
        first, so the score normally follows the trace it scores into Opik.
        """
        agent = self._bound()
        if agent is not None:
            await agent.flush(self.config.request_timeout_s)
        else:
            agent = self._agent()
        await agent.log_feedback(
            trace_id=trace_id, span_id=span_id, name=name, value=value, reason=reason, category_name=category_name
        )
        self.feedback_sent += 1


# --------------------------------------------------------------------------- one per process

_instance: OpikConnector | None = None
_instance_lock = threading.Lock()
_default_connector: Callable[[], OpikConnector | None] | None = None
_agent_factory: Callable[[], Any] | None = None


def register_default_connector(find: Callable[[], OpikConnector | None] | None) -> None:
    """How :func:`get_opik_connector` finds the configured connector (the wiring registers it)."""
    global _default_connector
    _default_connector = find


def register_agent_factory(factory: Callable[[], Any] | None) -> None:
    """How a connector used before any agent exists gets one (the agent module registers it)."""
    global _agent_factory
    _agent_factory = factory


def get_opik_connector(settings: Any = None) -> OpikConnector | None:
    """The process's connector when Opik is configured; None when it is not.

    One set with :func:`set_opik_connector` wins; else the configured context's (registered by the
    wiring); else, with nothing registered, one built from ``settings`` and the environment.
    """
    global _instance
    if _instance is not None:
        return _instance
    if settings is None and _default_connector is not None:
        return _default_connector()
    with _instance_lock:
        if _instance is None and opik_configured(settings):
            _instance = OpikConnector.from_settings(settings)
            log.info("Opik facade: %r", _instance)
    return _instance


def set_opik_connector(connector: OpikConnector | None) -> None:
    global _instance
    with _instance_lock:
        _instance = connector


def reset_opik_connector(timeout: float = 1.0) -> None:
    """Forget the process's connector (tests; a process that re-reads its configuration).

    ``timeout`` is accepted for the callers that pass it: the facade holds no thread to stop.
    """
    set_opik_connector(None)
