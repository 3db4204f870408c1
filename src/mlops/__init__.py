"""MLOps sinks of the observability connector: Opik (settings, wire format, sink, host facade) and
the circuit breaker the delivery layer keeps per sink.

Importing this package is cheap: the ``opik`` client loads only when an Opik sink is built (Opik
configured), never on an agent's hot path.
"""

if __name__ == "mlops":  # the host's spelling: one module object for both names (src/_import_alias.py)
    import importlib.util as _util
    import sys as _sys
    from pathlib import Path as _Path

    if _util.find_spec("src") is None:
        _sys.path.append(str(_Path(__file__).resolve().parents[2]))
    try:
        from src._import_alias import adopt as _adopt
    except ImportError as _exc:
        raise ImportError(f"{__name__!r} ({__file__}) needs its own 'src' package importable: {_exc}") from _exc
    _adopt(__name__, __file__)

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
