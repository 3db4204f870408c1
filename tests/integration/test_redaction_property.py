"""Property: arbitrary nested payloads with planted secrets never crash the graph, and no planted
secret leaves the process — not in the store (rows read back, and the raw SQLite files), not in
a log line, not in what the graph returns.

Each example builds a small batch: events whose attributes, input, output, metadata, events
and error message are arbitrary nested values (JSON and not: bytes, sets, tuples, Decimal,
NaN, datetimes, objects, cycles, non-string keys) with secrets planted at random places —
provider keys, bearer tokens, JWTs, AWS keys, connection-string passwords, Azure account keys,
webhook URLs, private keys, card numbers, values under sensitive keys, JSON held in strings,
secrets inside bytes, reprs and exceptions — plus one event that is
invalid *because of* a secret-bearing value, so its rejection reason would echo it. The batch
goes through the agent's delivery path (``_deliver``: the compiled graph with a
``ConnectorContext`` on a SQLite store, and the agent's log line per rejected span).

Every sink adds what it sent to :func:`texts_that_left_the_process`: the store's rows and raw
files, log lines, the returned state, and every span and trace body the local Opik receiver got
(the real ``opik`` REST client sending over HTTP to 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import string
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import (
    ObservabilitySettings,
    build_deliveries,
    load_registry,
)
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.mlops import OpikConfig
from src.mlops.opik_sink import OpikSink
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.opik_receiver import OpikReceiver

#: Extra places a sink delivered to, each a callable yielding (where, bytes). The Opik engineer
#: appends the local receiver's captured (un-gzipped) request bodies here.
EGRESS_SOURCES: list[Callable[[], Iterable[tuple[str, bytes]]]] = []


def texts_that_left_the_process(
    db: Path, caplog: pytest.LogCaptureFixture, state: dict[str, Any] | None = None
) -> Iterator[tuple[str, bytes]]:
    """Everything the connector handed to the outside world, as (where, bytes)."""
    with sqlite3.connect(db) as conn:
        for row in conn.execute("SELECT * FROM ml_observability_spans"):
            yield "store row", repr(row).encode()
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            yield f"raw file {path.name}", path.read_bytes()
    for record in caplog.records:
        yield "log line", (record.getMessage() + (record.exc_text or "")).encode()
    yield "log text", caplog.text.encode()
    if state is not None:
        yield "returned emission_errors", repr(state.get("emission_errors")).encode()
        yield "returned spans", repr(state.get("validated_spans")).encode()
    for source in EGRESS_SOURCES:
        yield from source()


# --- planted secrets: (the text planted, the part that must never leave) -------------------

_ALNUM = string.ascii_letters + string.digits
bodies = st.text(_ALNUM, min_size=28, max_size=40).map(lambda b: "Q7" + b)  # digit + length: a real-looking key


def _planted(kind: int, body: str) -> tuple[Any, str]:
    hexed = body.encode().hex()[:40]
    kinds: list[tuple[Any, str]] = [
        (f"sk-ant-api03-{body}", body),
        (f"sk-proj-{body}", body),
        (f"ghp_{body}", body),
        (f"xoxb-{body}", body),
        (f"AKIA{hexed[:16].upper()}", f"AKIA{hexed[:16].upper()}"),
        (f"eyJhbGciOiJIUzI1NiJ9.eyJ{body}.{body[::-1]}", body),
        (f"Authorization: Bearer {body}", body),
        (f"postgresql://svc:{body}@db.internal:5432/app", body),
        (f"aws_secret_access_key={body}", body),
        (f"password={body}", body),
        (f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----", body),
        (f"AIza{(body * 2)[:35]}", (body * 2)[:35]),
        (f"sk-ant-api03-{body}".encode(), body),  # inside bytes
        (ValueError(f"upstream rejected key sk-ant-api03-{body}"), body),  # inside an exception
        (_Holder(f"ghp_{body}"), body),  # inside an object's repr
        ({"password": body}, body),  # under sensitive keys, any depth
        ({"headers": {"Authorization": f"Token {body}", "x-api-key": body}}, body),
        ({"OPENAI_API_KEY": [body, {"nested": body}]}, body),
        ({"db_password": body}, body),
        ({"Set-Cookie": f"session={body}; Path=/"}, body),
        ((f"token={body}", 1), body),  # inside a tuple
        # formats without a label, and labels the first matcher did not normalise
        (f"AccountName=acct;AccountKey={body}==;EndpointSuffix=core.windows.net", body),
        (f"https://hooks.slack.com/services/T0ABC/B0DEF/{body}", body),
        (f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----", body),
        (f"amqp://svc:{body}@mq.internal:5672/", body),
        (json.dumps({"client_secret": f"{body} two words", "n": 1}), body),  # JSON held in a string
        ({"PGPASSWORD": body, "sessionid": body, "csrftoken": body}, body),
        (f"card {_card_number(body)} on file", _card_number(body)),
    ]
    return kinds[kind % len(kinds)]


def _card_number(body: str) -> str:
    """A Luhn-valid 16-digit Visa-range number derived from ``body``, grouped in fours."""
    digits = "4" + "".join(str(ord(c) % 10) for c in (body * 2)[:14])
    total = 0
    for index, char in enumerate(reversed(digits)):  # the check digit goes after: double odd places
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    number = digits + str((10 - total % 10) % 10)
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


class _Holder:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __repr__(self) -> str:
        return f"_Holder(secret={self.secret})"


planted = st.builds(_planted, st.integers(0, 1000), bodies)

_KEYS = st.one_of(
    st.text(max_size=12),
    st.integers(-5, 5),
    st.none(),
    st.sampled_from(["input", "prompt", "password", "api_key", "Authorization", "tokens", "notes"]),
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=24),
    st.datetimes(timezones=st.just(UTC)),
    st.decimals(allow_nan=True, allow_infinity=True, places=3),
    st.uuids(),
)


def _with_secrets(plants: list[tuple[Any, str]]) -> st.SearchStrategy[Any]:
    """Nested values where some leaves are the planted secrets, some wrapped in prose."""
    secret_leaves = st.sampled_from([value for value, _ in plants])
    prose = st.builds(
        lambda pre, s, post: f"{pre} {s} {post}",
        st.text(max_size=15),
        st.sampled_from([v for v, _ in plants if isinstance(v, str)] or ["x"]),
        st.text(max_size=15),
    )
    leaves = st.one_of(_LEAVES, secret_leaves, prose)
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(_KEYS, children, max_size=4),
            st.tuples(children, children),
            st.frozensets(st.text(max_size=8), max_size=3),
        ),
        max_leaves=20,
    )


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str]]:
    plants = draw(st.lists(planted, min_size=1, max_size=6))
    needles = [needle for _, needle in plants]
    values = _with_secrets(plants)
    string_secrets = [v for v, _ in plants if isinstance(v, str)] or [f"password={needles[0]}"]
    events = []
    for i in range(draw(st.integers(1, 3))):
        attributes = draw(st.dictionaries(_KEYS, values, max_size=5))
        if draw(st.booleans()):
            attributes["cycle"] = attributes  # a self-reference
        attributes[draw(st.sampled_from(["api_key", "secret", "note"]))] = draw(st.sampled_from(string_secrets))
        events.append(
            {
                "span_id": f"s{i}-{draw(st.integers(0, 10**9))}",
                "trace_id": f"t-{draw(st.integers(0, 10**9))}",
                "agent_name": draw(st.sampled_from(["gap_analyzer", "explainer", "orchestrator"])),
                "operation": "execute",
                "started_at": datetime.now(UTC),
                "duration_ms": 1.5,
                "status": draw(st.sampled_from(["completed", "failed", "started"])),
                "error": f"request failed: {draw(st.sampled_from(string_secrets))}",
                "attributes": attributes,
                "input_data": draw(values),
                "output_data": draw(values),
                "metadata": {"config": draw(values), "fallback_used": draw(st.booleans())},
                "events": [
                    {"name": f"step {draw(st.sampled_from(string_secrets))}", "attributes": draw(values)}
                    for _ in range(draw(st.integers(0, 2)))
                ],
            }
        )
    # Invalid because of a secret-bearing value: the rejection reason would quote it.
    events.append(
        {
            "span_id": "bad",
            "trace_id": "t-bad",
            "agent_name": "explainer",
            "operation": "execute",
            "started_at": datetime.now(UTC),
            "duration_ms": draw(st.sampled_from(string_secrets)),
            "confidence": draw(st.sampled_from(string_secrets)),
        }
    )
    return events, needles


class _Payload:
    """Stands in for a finished span on the agent's delivery path (``to_event`` is all it uses)."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event

    def to_event(self) -> dict[str, Any]:
        return self.event


def _receiver_bodies(receiver: OpikReceiver) -> Callable[[], Iterable[tuple[str, bytes]]]:
    def read() -> Iterable[tuple[str, bytes]]:
        with receiver.lock:
            spans = list(receiver.spans.values())
            traces = list(receiver.traces.values())
            patches = list(receiver.span_patches) + list(receiver.trace_patches)
        for body in spans:
            yield "Opik span body", repr(body).encode()
        for body in traces:
            yield "Opik trace body", repr(body).encode()
        for body in patches:
            yield "Opik patch body", repr(body).encode()

    return read


def test_planted_secrets_never_leave_and_nothing_crashes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, opik_receiver: OpikReceiver
) -> None:
    db = tmp_path / "property.db"
    store = ObservabilitySpanRepository(SQLiteSpanRepository(db))
    registry = load_registry()
    obs_settings = ObservabilitySettings(batching={"spool_path": str(tmp_path / "spool.db")})
    sink = OpikSink(
        OpikConfig(url=opik_receiver.url, request_timeout_s=2.0, wait_s=2.0), tier_names=registry.tier_names
    )
    built = build_deliveries(store, obs_settings, registry, opik=sink)
    opik = built.connector
    context = ConnectorContext(
        store=store, settings=obs_settings, registry=registry,
        store_delivery=built.store, opik_delivery=built.opik, opik=opik,
    )  # fmt: skip
    agent = ObservabilityConnectorAgent(context=context, start=False)
    EGRESS_SOURCES.append(_receiver_bodies(opik_receiver))
    loop = asyncio.new_event_loop()
    seen = {"examples": 0, "stored": 0}

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.large_base_example,
        ],
    )
    @given(batch=batches())
    def check(batch: tuple[list[dict[str, Any]], list[str]]) -> None:
        events, needles = batch
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="src"):
            state = loop.run_until_complete(agent._deliver([_Payload(e) for e in events]))  # type: ignore[list-item]
            assert loop.run_until_complete(opik.wait_until_sent(10.0)), opik.get_status()
        assert state["db_writes_successful"] is True
        assert any(e.startswith(f"event[{len(events) - 1}]") for e in state["emission_errors"])
        # The log path ran (with a spool, which Opik needs, the rejection is logged as dead-lettered).
        assert any("rejected and dead-lettered" in r.getMessage() for r in caplog.records)
        seen["examples"] += 1
        seen["stored"] += state["events_logged"]
        for where, data in texts_that_left_the_process(db, caplog, state):
            for needle in needles:
                assert needle.encode() not in data, f"planted secret reached the {where}"

    try:
        check()
    finally:
        EGRESS_SOURCES.clear()
        for delivery in context.deliveries:
            loop.run_until_complete(delivery.aclose())
        loop.run_until_complete(store.close())
        loop.close()
    assert seen["examples"] >= 20 and seen["stored"] > 0
    with sqlite3.connect(db) as conn:
        distinct = conn.execute("SELECT COUNT(*) FROM ml_observability_spans").fetchone()[0]
    assert len(opik_receiver.spans) == distinct > 0  # the Opik path really carried every stored span


def test_the_egress_helper_sees_a_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The helper would catch a secret that got through (so the property above can fail)."""
    db = tmp_path / "leak.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE ml_observability_spans (v TEXT)")
        conn.execute("INSERT INTO ml_observability_spans VALUES ('sk-ant-api03-leaked')")
    logging.getLogger("elsewhere").warning("Decimal %s", Decimal("1.5"))
    found = {where for where, data in texts_that_left_the_process(db, caplog) if b"sk-ant-api03-leaked" in data}
    assert {"store row", "raw file leak.db"} <= found
