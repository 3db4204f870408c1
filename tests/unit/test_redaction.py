"""Redaction: secrets by key and by shape, size limits, JSON safety, log lines, and its cost."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.models import ObservabilityEvent
from src.agents.ml_foundation.observability_connector.nodes import validate_spans
from src.agents.ml_foundation.observability_connector.redaction import (
    REDACTED,
    Redactor,
    install_log_redaction,
    is_sensitive_key,
    redact_text,
)

R = REDACTED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-ant-api03-AbCdEf0123456789xyzXYZ-_abc here", f"key {R} here"),
        ("sk-proj-abcdefghij0123456789ABCDEFG", R),
        ("use sk_live_4eC39HqLyjWDarjtT1zdp7dc now", f"use {R} now"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789 end", f"token {R} end"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", R),
        ("slack xoxb-1234567890-abcdefghijk ok", f"slack {R} ok"),
        ("hf_abcdefghijklmnopqrstuvwxyz0123456789", R),
        ("Authorization: Bearer abc.def-ghi_jkl123", f"Authorization: Bearer {R}"),
        ("curl -H 'authorization: bearer abcdefgh12345678'", f"curl -H 'authorization: bearer {R}'"),
        ("header Basic dXNlcjpwYXNzd29yZA==", f"header Basic {R}"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U ok",
            f"jwt {R} ok",
        ),
        ("AKIAIOSFODNN7EXAMPLE is the key id", f"{R} is the key id"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", f"aws_secret_access_key = {R}"),
        ("AIzaSyA-1234567890abcdefghijklmnopqrstu", R),
        (
            "dsn postgresql://user:s3cr3t-pass@db.example.com:5432/app",
            f"dsn postgresql://user:{R}@db.example.com:5432/app",
        ),
        ("postgresql://user:p@ss:w0rd@db.example.com/app", f"postgresql://user:{R}@db.example.com/app"),
        ("redis://:hunter2hunter2@localhost:6379/0", f"redis://:{R}@localhost:6379/0"),
        ("login failed: password=hunter2 for bob", f"login failed: password={R} for bob"),
        ("{'password': 'hunter2', 'user': 'bob'}", f"{{'password': '{R}', 'user': 'bob'}}"),
        ('{"api_key": "abc123", "input_tokens": 12}', f'{{"api_key": "{R}", "input_tokens": 12}}'),
        ("https://api.example.com/v1?api_key=abc123&q=x", f"https://api.example.com/v1?api_key={R}&q=x"),
        ("Cookie: session=abc; theme=dark", f"Cookie: {R}"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY----- tail", f"{R} tail"),
    ],
)
def test_secret_looking_text_is_replaced_and_the_rest_kept(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "You are the gap analyzer. Find the three largest gaps between forecast and actuals.",
        "2026-11-26T10:00:00.100000+00:00",
        "https://example.com:8080/path?segment=NE&window=7d",
        "input_tokens: 812, output_tokens: 95, max_tokens: 1024",
        "a scikit sk-learn-compatible-estimator-thing",
        "Basic information about the system",
        "ValueError: could not convert string to float: 'abc'",
        "north-east region, langgraph_node=analyze",
        "0190a1b2c3d47e8f9a0b1c2d3e4f5a6b",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "db_password",
        "OPENAI_API_KEY",
        "x-api-key",
        "apiKey",
        "APIKey",
        "apikey",
        "Authorization",
        "proxy-authorization",
        "cookie",
        "Set-Cookie",
        "secret",
        "client_secret",
        "token",
        "accessToken",
        "refresh_token",
        "private_key",
        "access_key",
        "aws_access_key_id",
        "credentials",
        "passwd",
        # compound words, spelt in any case, and the names of common secret settings
        "PGPASSWORD",
        "pass",
        "pwd",
        "sessionid",
        "session_id",
        "SESSIONID",
        "csrftoken",
        "x-csrf-token",
        "set-cookie",
        "private-key",
        "secret_key_base",
        "client-secret",
        "AccountKey",
        "SharedAccessKey",
        "DBPASS",
        "authToken",
        "AUTHTOKEN",
        "webhook_url",
        "slackWebhook",
    ],
)
def test_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "input_tokens",
        "total_tokens",
        "max_tokens",
        "tokens",
        "token_count",
        "auth_type",
        "secret_name",
        "keyboard",
        "author",
        "monkey",
        "bypass",
        "compass",
        "passenger",
        "pass_rate",
        "tokenizer",
        "session_start",
        "key",
        "primary_key_column",
    ],
)
def test_keys_that_only_look_alike(key: str) -> None:
    assert not is_sensitive_key(key)


def test_values_under_sensitive_keys_are_replaced_whatever_their_type() -> None:
    redactor = Redactor()
    cleaned = redactor.clean(
        {
            "password": "hunter2",
            "headers": {"Authorization": "Token abc", "x-api-key": 12345, "Accept": "json"},
            "credentials": {"user": "bob", "pass": "x"},
            "api_key": None,
            "token_present": True,
            "input_tokens": 812,
        }
    )
    assert cleaned == {
        "password": R,
        "headers": {"Authorization": R, "x-api-key": R, "Accept": "json"},
        "credentials": R,
        "api_key": None,  # nothing to hide
        "token_present": True,  # a flag is not a secret
        "input_tokens": 812,
    }


def test_configured_keys_and_patterns() -> None:
    redactor = Redactor(extra_keys=["ssn", "member_number"], extra_patterns=[r"EMP-\d{6}"])
    cleaned = redactor.clean({"user_ssn": "123-45-6789", "memberNumber": "77", "note": "staff EMP-123456 called"})
    assert cleaned == {"user_ssn": R, "memberNumber": R, "note": f"staff {R} called"}


def test_disabled_redaction_still_converts_and_limits() -> None:
    redactor = Redactor(enabled=False, max_value_bytes=1024)
    cleaned = redactor.clean({"password": "hunter2", "n": float("nan"), "big": "x" * 5000})
    assert cleaned["password"] == "hunter2" and cleaned["n"] == "NaN"
    assert cleaned["big"].endswith("[truncated: over 1024 bytes]") and len(cleaned["big"]) < 1100


class Colour(Enum):
    RED = "red"


@dataclass
class Point:
    x: int
    y: int


class Opaque:
    def __repr__(self) -> str:
        return "Opaque(key=sk-ant-api03-opaque0123456789abcdefgh)"


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_non_json_values_become_plain_json() -> None:
    cycle: dict[str, Any] = {"name": "loop"}
    cycle["self"] = cycle
    looped: list[Any] = [1]
    looped.append(looped)
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(200):
        node["d"] = {}
        node = node["d"]
    value = {
        7: b"bytes",
        2.5: b"\xff\xfe binary",
        None: "\x00nul",
        True: "bool key",
        (1, 2): {3, 1, 2},
        "tuple": (1, "a"),
        "frozen": frozenset({"b", "a"}),
        "decimal": Decimal("1.25"),
        "huge_decimal": Decimal("1e400"),
        "decimal_nan": Decimal("NaN"),
        "nan": float("nan"),
        "inf": math.inf,
        "-inf": -math.inf,
        "uuid": uuid.UUID(int=1),
        "when": datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
        "day": date(2026, 11, 26),
        "delta": timedelta(seconds=1.5),
        "enum": Colour.RED,
        "point": Point(1, 2),
        "opaque": Opaque(),
        "broken": Broken(),
        "error": ValueError("bad"),
        "cycle": cycle,
        "looped": looped,
        "deep": deep,
        "surrogate": "\ud800abcdefghijk",
    }
    cleaned = Redactor().clean(value)
    text = json.dumps(cleaned, allow_nan=False)  # raises on NaN, objects, non-string keys
    text.encode("utf-8")  # and on lone surrogates
    assert cleaned["7"] == "bytes" and cleaned["2.5"] == "<9 bytes of binary data>"
    assert cleaned["null"] == "\ufffdnul" and cleaned["true"] == "bool key"
    assert cleaned["(1, 2)"] == [1, 2, 3] and cleaned["tuple"] == [1, "a"] and cleaned["frozen"] == ["a", "b"]
    assert cleaned["decimal"] == 1.25 and cleaned["huge_decimal"] == "1E+400" and cleaned["decimal_nan"] == "NaN"
    assert (cleaned["nan"], cleaned["inf"], cleaned["-inf"]) == ("NaN", "Infinity", "-Infinity")
    assert cleaned["uuid"] == "00000000-0000-0000-0000-000000000001"
    assert cleaned["when"] == "2026-11-26T10:00:00+00:00" and cleaned["day"] == "2026-11-26"
    assert cleaned["delta"] == 1.5 and cleaned["enum"] == "red" and cleaned["point"] == {"x": 1, "y": 2}
    assert cleaned["opaque"] == f"Opaque(key={R})" and cleaned["broken"] == "<Broken>"
    assert cleaned["error"] == "ValueError: bad"
    assert cleaned["cycle"] == {"name": "loop", "self": "[circular reference]"}
    assert cleaned["looped"] == [1, "[circular reference]"]
    assert "[max depth exceeded]" in text
    assert cleaned["surrogate"] == "?abcdefghijk"
    assert isinstance(value["cycle"], dict) and value["cycle"]["self"] is cycle  # the input is untouched


def test_a_long_value_is_cut_with_a_marker_and_a_secret_at_the_cut_still_goes() -> None:
    redactor = Redactor(max_value_bytes=1024)
    secret = "sk-ant-api03-" + "a1" * 20
    text = "x" * 1010 + " " + secret + " tail"
    cut = redactor.text(text)
    assert cut.endswith("…[truncated: over 1024 bytes]") and "a1a1a1" not in cut
    assert len(cut.encode()) < 1100
    multibyte = redactor.text("é" * 2000)  # cut on a character boundary
    assert multibyte.startswith("é" * 512) and "\ufffd" not in multibyte
    items = redactor.clean({"rows": list(range(5000))})["rows"]
    assert isinstance(items[-1], str) and items[-1].startswith("[truncated:") and len(items) < 5000


def test_a_span_over_the_limit_loses_its_largest_values_first() -> None:
    redactor = Redactor(max_value_bytes=32_768, max_span_bytes=100_000)
    event = ObservabilityEvent.model_validate(
        {
            "span_id": "s1",
            "trace_id": "t1",
            "agent_name": "explainer",
            "operation": "op",
            "started_at": datetime.now(UTC),
            "attributes": {f"blob{i}": "y" * 30_000 for i in range(5)} | {"small": "kept"},
            "events": [{"name": "e", "attributes": {"n": 1}}],
        }
    )
    span = redactor.redact_span(event.to_span(5))
    trimmed = span.attributes["span_trimmed"]
    assert trimmed["original_bytes"] > 150_000 and trimmed["limit_bytes"] == 100_000
    assert len(trimmed["trimmed"]) == 2 and all(name.startswith("attributes.blob") for name in trimmed["trimmed"])
    assert span.attributes["small"] == "kept" and span.events == [{"name": "e", "attributes": {"n": 1}}]
    assert len(json.dumps(span.attributes)) < 100_000


async def test_rejection_reasons_never_echo_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-ant-api03-echo0123456789abcdefghij"
    events = [
        {
            "span_id": "s1",
            "trace_id": "t1",
            "agent_name": "a",
            "operation": "o",
            "started_at": "now",
            "duration_ms": f"{secret}",
            "status": f"weird {secret}",
        },
        {
            "span_id": "s2",
            "trace_id": "t1",
            "agent_name": "a",
            "operation": "o",
            "started_at": datetime.now(UTC).isoformat(),
            "attributes": [f"password={secret}"],
        },
    ]
    state = await validate_spans({"events_to_log": events})
    assert len(state["emission_errors"]) == 2
    assert all(secret[:20] not in e for e in state["emission_errors"])
    assert "event[0]" in state["emission_errors"][0] and "duration_ms" in state["emission_errors"][0]


async def test_non_string_keys_rescue_an_event_instead_of_rejecting_it() -> None:
    event = {
        "span_id": "s1",
        "trace_id": "t1",
        "agent_name": "a",
        "operation": "o",
        "started_at": datetime.now(UTC),
        "attributes": {1: "one", "api_key": "abc12345"},
    }
    state = await validate_spans({"events_to_log": [event]})
    assert state["emission_errors"] == []
    (span,) = state["validated_spans"]
    assert span.attributes == {"1": "one", "api_key": R}


def test_log_lines_of_the_connector_never_print_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    secret = "ghp_" + "z9" * 20
    logger = logging.getLogger("src.agents.ml_foundation.observability_connector.nodes.batch")
    with caplog.at_level(logging.INFO):
        logger.error("store write failed for dsn %s", f"postgresql://svc:{secret}@db/app")
        try:
            raise RuntimeError(f"upstream said Authorization: Bearer {secret}")
        except RuntimeError:
            logger.exception("call failed")
        logging.getLogger("somebody.else").info("left alone: %s", "password=visible1")
    text = caplog.text
    assert secret not in text and "postgresql://svc:[REDACTED]@db/app" in text
    assert "Bearer [REDACTED]" in text
    assert "left alone: password=visible1" in text  # other libraries' records are not ours to change


def test_redaction_stays_cheap_per_span() -> None:
    """A coarse guard against a pathological pattern (one combined regex cost ~150 µs on a
    prompt); ``benchmarks/bench_redaction.py`` measures it properly."""
    prompt = "Given the regional sales figures, find the three largest gaps and explain each. " * 6
    payload = {
        "span_id": "s1",
        "trace_id": "t1",
        "agent_name": "gap_analyzer",
        "operation": "execute",
        "started_at": datetime(2026, 11, 26, tzinfo=UTC),
        "duration_ms": 5,
        "attributes": {
            "segment": "NE",
            "region": "north-east",
            "langgraph_node": "analyze",
            "retry": 0,
            "request_path": "/v1/gaps/analyze?segment=NE&window=7d",
        },
        "input_data": {"query": prompt, "top_k": 3},
        "output_data": {"gaps": [{"region": f"r{i}", "delta": 0.1 * i, "why": "lower uptake"} for i in range(3)]},
        "events": [{"name": "llm.done", "timestamp": "2026-11-26T10:00:00.700000+00:00", "attributes": {"n": 1}}],
    }
    span = ObservabilityEvent.model_validate(payload).to_span(2)
    redactor = Redactor()
    spans = [span.model_copy() for _ in range(2000)]
    start = time.perf_counter()
    for item in spans:
        redactor.redact_span(item)
    per_span_us = (time.perf_counter() - start) / len(spans) * 1e6
    assert per_span_us < 300, f"{per_span_us:.1f} µs per span"


# --- formats without a label, by shape and by context -----------------------------------------

_B40 = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLE12"  # an AWS secret access key's shape: 40 base64
_AZURE_KEY = "Zm9vYmFy" * 11  # 88 base64 characters, as Azure storage account keys are


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # cloud keys whose value has no label next to it: context decides
        (f"AKIAIOSFODNN7EXAMPLE,{_B40}", f"{R},{R}"),
        (f"aws credentials: {_B40} (rotate monthly)", f"aws credentials: {R} (rotate monthly)"),
        (
            f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={_AZURE_KEY};EndpointSuffix=core.windows.net",
            f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={R};EndpointSuffix=core.windows.net",
        ),
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=abcDEF123+/ghiJKL456=",
            f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={R}",
        ),
        (
            "Server=tcp:db.example.com,1433;Database=app;User ID=sa;Password=Sup3r S3cret!;Encrypt=true",
            f"Server=tcp:db.example.com,1433;Database=app;User ID=sa;Password={R};Encrypt=true",
        ),
        ("Driver={ODBC};Server=x;Uid=sa;PWD={p;w0rd};", f"Driver={{ODBC}};Server=x;Uid=sa;PWD={{{R}}};"),
        ("entra secret abC8Q~defghijklmnopqrstuvwxyz01234567 set", f"entra secret {R} set"),
        ("blob?sv=2021-06-08&sp=r&sig=abcDEF123%2Bxyz%3D&se=2026", f"blob?sv=2021-06-08&sp=r&sig={R}&se=2026"),
        ("PGPASSWORD=Tr0ub4dor3 psql -h db", f"PGPASSWORD={R} psql -h db"),
        # provider tokens
        ("rk_live_51Habcdefghijklmnopqrstuv used", f"{R} used"),
        ("whsec_abcdefghij0123456789", R),
        ("glpat-abcdefghij0123456789 x", f"{R} x"),
        ("npm_abcdefghijklmnopqrstuvwxyz0123456789", R),
        ("pypi-AgEIcHlwaS5vcmc" + "A1b2C3d4" * 8, R),
        ("SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", R),
        ("oauth client GOCSPX-abcdefghijklmnopqrstuvwx12", f"oauth client {R}"),
        ("access ya29.a0AfH6SMBxyz0123456789abcdefghij", f"access {R}"),
        ("refresh 1//0gabcdefghijklmnopqrstuvwxyz0123", f"refresh {R}"),
        ("twilio key SK0123456789abcdef0123456789abcdef", f"twilio key {R}"),
        (
            "Client('AC0123456789abcdef0123456789abcdef', '00112233445566778899aabbccddeeff')",
            f"Client('AC0123456789abcdef0123456789abcdef', '{R}')",
        ),
        ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", R),
        ("sk-proj-abc123DEF456ghi789JKL012mno345", R),
        ("sk-ant-admin01-abcdefghijklmnop0123456789", R),
        ("xapp-1-A0123ABCDEF-1234567890-abcdef0123", R),
        ("dapi0123456789abcdef0123456789abcdef", R),
        ("bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1 ok", f"bot {R} ok"),
        ("shpat_0123456789abcdef0123456789abcdef", R),
        ("gsk_" + "a1B2" * 13, R),
        ("lsv2_pt_0123456789abcdef0123456789abcdef_0123456789", R),
        ("https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/o/r.git", f"https://{R}@github.com/o/r.git"),
        # webhooks: the path is the credential; the host stays readable
        (
            "https://hooks.slack.com/services/T0ABCDEFG/B0ABCDEFG/abcdefghijklmnopqrstuvwx",
            f"https://hooks.slack.com/services/{R}",
        ),
        (
            "post https://discord.com/api/webhooks/123456789012345678/abcDEF-ghiJKL_mnopQRstuv now",
            f"post https://discord.com/api/webhooks/{R} now",
        ),
        (
            "https://contoso.webhook.office.com/webhookb2/0f1e2d3c-aaaa@72f988bf-86f1/IncomingWebhook/abcdef0123/0f1e",
            f"https://contoso.webhook.office.com/webhookb2/{R}",
        ),
        # private keys other than PEM RSA
        ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIabc\n-----END EC PRIVATE KEY----- tail", f"{R} tail"),
        ("-----BEGIN DSA PRIVATE KEY-----\nMIIBuwIBAAKBgQ\n-----END DSA PRIVATE KEY-----", R),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END OPENSSH PRIVATE KEY-----", R),
        ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0B\n-----END ENCRYPTED PRIVATE KEY-----", R),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----", R),
        ("---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nP2/56wAAA\n---- END SSH2 ENCRYPTED PRIVATE KEY ----", R),
        ('{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkq\\n-----END PRIVATE KEY-----\\n"}', None),
        ("key: -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIabc (cut)", f"key: {R}"),
        # URLs with a user:password, any scheme
        ("amqp://guest:guestpass@rabbit:5672/", f"amqp://guest:{R}@rabbit:5672/"),
        ("mongodb+srv://app:Zx9%40pw@cluster0.example.net/db", f"mongodb+srv://app:{R}@cluster0.example.net/db"),
        ("ftp://u:pw123456@files.example.com/x", f"ftp://u:{R}@files.example.com/x"),
        # labels the old matcher did not know, and values with spaces or escaped quotes
        ('{"pass": "correct horse battery staple", "user": "bob"}', f'{{"pass": "{R}", "user": "bob"}}'),
        ('"{\\"password\\": \\"a b c\\"}"', f'"{{\\"password\\": \\"{R}\\"}}"'),
        ("sessionid=abc123def; csrftoken=xyz789", f"sessionid={R}; csrftoken={R}"),
        ("Authorization: Token abcdef123456", f"Authorization: Token {R}"),
        ("Authorization: Bot MTk4NjIy.Cl2FMQ.ZnCjm1XVW7", f"Authorization: Bot {R}"),
    ],
)
def test_formats_by_shape_and_by_context(text: str, expected: str | None) -> None:
    redacted = redact_text(text)
    if expected is None:  # only that nothing of the key's body is left
        assert "MIIEvQ" not in redacted and R in redacted
    else:
        assert redacted == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 exp 12/27", f"card {R} exp 12/27"),
        ("card 4111111111111111.", f"card {R}."),
        ("amex 3782-822463-10005", f"amex {R}"),
        ("mc 5555-5555-5555-4444 and then", f"mc {R} and then"),
        ("mc2 2223003122003222", f"mc2 {R}"),
        ("visa13 4222222222222", f"visa13 {R}"),
        ("4111 1111 1111 1111 2026", f"{R} 2026"),  # a card, then a year
        # not cards: fail Luhn, wrong network range, wrong layout, part of something else
        ("order 4111111111111112", None),
        ("years 2021 2022 2023 2024", None),
        ("epoch ms 1764150000000, ns 1764150000000001234", None),
        ("id 9111111111111111 and 0111111111111111", None),
        ("pi 3.14159265358979323", None),
        ("version 4111111111111111.2", None),
        ("sku ABC4111111111111111", None),
        ("phone +4111111111111111", None),
        ("4111 11 1111 1111 1111", None),
        ("uuid 123e4567-e89b-12d3-a456-426614174000", None),
    ],
)
def test_card_numbers_need_luhn_a_network_and_a_layout(text: str, expected: str | None) -> None:
    assert redact_text(text) == (text if expected is None else expected)


@pytest.mark.parametrize(
    "text",
    [
        "token_count: 5, signal=3, tokenizer: gpt2, secret_name: prod/db, token_url: https://x.example/t",
        "The key findings: 3 regions, compass heading 270, bypass=false, passenger_count: 4",
        "2026-11-26T10:00:00.100000+00:00 trace 0190a1b2c3d47e8f9a0b1c2d3e4f5a6b",
        "uuid 123e4567-e89b-12d3-a456-426614174000, commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "AWS region us-east-1, bucket arn:aws:s3:::reports-2026, 0190A1B2C3D47E8F9A0B1C2D3E4F5A6B0190A1B2",
        "the_quick_brown_fox_jumps_over_the_lazy_dog and sk-learn-compatible-estimator-pipeline",
        "fetch_all_records_for_region(region_code='NE-2026') -> list[dict[str, float]]",
        "Asia-Pacific revenue rose; SKU-2026-0001 shipped; TASK-1234 closed; data-use policy",
        "[1, 2, 3] and {not json} and [also not json",
    ],
)
def test_ordinary_text_with_near_misses_is_kept(text: str) -> None:
    assert redact_text(text) == text


def test_json_held_in_a_string_is_walked_and_stays_a_string() -> None:
    redactor = Redactor()
    inner = json.dumps({"password": "x y z", "n": 1})
    tool = json.dumps(
        {
            "client_secret": "correct horse battery",
            "rows": [{"region": "NE", "note": "Authorization: Bearer abcdefgh12345678"}],
            "nested": inner,  # JSON in a string in JSON
            "PGPASSWORD": "plainword",
        }
    )
    cleaned = redactor.clean({"tool_result": tool, "plain": '{"a": 1, "b": [true, null]}', "list": "[1, 2]"})
    assert isinstance(cleaned["tool_result"], str)
    parsed = json.loads(cleaned["tool_result"])
    assert parsed["client_secret"] == R and parsed["PGPASSWORD"] == R
    assert parsed["rows"] == [{"region": "NE", "note": f"Authorization: Bearer {R}"}]
    assert json.loads(parsed["nested"]) == {"password": R, "n": 1}
    assert "correct horse" not in cleaned["tool_result"] and "plainword" not in cleaned["tool_result"]
    # JSON without a secret keeps its exact text; strings that only look like JSON are text
    assert cleaned["plain"] == '{"a": 1, "b": [true, null]}' and cleaned["list"] == "[1, 2]"
    assert redactor.text("{password=hunter2}") == f"{{password={R}}}"


def test_the_text_gates_stay_cheap_on_long_ordinary_text() -> None:
    """Coarse guard (the benchmark measures properly): each family is gated, so long text of
    every ordinary kind costs microseconds, not the ~100 µs an ungated pattern costs."""
    texts = [
        "Region NE: forecast 1,204,330 vs actual 1,100,220 (-8.6%) in 2026-Q3; gap_analyzer notes. " * 6,
        "def run(config_path: str):\n    return client.fetch_all_records_for_region(region_code='NE-2026')\n" * 6,
        "The key findings: tokens used 812, session length 14 min, password policy unchanged. " * 6,
        "trace 0190a1b2-c3d4-7e8f-9a0b-1c2d3e4f5a6b at 2026-11-26T10:00:00Z; " * 8,
    ]
    for text in texts:
        start = time.process_time()
        for _ in range(200):
            redact_text(text)
        per_call_us = (time.process_time() - start) / 200 * 1e6
        assert per_call_us < 400, f"{per_call_us:.0f} µs for {text[:30]!r}"


def test_third_party_loggers_are_scrubbed_with_their_children(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    secret = "hunter2hunter2"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("httpx").info("HTTP Request: %s %s", "POST", f"http://svc:{secret}@127.0.0.1:1/api")
        logging.getLogger("httpcore.http11").debug("send_request_headers.started url=%s", f"https://u:{secret}@h/")
        logging.getLogger("urllib3.connectionpool").debug("Starting new connection: https://u:%s@h", secret)
        logging.getLogger("opik.api_objects").warning("config %s", {"api_key": secret})
    assert secret not in caplog.text
    assert "http://svc:[REDACTED]@127.0.0.1:1/api" in caplog.text


def test_a_real_httpx_request_does_not_log_the_urls_password(caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs every request's URL at INFO; an Opik URL with user:password must not show."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import httpx

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    install_log_redaction()
    server = HTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = "s3cr3t-pa55w0rd"
    try:
        with caplog.at_level(logging.DEBUG), httpx.Client() as client:
            url = f"http://opik-user:{secret}@127.0.0.1:{server.server_address[1]}/api/v1/private/spans/batch"
            assert client.get(url).status_code == 204
    finally:
        server.shutdown()
        server.server_close()
    assert any(r.name == "httpx" and "HTTP Request" in r.getMessage() for r in caplog.records)
    assert secret not in caplog.text
    assert "opik-user:[REDACTED]@127.0.0.1" in caplog.text


def test_card_numbers_held_as_integers_and_verification_codes() -> None:
    cleaned = Redactor().clean(
        {
            "card": 4111111111111111,
            "ids": [4111111111111111, 4111111111111112, 1764150000000, 1764150000000001234, True, None],
            "cvv": 123,
            "card_number": "ends 1111",
            "amount_cents": 129_900,
        }
    )
    assert cleaned == {
        "card": R,
        "ids": [R, 4111111111111112, 1764150000000, 1764150000000001234, True, None],
        "cvv": R,
        "card_number": R,
        "amount_cents": 129_900,
    }
    assert Redactor(enabled=False).clean({"card": 4111111111111111}) == {"card": 4111111111111111}
