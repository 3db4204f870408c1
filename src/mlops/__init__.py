"""MLOps sinks of the observability connector: Opik emission and the circuit breaker guarding it.

Importing this package is cheap: the ``opik`` client loads only when an :class:`OpikConnector`
is built (Opik configured), never on an agent's hot path.
"""

if __name__ == "mlops":  # the host's spelling: one module object for both names (src/_import_alias.py)
    import _import_alias

    _import_alias.adopt(__name__, __file__)

from .circuit_breaker import CircuitBreaker, CircuitState
from .opik_connector import (
    OpikConfig,
    OpikConnector,
    get_opik_connector,
    opik_configured,
    reset_opik_connector,
    set_opik_connector,
)
from .opik_ids import opik_span_id, opik_trace_id

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
