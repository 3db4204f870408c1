"""Comparing rollups with the raw rows (``rollup verify``): one comparison for every backend."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["compare_keyed"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        # Sums of durations: the rollup added them in another order (and subtracted some).
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(a), abs(b))
    return bool(a == b)


def compare_keyed(
    what: str,
    raw: Iterable[Sequence[Any]],
    rolled: Iterable[Sequence[Any]],
    key_width: int,
    report: Callable[[str], None],
) -> int:
    """Rows keyed by their first ``key_width`` values; every key whose values differ is reported."""
    expected = {tuple(r[:key_width]): tuple(_plain(v) for v in r[key_width:]) for r in raw}
    actual = {tuple(r[:key_width]): tuple(_plain(v) for v in r[key_width:]) for r in rolled}
    problems = 0
    for key in sorted(set(expected) | set(actual), key=repr):
        if not _same(expected.get(key), actual.get(key)):
            problems += 1
            report(f"{what} {key}: raw rows say {expected.get(key)}, rollups say {actual.get(key)}")
    return problems


def _plain(value: Any) -> Any:
    """Decimal sums (Postgres ``sum(bigint)`` is numeric) as int, so they compare with counts."""
    if value is None or isinstance(value, int | float):
        return value
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        return value
    return as_int if as_int == value else float(value)
