"""Names other systems know us by; kept import-free so the hot path can use them."""

OPIK_PROJECT = "e2i-causal-analytics"
OPIK_WORKSPACE = "default"
#: Where the host codebase points callers to see their traces when Opik has no URL of its own.
OPIK_URL = "https://www.comet.com/opik"

#: Limits a stored span must keep, shared by the hot path (spans.py, which must not import
#: pydantic) and validation (models.py), so the two never disagree.
#: Token counts and tiers are Postgres ``integer`` columns (int4).
MAX_INT4 = 2**31 - 1
#: The longest span stored: 30 days. Longer is a unit mistake (nanoseconds or microseconds sent
#: as milliseconds) or garbage, and it would dominate every latency percentile.
MAX_DURATION_MS = 30 * 24 * 3600 * 1000
MAX_DURATION_NS = MAX_DURATION_MS * 1_000_000
#: 2262-04-11T00:00:00Z in nanoseconds since the epoch, where signed 64-bit nanoseconds end.
MAX_TIME_NS = 9_223_286_400 * 10**9
