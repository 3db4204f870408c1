"""MLOps sinks of the observability connector: Opik (settings, wire format, sink, host facade),
OTLP/HTTP export in the GenAI conventions (``otlp_*``) and the circuit breaker the delivery layer
keeps per sink.

Importing this package is cheap: the ``opik`` client loads only when an Opik sink is built (Opik
configured), never on an agent's hot path.
"""

if __name__ == "mlops":  # the host's spelling: one module object for both names (src/_import_alias.py)
    import _import_alias

    _import_alias.adopt(__name__, __file__)

from .circuit_breaker import CircuitBreaker, CircuitState
from .opik_connector import (
    OpikConnector,
    get_opik_connector,
    reset_opik_connector,
    set_opik_connector,
)
from .opik_ids import opik_span_id, opik_trace_id
from .opik_settings import OpikConfig, opik_configured

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "OpikConfig",
    "OpikConnector",
    "get_opik_connector",
    "opik_configured",
    "opik_span_id",
    "opik_trace_id",
    "reset_opik_connector",
    "set_opik_connector",
]
