"""The one JSON module: the stores' text policy and the wire/cache bytes never raise, and the
prebuilt C encoder writes exactly what the standard encoder would for plain JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.json_codec import (
    json_bytes,
    json_text,
    json_text_without_nul,
    loads,
)

PLAIN: list[Any] = [
    {"segment": "NE", "n": 3, "x": 2.5, "ok": True, "none": None, "nested": {"l": [1, "ü", '✓ \n\t"q"']}},
    [{"name": "retry", "attempt": 1}],
    {"big": 2**70, "neg": -1, "e": 1e300},
]


@pytest.mark.parametrize("value", PLAIN)
def test_the_fast_path_matches_the_standard_encoder_byte_for_byte(value: Any) -> None:
    assert json_text(value, "{}") == json.dumps(value, separators=(",", ":"), allow_nan=False)


def test_json_text_never_raises_and_always_writes_json() -> None:
    cyclic: dict[str, Any] = {"a": 1}
    cyclic["self"] = cyclic
    deep: list[Any] = []
    node = deep
    for _ in range(200):
        node.append([])
        node = node[0]

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    odd = {
        "when": datetime(2030, 1, 1, tzinfo=UTC),
        "amount": Decimal("1.5"),
        "tags": {"a"},
        "raw": b"\xffok",
        "nan": float("nan"),
        "inf": float("inf"),
        1: "int key",
        None: "none key",
        "obj": Unprintable(),
    }
    for value in (cyclic, deep, odd):
        text = json_text(value, "{}")
        json.loads(text)  # valid JSON: no NaN, no Infinity
    decoded = json.loads(json_text(odd, "{}"))
    assert decoded["when"] == "2030-01-01T00:00:00+00:00" and decoded["amount"] == 1.5 and decoded["tags"] == ["a"]
    assert decoded["nan"] == "nan" and decoded["inf"] == "inf" and decoded["1"] == "int key"
    assert decoded["obj"] == "<unprintable Unprintable>"
    assert json.loads(json_text(cyclic, "{}"))["self"] == "<circular>"
    assert json_text(None, "[]") == "[]" and json_text([], "{}") == "[]" and json_text({}, "[]") == "{}"


def test_nul_characters_are_replaced_only_where_jsonb_needs_it() -> None:
    value = {"k\x00": ["v\x00", {"n": "\x00"}]}
    assert "\\u0000" in json_text(value, "{}")
    assert json.loads(json_text_without_nul(value, "{}")) == {"k\ufffd": ["v\ufffd", {"n": "\ufffd"}]}


def test_json_bytes_writes_rfc3339_utc_with_z_on_both_paths() -> None:
    aware = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    naive = datetime(2030, 1, 2, 3, 4, 5)
    other = datetime(2030, 1, 2, 3, 4, 5, 1, tzinfo=timezone(timedelta(hours=2)))
    fast = loads(json_bytes({"a": aware, "n": naive, "o": other}))
    assert fast == {
        "a": "2030-01-02T03:04:05.123456Z",
        "n": "2030-01-02T03:04:05Z",
        "o": "2030-01-02T03:04:05.000001+02:00",
    }
    # An integer past 64 bits makes orjson refuse the body: the standard encoder takes it, same format.
    slow = json.loads(json_bytes({"a": aware, "n": naive, "o": other, "big": 2**70}))
    assert slow == {**fast, "big": 2**70}


def test_json_bytes_never_raises() -> None:
    cyclic: dict[str, Any] = {"a": 1}
    cyclic["self"] = cyclic
    for value in (cyclic, {"nan": float("nan"), 1: {2**70}}, {"s": "\ud800"}, object()):
        json.loads(json_bytes(value))
    assert json_bytes({"a": [1, "x"]}) == b'{"a":[1,"x"]}'
