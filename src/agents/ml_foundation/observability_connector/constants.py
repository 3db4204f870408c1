"""Names other systems know us by; kept import-free so the hot path can use them."""

OPIK_PROJECT = "e2i-causal-analytics"
OPIK_WORKSPACE = "default"
#: Where the host codebase points callers to see their traces when Opik has no URL of its own.
OPIK_URL = "https://www.comet.com/opik"
