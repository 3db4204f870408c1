"""Planted secrets: every format, in every channel, through the real pipeline; none gets out.

An ``ObservabilityConnectorAgent`` built from settings (a temporary SQLite store, its spool)
sends to the local Opik receiver through ``OPIK_URL_OVERRIDE`` — a URL that itself carries a
``user:password``, so httpx's own INFO line about each request is a channel too. Each format is
planted in span attributes, input, output, exception text, span events, the fields of events
sent to the graph, JSON held in strings (once and twice encoded) and log lines (the connector's
loggers and the libraries it sends through), with every logger captured at DEBUG. Then no
planted secret may be found in the store's rows or raw files, in any body the Opik receiver
stored, or in any captured log record; and ordinary text planted the same way (prose, UUIDs,
ISO dates, hex trace ids, order numbers that fail Luhn, code, amounts) is stored unchanged.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.mlops.opik_connector import set_opik_connector
from tests.fixtures.opik_receiver import OpikReceiver

_RANDOM = random.Random(20261126)
_LOWER_ALNUM = string.ascii_lowercase + string.digits
_ALNUM = string.ascii_letters + string.digits
_TOKEN = _ALNUM + "_-"
_BASE64 = _ALNUM + "+/"
_HEX = "0123456789abcdef"


def _pick(alphabet: str, length: int) -> str:
    """Random characters, with a digit and a letter (as every generated key has)."""
    letters = [c for c in alphabet if c.isalpha()] or list(alphabet)
    body = "".join(_RANDOM.choice(alphabet) for _ in range(length - 2))
    return _RANDOM.choice(letters) + body + "7"


def _word(length: int = 12) -> str:
    """A password that looks like nothing but a word: found only by the label or key above it."""
    return "".join(_RANDOM.choice(string.ascii_letters) for _ in range(length))


def _card(prefix: str, length: int) -> str:
    digits = prefix + "".join(_RANDOM.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for index, char in enumerate(reversed(digits)):  # the check digit comes after: double even places
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return digits + str((10 - total % 10) % 10)


def _pem(kind: str, block: str = "PRIVATE KEY") -> tuple[str, list[str]]:
    lines = [_pick(_BASE64, 64) for _ in range(3)]
    body = "\n".join(lines)
    return f"-----BEGIN {kind}{block}-----\n{body}\n-----END {kind}{block}-----", lines


@dataclass(frozen=True)
class Plant:
    name: str
    text: str  # what is planted, with its usual surroundings
    needles: tuple[str, ...]  # the parts that must never get out


def _plants() -> list[Plant]:
    plants: list[Plant] = []

    def add(name: str, text: str, *needles: str) -> None:
        plants.append(Plant(name, text, needles or (text,)))

    body = _pick(_ALNUM, 40)
    add("openai project key", f"sk-proj-{body}", body)
    body = _pick(_TOKEN, 86)
    add("anthropic key", f"sk-ant-api03-{body}AA", body)
    body = _pick(_ALNUM, 24)
    add("stripe secret key", f"sk_live_{body}", body)
    body = _pick(_ALNUM, 24)
    add("stripe restricted key", f"rk_live_{body}", body)
    body = _pick(_ALNUM, 32)
    add("stripe webhook secret", f"whsec_{body}", body)
    body = _pick(_ALNUM, 36)
    add("github classic token", f"ghp_{body}", body)
    body = _pick(_ALNUM, 22) + "_" + _pick(_ALNUM, 59)
    add("github fine-grained token", f"github_pat_11{body}", body)
    body = _pick(_ALNUM, 20)
    add("gitlab token", f"glpat-{body}", body)
    body = _pick(_ALNUM, 24)
    add("slack bot token", f"xoxb-{_pick(string.digits, 12)}-{_pick(string.digits, 13)}-{body}", body)
    team, channel, body = _pick(_ALNUM, 9), _pick(_ALNUM, 9), _pick(_ALNUM, 24)
    add("slack webhook", f"https://hooks.slack.com/services/T{team}/B{channel}/{body}", body, team)
    hook, body = _pick(string.digits, 18), _pick(_TOKEN, 68)
    add("discord webhook", f"https://discord.com/api/webhooks/{hook}/{body}", body, hook)
    body = _pick(_HEX, 32)
    tenant = str(uuid.UUID(int=_RANDOM.getrandbits(128)))
    add(
        "teams webhook",
        f"https://contoso.webhook.office.com/webhookb2/{tenant}@{tenant}/IncomingWebhook/{body}/x",
        body,
    )
    body = _pick(_ALNUM, 36)
    add("npm token", f"npm_{body}", body)
    body = _pick(_TOKEN, 80)
    add("pypi token", f"pypi-AgEIcHlwaS5vcmc{body}", body)
    body = _pick(_HEX, 32)
    add("twilio api key sid", f"SK{body}", body)
    body = _pick(_HEX, 32)
    add("twilio auth token beside its account sid", f"account AC{_pick(_HEX, 32)} auth {body}", body)
    first, second = _pick(_TOKEN, 22), _pick(_TOKEN, 43)
    add("sendgrid key", f"SG.{first}.{second}", first, second)
    body = _pick(_TOKEN, 28)
    add("google oauth client secret", f"GOCSPX-{body}", body)
    body = _pick(_TOKEN, 120)
    add("google oauth access token", f"ya29.{body}", body)
    body = _pick(_TOKEN, 35)
    add("google api key", f"AIza{body}", body)
    body = _pick(_ALNUM, 34)
    add("hugging face token", f"hf_{body}", body)
    key_id = "AKIA" + _pick(string.ascii_uppercase + string.digits, 16)
    add("aws access key id", f"aws_access_key_id={key_id}", key_id)
    secret = _pick(_BASE64, 40)
    add("aws secret key without a label", f"{key_id},{secret}", key_id, secret)
    body = _pick(_BASE64, 86)
    add(
        "azure storage connection string",
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={body}==;EndpointSuffix=core.windows.net",
        body,
    )
    body = _pick(_BASE64, 43)
    add(
        "azure service bus connection string",
        f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={body}=",
        body,
    )
    body = _pick(_ALNUM, 34)
    add("microsoft entra client secret", f"abc8Q~{body}", body)
    pem, lines = _pem("")
    gcp = {
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": _pick(_HEX, 40),
        "private_key": pem + "\n",
        "client_email": "svc@proj.iam.gserviceaccount.com",
    }
    add("gcp service account json", json.dumps(gcp), *lines)
    for kind in ("EC ", "DSA ", "OPENSSH ", "ENCRYPTED "):
        pem, lines = _pem(kind)
        add(f"{kind.strip().lower()} private key", f"key:\n{pem}\n", *lines)
    pem, lines = _pem("PGP ", "PRIVATE KEY BLOCK")
    add("pgp private key block", pem, *lines)
    first, second = _word(), _word()
    add(
        "ado connection string", f"Server=tcp:db,1433;Database=app;User ID=sa;Password={first} {second};", first, second
    )
    for scheme in ("postgresql", "amqp", "redis", "https", "mongodb+srv"):
        body = _pick(_ALNUM, 20)
        add(f"{scheme} url with a password", f"{scheme}://svc:{body}@host.internal:1234/x", body)
    number = _card("4", 16)
    spaced = " ".join(number[i : i + 4] for i in range(0, 16, 4))
    add("visa card, spaced", f"paid with {spaced}.", spaced[5:14], number)
    number = _card("53", 16)
    dashed = "-".join(number[i : i + 4] for i in range(0, 16, 4))
    add("mastercard, dashed", f"card={dashed}", dashed[5:14], number)
    number = _card("37", 15)
    add("amex, contiguous", f"card {number} on file", number)
    body = _pick(_TOKEN, 40)
    add("jwt", f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.{body}", body)
    body = _pick(_TOKEN, 40)
    add("bearer header", f"Authorization: Bearer {body}", body)
    body = _pick(_BASE64, 24)
    add("basic header", f"Authorization: Basic {body}=", body)
    body = _word()
    add("PGPASSWORD in an environment line", f"PGPASSWORD={body} psql -h db", body)
    session, csrf = _pick(_LOWER_ALNUM, 32), _pick(_ALNUM, 32)
    add("cookie header", f"Cookie: sessionid={session}; csrftoken={csrf}", session, csrf)
    session = _pick(_ALNUM, 32)
    add("set-cookie header", f"Set-Cookie: session={session}; Path=/; HttpOnly", session)
    body = _pick(_ALNUM, 40)
    add("sas url signature", f"https://acct.blob.core.windows.net/c/f?sv=2021-06-08&sp=r&sig={body}%3D", body)
    body = _pick(_HEX, 32)
    add("databricks token", f"dapi{body}", body)
    body = _pick(_TOKEN, 33)
    add("telegram bot token", f"https://api.telegram.org/bot123456789:AA{body}/sendMessage", body)
    first, second = _word(), _word()
    add("json with a secret of several words", json.dumps({"client_secret": f"{first} {second}"}), first, second)
    body = _word()
    inner = json.dumps({"refresh_token": body, "scope": "read"})
    add("json inside json", json.dumps({"payload": inner}), body)
    return plants


PLANTS = _plants()

#: Values under key names, which only the key gives away (the value is a plain word).
KEYED = {
    key: _word(14)
    for key in (
        "PGPASSWORD",
        "pass",
        "passwd",
        "pwd",
        "sessionid",
        "session_id",
        "csrftoken",
        "set-cookie",
        "private-key",
        "secret_key_base",
        "client-secret",
        "refresh_token",
        "AccountKey",
        "webhook_url",
    )
}

#: Text that looks a little like a secret and must be kept as it is.
ORDINARY = {
    "prose": "Find the three largest gaps between forecast and actuals; the key findings go first.",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "iso_date": "2026-11-26T10:00:00.100000+00:00",
    "trace_id": "0190a1b2c3d47e8f9a0b1c2d3e4f5a6b",
    "order_number": "order 4111111111111112 shipped",  # fails Luhn
    "years": "revenue 2021 2022 2023 2024",
    "epoch_ms": "1764150000000",
    "git_sha": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
    "code": "rows = client.fetch_all_records_for_region(region_code='NE-2026', max_tokens=512)",
    "amounts": "forecast 1,204,330 vs actual 1,100,220 (-8.6%)",
    "counts": "input_tokens: 812, output_tokens: 95, token_count: 907, secret_name: prod/db",
    "words": "Asia-Pacific; TASK-1234; compass 270; bypass=false; passenger_count: 4",
}


def _leaked(haystacks: Iterator[tuple[str, str]]) -> list[str]:
    found = []
    for where, text in haystacks:
        for plant in PLANTS:
            found.extend(f"{plant.name} in {where}" for needle in plant.needles if needle in text)
        found.extend(f"value under {key!r} in {where}" for key, value in KEYED.items() if value in text)
    return found


def _store_texts(folder: Path) -> Iterator[tuple[str, str]]:
    with sqlite3.connect(folder / "spans.db") as conn:
        for row in conn.execute("SELECT * FROM ml_observability_spans"):
            yield "a store row", repr(row)
    for path in sorted(folder.rglob("*")):  # the database, its WAL, the spool: raw bytes
        if path.is_file():
            yield f"raw file {path.name}", path.read_bytes().decode("utf-8", "replace")


def _opik_texts(receiver: OpikReceiver) -> Iterator[tuple[str, str]]:
    with receiver.lock:
        bodies = [*receiver.spans.values(), *receiver.traces.values()]
        bodies += [body for _, body in [*receiver.span_patches, *receiver.trace_patches]]
        bodies += list(receiver.feedback)
    for body in bodies:
        yield "an Opik body", json.dumps(body, default=str)


def _log_texts(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[str, str]]:
    for record in caplog.records:
        yield f"a log record of {record.name}", record.getMessage() + (record.exc_text or "")
    yield "the captured log", caplog.text


@pytest.fixture
def opik_user_url(opik_receiver: OpikReceiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Opik configured from the environment, at a URL that carries a user:password."""
    password = _word(16)
    url = opik_receiver.url.replace("http://", f"http://opik-user:{password}@")
    monkeypatch.setenv("OPIK_URL_OVERRIDE", url)
    monkeypatch.setenv("OPIK_SENTRY_ENABLE", "false")
    monkeypatch.setenv("OPIK_ANALYTICS_ENABLE", "false")
    set_opik_connector(None)  # the process-wide sink is built from this environment
    yield password
    set_opik_connector(None)


def _plant_spans(obs: ObservabilityConnectorAgent, plant: Plant, index: int) -> None:
    text = plant.text
    nested = json.dumps({"config": {"value": text, "list": [1, text]}})
    with obs.span("plant.execute", "gap_analyzer", attributes={"note": text, "deep": {"a": [{"b": text}]}}) as span:
        span.set_attribute(f"plant_{index}", text)
        span.set_attribute("tool_result", nested)
        span.set_attribute("tool_result_twice", json.dumps({"raw": nested}))
        span.set_input({"prompt": f"use {text} to connect", "keyed": dict(KEYED)})
        span.set_output(f"connected with {text}")
        span.add_event("step.done", {"detail": text, **KEYED})
    with pytest.raises(RuntimeError), obs.span("plant.fail", "explainer"):
        raise RuntimeError(f"upstream rejected the request: {text}")
    obs.record_llm_call("gap_analyzer", "gpt-4o", 10, 2, duration_ms=3, error=ValueError(f"bad key {text}"))


def _graph_event(plant: Plant, index: int) -> dict[str, Any]:
    text = plant.text
    return {
        "span_id": f"graph-{index}",
        "trace_id": f"planted-{index}",
        "agent_name": "orchestrator",
        "operation": "route_request",
        "started_at": datetime.now(UTC),
        "duration_ms": 4.0,
        "status": "error",
        "error": f"failed: {text}",
        "input_data": {"query": text, **KEYED},
        "output_data": [text, {"headers": {"Authorization": text}}],
        "metadata": {"dsn": text, "json": json.dumps({"v": text})},
        "attributes": {"planted": text},
        "events": [{"name": "retry", "attributes": {"reason": text}}],
    }


async def test_no_planted_secret_reaches_the_store_opik_or_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, opik_receiver: OpikReceiver, opik_user_url: str
) -> None:
    assert len(PLANTS) >= 30
    caplog.set_level(logging.DEBUG)  # every logger, every level
    settings = ObservabilitySettings(
        store={"sqlite_path": str(tmp_path / "spans.db")},
        batching={"max_batch_size": 100, "max_batch_wait_s": 0.05},
    )
    obs = ObservabilityConnectorAgent(settings=settings)
    ours = logging.getLogger("src.agents.ml_foundation.observability_connector.planted")
    try:
        for index, plant in enumerate(PLANTS):
            _plant_spans(obs, plant, index)
            ours.warning("store write failed for %s", plant.text)
            try:
                raise ConnectionError(f"cannot reach {plant.text}")
            except ConnectionError:
                ours.exception("send failed")
            logging.getLogger("httpx").info("HTTP Request: GET %s", plant.text)
            logging.getLogger("opik.rest_api").debug("request options %s", {"headers": {"authorization": plant.text}})
        with obs.span("ordinary", "gap_analyzer", attributes=dict(ORDINARY)) as span:
            span.set_input(dict(ORDINARY))
            span.set_output(list(ORDINARY.values()))
            span.add_event("ordinary.event", dict(ORDINARY))
        assert await obs.flush(60)
        state = await obs.graph.ainvoke(
            {"events_to_log": [_graph_event(plant, i) for i, plant in enumerate(PLANTS)]}, context=obs.context
        )
        assert state["emission_errors"] == [] and state["events_logged"] == len(PLANTS)
        opik = obs.context.opik
        assert opik is not None, "OPIK_URL_OVERRIDE did not turn the Opik sink on"
        assert await opik.wait_until_sent(30), opik.get_status()
    finally:
        await obs.aclose()
        for delivery in obs.context.deliveries:  # the replay tasks of the graph call made on this loop
            await delivery.aclose()

    with sqlite3.connect(tmp_path / "spans.db") as conn:
        stored = conn.execute("SELECT COUNT(*) FROM ml_observability_spans").fetchone()[0]
        ordinary = conn.execute(
            "SELECT attributes, events FROM ml_observability_spans WHERE operation_name = 'ordinary'"
        ).fetchone()
    assert stored == 3 * len(PLANTS) + 1 + len(PLANTS)
    assert len(opik_receiver.spans) == stored  # Opik really got every span
    requests = [r for r in caplog.records if r.name == "httpx" and "HTTP Request: POST" in r.getMessage()]
    assert requests and all("opik-user:[REDACTED]@" in r.getMessage() for r in requests)

    leaks = _leaked(_store_texts(tmp_path))
    leaks += _leaked(_opik_texts(opik_receiver))
    leaks += _leaked(_log_texts(caplog))
    leaks += [f"the Opik URL's password in {w}" for w, t in _log_texts(caplog) if opik_user_url in t]
    assert leaks == [], f"{len(leaks)} leaks, first: {leaks[:10]}"

    # Nothing ordinary was taken for a secret, in any channel.
    attributes, events = json.loads(ordinary[0]), json.loads(ordinary[1])
    assert {key: attributes[key] for key in ORDINARY} == ORDINARY
    assert attributes["input"] == ORDINARY and attributes["output"] == list(ORDINARY.values())
    assert events[0]["attributes"] == ORDINARY


def test_the_leak_check_would_see_a_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The checks above can fail: a needle in a row, a raw file or a log line is reported."""
    plant = PLANTS[0]
    with sqlite3.connect(tmp_path / "spans.db") as conn:
        conn.execute("CREATE TABLE ml_observability_spans (v TEXT)")
        conn.execute("INSERT INTO ml_observability_spans VALUES (?)", (f"x {plant.needles[0]} y",))
    logging.getLogger("elsewhere").warning("value %s", KEYED["pass"])
    leaks = _leaked(_store_texts(tmp_path)) + _leaked(_log_texts(caplog))
    assert f"{plant.name} in a store row" in leaks
    assert any(leak.startswith("value under 'pass' in a log record") for leak in leaks)
