"""Names other systems know us by; kept import-free so the hot path can use them."""

OPIK_PROJECT = "e2i-causal-analytics"
OPIK_WORKSPACE = "default"
