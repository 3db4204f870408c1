"""Secrets and size limits: every span passes through here before it reaches any sink.

Three jobs, done in one walk over a span's free-form data (attributes — which carry input,
output and metadata —, events, error message):

* **Secrets.** A value under a sensitive key becomes ``[REDACTED]``: ``password``,
  ``api_key``, ``Authorization``, ``OPENAI_API_KEY``, ``x-api-key``, compound spellings
  (``PGPASSWORD``, ``csrftoken``, ``SESSIONID``), ``pass``, ``pwd``, ``session_id``,
  ``set-cookie``, ``AccountKey``, ``webhook_url``, ``cvv`` ... plus configured words. In every
  string, secret-looking parts are replaced and the rest is kept, so a stack trace or a prompt
  stays readable: provider tokens by their prefixes (OpenAI, Anthropic, Stripe, GitHub,
  GitLab, Slack, npm, PyPI, Twilio, SendGrid, Google, Hugging Face, Databricks, Telegram, ...),
  bearer/basic credentials, JWTs, private key blocks of any kind, cloud keys that have no label
  by their context (an AWS secret key beside its key id, Azure ``AccountKey=`` and
  ``SharedAccessKey=``, Entra client secrets, SAS signatures), values after labels
  (``password=...``, ``"secret": "two words"``, ADO ``Password=...;``), the password of any
  ``scheme://user:password@host``, webhook URLs that are credentials (Slack, Discord, Teams),
  and payment card numbers (Luhn-checked, in a card network's range and layout). A string
  holding a JSON object or array is walked as data and stays a string.
* **Limits.** A string over ``max_value_bytes`` (UTF-8) is cut with a marker; a container
  stops growing once its estimated JSON size passes the same limit; a span whose estimated
  size passes ``max_span_bytes`` loses its largest values first, and says so in
  ``attributes["span_trimmed"]``.
* **Plain JSON.** bytes, datetimes, sets, tuples, Decimal, UUID, enums, dataclasses,
  pydantic models, arbitrary objects, NaN/±infinity, non-string keys, cycles and deep
  nesting become JSON values every sink accepts (SQLite ``json_valid``, Postgres ``jsonb``,
  which refuses NUL characters, Opik's REST schema).

It runs per span on the flusher thread, so it is built for speed: precompiled regexes, one per
family of secrets, each run only where a cheap test says it could match (see "secret-looking
text" below); nothing at all for strings too short to hold a secret; caches of key decisions
and of already-redacted short strings (values repeat across spans); no JSON encoding to
measure sizes (they are estimated during the walk). ``benchmarks/bench_redaction.py``
measures it.

Log lines get the same treatment: :func:`install_log_redaction` scrubs every record logged
by the connector's packages and by the libraries it sends through (httpx, httpcore, urllib3,
opik), so an error that echoes a bad value, or a request line with a URL's password, never
prints a secret.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

__all__ = [
    "REDACTED",
    "Redactor",
    "install_log_redaction",
    "is_sensitive_key",
    "redact_text",
    "redact_url",
]

REDACTED = "[REDACTED]"
#: Nothing shorter can hold any of the secret patterns below ("pwd=abcd" is 8).
MIN_SECRET_LEN = 8
MAX_DEPTH = 32
#: Regex work on a huge string is bounded: it is cut to the limit plus this margin first, so
#: a secret straddling the final cut is still seen whole and replaced.
_SCAN_MARGIN = 1024
_CACHED_TEXT_LEN = 256
_CACHE_ENTRIES = 8192
#: First characters of a string that may hold a JSON object or array (see Redactor._json_text).
_JSON_OPENERS = frozenset("{[ \t\r\n")

# --- sensitive keys ------------------------------------------------------------------------

#: Words that make a key sensitive wherever they appear in it ("db_password", "x-auth-token").
_SENSITIVE_WORDS = (
    "password",
    "passwd",
    "pwd",
    "pass",
    "pw",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "apikey",
    "authorization",
    "auth",
    "cookie",
    "cookies",
    "credential",
    "credentials",
    "privatekey",
    "accesskey",
    "secretkey",
    "accountkey",
    "jwt",
    "bearer",
    "sessionid",
    "sessid",
    "csrf",
    "xsrf",
    "webhook",
    "webhooks",
    # card verification codes, which PCI DSS forbids storing at all
    "cvv",
    "cvv2",
    "cvc",
    "cvc2",
    # "pass" run into a prefix; "bypass" and "compass" are why "pass" is not a suffix below.
    "dbpass",
    "pgpass",
    "mypass",
    "rootpass",
    "userpass",
    "adminpass",
)
#: Compound words written without a separator ("PGPASSWORD", "csrftoken", "authToken" spelt
#: "AUTHTOKEN", "mysecret"): a word that ends with one of these is a trigger too.
_SENSITIVE_SUFFIXES = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "accesskey",
    "secretkey",
    "accountkey",
    "credential",
    "credentials",
    "cookie",
    "sessionid",
)
#: Word sequences that are sensitive only together ("api_key", but not "api" or "key").
_SENSITIVE_PHRASES = (
    ("api", "key"),
    ("private", "key"),
    ("access", "key"),
    ("account", "key"),
    ("shared", "key"),
    ("master", "key"),
    ("ssh", "key"),
    ("secret", "key"),
    ("client", "secret"),
    ("set", "cookie"),
    ("signing", "key"),
    ("encryption", "key"),
    ("session", "key"),
    ("session", "id"),
    ("session", "token"),
    ("access", "signature"),
    ("webhook", "url"),
    ("card", "number"),
)
#: "token_count", "auth_type", "secret_name": a last word that describes the secret rather
#: than holding it. Only for single-word triggers; plural "tokens" never triggers at all.
_DESCRIPTOR_WORDS = frozenset(
    {
        "count",
        "counts",
        "usage",
        "limit",
        "limits",
        "type",
        "types",
        "budget",
        "estimate",
        "id",
        "ids",
        "index",
        "len",
        "length",
        "num",
        "number",
        "max",
        "min",
        "total",
        "used",
        "cost",
        "price",
        "rate",
        "method",
        "mode",
        "provider",
        "scheme",
        "url",
        "uri",
        "endpoint",
        "enabled",
        "required",
        "present",
        "expires",
        "expiry",
        "expiration",
        "ttl",
        "name",
        "names",
        "field",
        "fields",
        "policy",
        "version",
    }
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def _key_words(key: str) -> list[str]:
    return [w for w in _NON_ALNUM.split(_CAMEL.sub("_", key).lower()) if w]


def _phrases(extra: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    found = [tuple(_key_words(k)) for k in extra]
    return tuple(p for p in found if p)


def is_sensitive_key(key: str, extra: Iterable[tuple[str, ...]] = ()) -> bool:
    """Whether values under ``key`` are secrets.

    Case-, separator- and camelCase-insensitive ("OPENAI_API_KEY", "x-api-key", "accessToken"),
    and compound words count too ("PGPASSWORD", "csrftoken", "SESSIONID", "secret_key_base").
    """
    words = _key_words(key)
    if not words:
        return False
    joined = "_" + "_".join(words) + "_"
    for phrase in (*_SENSITIVE_PHRASES, *extra):
        if "_" + "_".join(phrase) + "_" in joined:
            return True
    triggers = [w for w in words if w in _SENSITIVE_WORDS_SET or w.endswith(_SENSITIVE_SUFFIXES)]
    if not triggers:
        return False
    # "auth_type", "token_count": a descriptor after the trigger names a property, not the value.
    return not (words[-1] in _DESCRIPTOR_WORDS and words[-1] not in triggers)


_SENSITIVE_WORDS_SET = frozenset(_SENSITIVE_WORDS)

# --- secret-looking text -------------------------------------------------------------------
# Every string of every span is searched, so what matters is the cost on ordinary text, where
# nothing is found. Python's regex engine has no multi-pattern search: it tries a pattern at
# every position, fast only when the pattern starts with a literal (searched for like
# ``str.find``) or a character class (a per-character table test), slow when it starts with a
# look-behind, an alternation of many words or a case-insensitive word. So each family of
# secrets is found in two steps: a cheap test says where it could be — ``in`` and
# ``str.find`` for fixed markers and label words, byte masks (one ``bytes.translate`` each) for
# digits and long token runs, a search for '-' or '_' that checks the two characters before it
# against the token families' prefixes — and the family's pattern then runs only there,
# anchored at the spot. Patterns that still run on whole strings start with a literal or a
# character class; word boundaries are checked after the first character or in the callback.
#
# ``detect-secrets`` was measured as a source of patterns: its plugins' regexes are built to
# scan files line by line, without gates, and running them cost an order of magnitude more per
# prompt than this whole function, so the formats are written here, each with its gate.
_TOK = r"[A-Za-z0-9_\-]"
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Labels whose value is a secret: "password=...", "api_key: ...", '"secret": "..."',
# "PGPASSWORD=...", "AccountKey=..." (Azure), "sessionid=...", "&sig=..." (SAS URLs), cookies and
# Authorization headers with any scheme. Found by the words below (``str.find`` on the lowered
# text); the key pattern is then matched at each occurrence, and the value after it.
_KV_TRIGGERS = ("pass", "pw", "secret", "token", "key", "authorization", "credential", "cookie", "sess", "csrf",
                "xsrf", "sig")  # fmt: skip
#: The rest of a key after its word ("_access_key" in "aws_secret_access_key"), unless its end
#: says it names rather than holds ("token_count: 5", "secret_name: prod/db", "token_url: ...").
_KEY_REST = (
    r"[a-z0-9_\-]{0,24}"
    r"(?<!count)(?<!type)(?<!usage)(?<!limit)(?<!length)(?<!name)(?<!url)(?<!uri)(?<!path)(?<!file)(?<!izer)"
)
_KEY_AT = re.compile(
    r"(?i:(?P<cookie>(?<![a-z0-9])cookie\\{0,3}[\"']?\s{0,3}[:=]\s{0,3}[\"']?)"
    rf"|(?:pass(?:word|wd|phrase){_KEY_REST}"
    # "pass" alone or run into a few usual prefixes ("DBPASS"), not "bypass" or "compass".
    r"|(?:(?<![a-z0-9])|(?<=db)|(?<=pg)|(?<=my)|(?<=root)|(?<=admin)|(?<=user))pass(?![a-z0-9])"
    rf"|pwd{_KEY_REST}|(?<![a-z0-9])pw(?![a-z0-9])|secret{_KEY_REST}|token(?!s){_KEY_REST}"
    r"|(?:(?<=api)|(?<=api[_\-])|(?<=access)|(?<=access[_\-])|(?<=account)|(?<=account[_\-])|(?<=private)"
    rf"|(?<=private[_\-])|(?<=signing[_\-])|(?<=encryption[_\-]))key{_KEY_REST}"
    rf"|authorization{_KEY_REST}|credentials?{_KEY_REST}|sess(?:ion[_\-]?(?:id|key|token)|id){_KEY_REST}"
    rf"|[cx]srf{_KEY_REST}|signature{_KEY_REST}|(?<![a-z0-9])sig(?![a-z0-9]))"
    r"\\{0,3}[\"']?\s{0,3}[:=]\s{0,3}"
    r"(?:(?:bearer|basic|token|bot|digest|apikey|api-key|sso-key|ssws|key|hmac|negotiate|ntlm)\s+)?)"
)
#: A value: a quoted string (spaces and all; also with escaped quotes, as in JSON inside JSON),
#: a {braced} ODBC value, or a token. One group per form: the secret without its quotes.
_VALUE_AT = re.compile(
    r"(?!\\{0,3}[\"']?\[REDACTED\])"
    r"(?:\\{0,3}\"([^\"\r\n]+?)\\{0,3}\"|\\{0,3}'([^'\r\n]+?)\\{0,3}'|\{([^}\r\n]+)\}|([^\s\"',;&})\]\\]+))"
)
#: A cookie header's value: the rest of the line.
_LINE_AT = re.compile(r"(?!\[REDACTED\])[^\r\n\"']+")
#: ADO/ODBC connection strings: "...;Password=two words;" — the value runs to the next ';'.
_ADO_KEYS = (
    r"\s{0,3}(?i:password|pwd|accountkey|sharedaccesskey)\s{0,3}=\s{0,3}(?![{\"'])(?!\[REDACTED\])([^;\r\n\"']+)"
)
_ADO_RE = re.compile(";" + _ADO_KEYS)
_ADO_START = re.compile(_ADO_KEYS)

#: The password of a URL: postgresql://user:PASSWORD@host (up to the authority's last '@'),
#: and a token used as the user: https://ghp_...@github.com (long, with a letter and a digit).
_URL_RE = re.compile(
    r"://[^\s:/@]*:([^\s/@][^\s/]*)@"
    r"|://((?=[A-Za-z0-9_\-.~%]*[0-9])(?=[A-Za-z0-9_\-.~%]*[A-Za-z])[A-Za-z0-9_\-.~%]{20,})@"
)
#: Webhook URLs whose path is the credential (anyone holding it can post): Slack, Discord,
#: Microsoft Teams (Office 365 connectors), Zapier, Google Chat; the host is kept.
_WEBHOOK_RE = re.compile(
    r"https?://(?i:(?:hooks\.slack\.com/(?:services|workflows|triggers)/"
    r"|(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/"
    r"|[a-z0-9\-]+\.webhook\.office\.com/webhookb2/|outlook\.office(?:365)?\.com/webhook/"
    r"|hooks\.zapier\.com/hooks/catch/|chat\.googleapis\.com/v1/spaces/))([^\s\"'<>\\]+)"
)
#: Private key blocks of any kind (RSA, EC, DSA, OPENSSH, ENCRYPTED, PKCS#8, PGP, SSH2), to the
#: END line or to the end of a truncated string; PuTTY key files from their private lines.
_PEM_RE = re.compile(
    r"(-{4,5} ?BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)? ?-{4,5}"
    r"(?s:.*?)(?:-{4,5} ?END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)? ?-{4,5}|\Z))"
)
_PUTTY_RE = re.compile(r"(Private-Lines: ?\d+(?s:.*?)(?:Private-MAC: ?[0-9A-Fa-f]+|\Z))")
#: JSON Web Tokens: header.payload.signature, the header always starts with '{"' = "eyJ".
_JWT_RE = re.compile(rf"(eyJ(?<![A-Za-z0-9_\-]eyJ){_TOK}{{6,}}\.{_TOK}{{6,}}\.{_TOK}{{6,}})")
#: Bearer tokens; Basic credentials (base64 holding a digit, '=' or an inner capital: not prose).
_SCHEME_RE = re.compile(
    r"[Bb](?:earer|EARER)\s+(?!\[REDACTED\])([A-Za-z0-9\-._~+/]{8,}=*)"
    r"|Basic\s+((?=[A-Za-z0-9+/]*(?:[0-9=]|[a-z][A-Z]))[A-Za-z0-9+/]{8,}={0,2})"
)
#: Tokens with a dashed prefix: OpenAI, Anthropic, DeepSeek, Langfuse "sk-..." (a digit is
#: required, or "sk-learn-..." would go), GitLab, Slack, PyPI, Google OAuth client secrets,
#: Tavily, Perplexity, xAI, Postman, New Relic, Square, age. Matched only where _tokens says.
_DASH_RE = re.compile(
    rf"sk-(?=[A-Za-z_\-]*[0-9]){_TOK}{{16,}}"
    rf"|gl(?:pat|dt|rt|cbt|ptt|ft|soat|oas|imt|agent)-{_TOK}{{20,}}"
    r"|xox(?:[abposr]|e(?:\.xox[bp])?)-[A-Za-z0-9\-]{10,}|xapp-\d-[A-Za-z0-9\-]{10,}"
    rf"|pypi-AgE{_TOK}{{50,}}|GOCSPX-{_TOK}{{24,}}|tvly-(?:dev-|prod-)?[A-Za-z0-9]{{24,}}"
    r"|pplx-[A-Za-z0-9]{40,}|xai-[A-Za-z0-9]{40,}|PMAK-[A-Fa-f0-9]{24}-[A-Fa-f0-9]{34}|NRAK-[A-Z0-9]{27}"
    rf"|sq0(?:csp|atp)-{_TOK}{{22,}}|AGE-SECRET-KEY-1[A-Z0-9]{{50,}}"
)
#: Tokens with an underscored prefix: Stripe (secret, restricted, webhook), GitHub (classic and
#: fine-grained), Hugging Face (user and org), npm, Shopify, DigitalOcean, Linear, Grafana,
#: Groq, Pinecone, LangSmith, Supabase, Replicate. Matched only where _tokens says.
_UNDERSCORE_RE = re.compile(
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|hf_[A-Za-z0-9]{30,}|api_org_[A-Za-z0-9]{30,}"
    r"|npm_[A-Za-z0-9]{30,}|shp(?:at|ss|ca|pa)_[A-Fa-f0-9]{32}|do[opr]_v1_[a-f0-9]{64}|lin_api_[A-Za-z0-9]{40}"
    r"|gl(?:sa|c)_[A-Za-z0-9_]{32,}|gsk_[A-Za-z0-9]{40,}|pcsk_[A-Za-z0-9_]{40,}|lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}"
    r"|sbp_[a-f0-9]{40}|sb_secret_[A-Za-z0-9_\-]{20,}|r8_[A-Za-z0-9]{30,}"
)
#: Credentials with a fixed marker, each matched where its marker is (marker, how far before it
#: the secret starts, pattern): AWS access key ids (long-term AKIA, temporary ASIA), Google API
#: keys, Google OAuth access and refresh tokens, Alibaba access key ids, SendGrid, Databricks,
#: Twilio API key SIDs, Microsoft Entra (Azure AD) client secrets ("...8Q~..."), Mailchimp,
#: Telegram bot tokens. The first three need no digit in the text; the others always hold one.
_AWS_ID = re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_MARKED: tuple[tuple[str, tuple[int, ...], re.Pattern[str]], ...] = (
    ("AKIA", (0,), _AWS_ID),
    ("ASIA", (0,), _AWS_ID),
    ("AIza", (0,), re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}")),
)
_MARKED_WITH_DIGITS: tuple[tuple[str, tuple[int, ...], re.Pattern[str]], ...] = (
    ("ya29.", (0,), re.compile(r"(?<![A-Za-z0-9])ya29\.[0-9A-Za-z_\-]{20,}")),
    ("1//0", (0,), re.compile(r"(?<![A-Za-z0-9/])1//0[0-9A-Za-z_\-]{20,}")),
    ("LTAI", (0,), re.compile(r"(?<![A-Za-z0-9])LTAI[A-Za-z0-9]{12,20}(?![A-Za-z0-9])")),
    ("SG.", (0,), re.compile(r"(?<![A-Za-z0-9])SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}")),
    ("dapi", (0,), re.compile(r"(?<![A-Za-z0-9])dapi[0-9a-f]{32}(?:-\d+)?(?![A-Za-z0-9])")),
    ("SK", (0,), re.compile(r"(?<![A-Za-z0-9])SK[0-9a-fA-F]{32}(?![A-Za-z0-9])")),
    (
        "Q~",
        (4,),
        re.compile(r"(?<![A-Za-z0-9_~.\-])[A-Za-z0-9_~.\-]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}(?![A-Za-z0-9_~.\-])"),
    ),
    ("-us", (32,), re.compile(r"(?<![A-Za-z0-9])[0-9a-f]{32}-us\d{1,2}(?![0-9])")),
    (":AA", (8, 9, 10), re.compile(r"(?<![0-9])\d{8,10}:AA[A-Za-z0-9_\-]{33}(?![A-Za-z0-9_\-])")),
)
#: Without a label, 40 base64 characters are an AWS secret access key only beside an AWS key id
#: or the word AWS; and they must look random (upper, lower and a digit or '/', '+'), so a
#: 40-digit hex commit id is never one.
_AWS_SECRET_RE = re.compile(r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
#: A Twilio account SID (not itself secret) marks 32-hex strings beside it as its auth token.
_TWILIO_SID_RE = re.compile(r"AC(?<![A-Za-z0-9]AC)[0-9a-f]{32}(?![A-Za-z0-9])")
_HEX32_RE = re.compile(r"[0-9a-f]{32}(?![A-Za-z0-9])")
#: Payment card numbers: 13-19 digits starting 2-6 (every card network's range), contiguous or
#: in groups with one kind of separator (space or dash); kept unless the layout, the network's
#: prefix and the Luhn checksum all fit (see _card). The look-behind sits after the first digit.
_CARD_RE = re.compile(r"([2-6](?<![\w.+\-/][2-6])\d{3}(?:([ \-])\d{2,6}(?:\2\d{1,6}){1,3}|\d{9,15}))(?![\w\-]|\.\d)")
#: Every byte to "." but digits to "0": one C pass, then counts of digits and of 4-digit runs.
_DIGIT_MASK = bytes(48 if 48 <= byte <= 57 else 46 for byte in range(256))
#: Token characters ([A-Za-z0-9_-]) to "a", the rest to ".": a run of 16 is where a key can be.
_TOKEN_MASK = bytes(97 if chr(byte) in _ALNUM or byte in (45, 95) else 46 for byte in range(256))
_TOKEN_RUN = b"a" * 16
_CARD_RUN = b"0" * 13
_CARD_GROUPS = b"0000.0000.0000"
_AMEX_GROUPS = b"0000.000000.0000"


def _replace(match: re.Match[str]) -> str:
    whole_start, whole_end = match.span()
    start, end = match.span(match.lastindex or 0)
    text = match.string
    return text[whole_start:start] + REDACTED + text[end:whole_end]


def _with_spans_replaced(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each (start, end) replaced by ``[REDACTED]``; spans in order, not overlapping."""
    if not spans:
        return text
    pieces = []
    last = 0
    for start, end in spans:
        pieces.append(text[last:start])
        pieces.append(REDACTED)
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _labels(text: str, low: str) -> str:
    """Values after secret labels (see _KEY_AT), found at each occurrence of a trigger word
    (``low``: ``text`` lowered)."""
    if len(low) != len(text):  # a few non-ASCII letters lower to two characters
        low = text.translate(_ASCII_LOWER)
    found: list[int] = []
    for word in _KV_TRIGGERS:
        at = low.find(word)
        while at >= 0:
            found.append(at)
            at = low.find(word, at + 1)
    if not found:
        return text
    found.sort()
    spans: list[tuple[int, int]] = []
    done = 0  # the end of the last value: a trigger inside it is part of the secret
    for at in found:
        if at < done:
            continue
        key = _KEY_AT.match(text, at)
        if key is None:
            continue
        if key.lastgroup == "cookie":
            value = _LINE_AT.match(text, key.end())
            if value is None:
                continue
            spans.append(value.span())
        else:
            value = _VALUE_AT.match(text, key.end())
            if value is None:
                continue
            spans.append(value.span(value.lastindex or 0))
        done = value.end()
    return _with_spans_replaced(text, spans)


def _prefix_table(prefixes: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """The last two characters of each prefix → the lengths of the prefixes that end so."""
    table: dict[str, set[int]] = {}
    for prefix in prefixes:
        table.setdefault(prefix[-2:], set()).add(len(prefix))
    return {tail: tuple(sorted(lengths, reverse=True)) for tail, lengths in table.items()}


def _separator_gate(separator: str, tails: Iterable[str], run: int) -> re.Pattern[str]:
    """Each ``separator`` that follows a known prefix's last two characters and is followed by
    ``run`` token characters: a literal-first search, its look-behind tested only at a separator."""
    behind = "|".join(re.escape(tail) for tail in sorted(tails))
    return re.compile(rf"{re.escape(separator)}(?<=(?:{behind}){re.escape(separator)})(?=[A-Za-z0-9_\-]{{{run}}})")


#: What comes before the first '-' or '_' of each token in _DASH_RE and _UNDERSCORE_RE.
_DASH_PREFIXES = _prefix_table(
    ["sk", "xoxa", "xoxb", "xoxp", "xoxo", "xoxs", "xoxr", "xoxe", "xoxe.xoxb", "xoxe.xoxp", "xapp", "pypi",
     "GOCSPX", "tvly", "pplx", "xai", "PMAK", "NRAK", "sq0csp", "sq0atp", "AGE"]
    + ["gl" + kind for kind in ("pat", "dt", "rt", "cbt", "ptt", "ft", "soat", "oas", "imt", "agent")]
)  # fmt: skip
_UNDERSCORE_PREFIXES = _prefix_table(
    ["sk", "rk", "whsec", "ghp", "gho", "ghu", "ghs", "ghr", "github", "hf", "api", "npm", "shpat", "shpss", "shpca",
     "shppa", "dop", "doo", "dor", "lin", "glsa", "glc", "gsk", "pcsk", "lsv2", "sbp", "sb", "r8"]
)  # fmt: skip
#: Every token of either family has at least this many characters after its first separator.
_DASH_GATE = _separator_gate("-", _DASH_PREFIXES, 10)
_UNDERSCORE_GATE = _separator_gate("_", _UNDERSCORE_PREFIXES, 16)


def _tokens(text: str, gate: re.Pattern[str], prefixes: dict[str, tuple[int, ...]], pattern: re.Pattern[str]) -> str:
    """``pattern``'s tokens, tried only where ``gate`` says one can start (a prefix, then its
    separator), and not after a letter or digit ("xsk-..." is part of another word)."""
    spans: list[tuple[int, int]] = []
    done = 0
    for hit in gate.finditer(text):
        at = hit.start()
        if at < done:
            continue
        for length in prefixes[text[at - 2 : at]]:
            start = at - length
            if start < done or (start and text[start - 1] in _ALNUM):
                continue
            match = pattern.match(text, start)
            if match is not None:
                spans.append(match.span())
                done = match.end()
                break
    return _with_spans_replaced(text, spans)


def _marked(text: str, table: tuple[tuple[str, tuple[int, ...], re.Pattern[str]], ...]) -> str:
    spans: list[tuple[int, int]] = []
    for marker, offsets, pattern in table:
        at = text.find(marker)
        while at >= 0:
            for offset in offsets:
                if at >= offset:
                    match = pattern.match(text, at - offset)
                    if match is not None:
                        spans.append(match.span())
                        break
            at = text.find(marker, at + 1)
    if not spans:
        return text
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:  # two markers in one secret ("AKIA" inside another token): one span
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return _with_spans_replaced(text, merged)


def _looks_random(token: str) -> bool:
    return (
        not token.islower()
        and not token.isupper()
        and any(c.isdigit() or c in "/+" for c in token)
        and any(c.isalpha() for c in token)
    )


def _aws_secret(match: re.Match[str]) -> str:
    token = match.group()
    start = match.start()
    if start and match.string[start - 1] in _BASE64:
        return token
    return REDACTED if _looks_random(token) else token


_BASE64 = _ALNUM | {"/", "+", "="}


def _hex32(match: re.Match[str]) -> str:
    start = match.start()
    return match.group() if start and match.string[start - 1] in _ALNUM else REDACTED


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card_network(digits: str) -> bool:
    """Whether the number starts in a card network's range (issuer prefixes), so "2024 2025
    2026 2027" or a 13-digit timestamp never reaches the checksum."""
    first = digits[0]
    if first in "456":
        return True
    if first == "3":
        return digits[1] in "0456789"  # Diners 30/36/38/39, Amex 34/37, JCB 35
    return 2221 <= int(digits[:4]) <= 2720  # Mastercard's 2-series


def _card(match: re.Match[str]) -> str:
    """A Luhn-valid card number in one of the networks' layouts becomes ``[REDACTED]``.

    Grouped numbers: groups of four (the last may be shorter), or 4-6-4 / 4-6-5 (Amex, Diners).
    A longer run of groups is tried from its start ("4111 1111 1111 1111 2026": a card, a year).
    """
    number = match.group(1)
    separator = match.group(2)
    if not separator:
        return REDACTED if 13 <= len(number) <= 19 and _card_network(number) and _luhn(number) else number
    groups = number.split(separator)
    for count in range(len(groups), 2, -1):
        head = groups[:count]
        sizes = [len(g) for g in head]
        if not (all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4) and sizes not in ([4, 6, 4], [4, 6, 5]):
            continue
        digits = "".join(head)
        if 13 <= len(digits) <= 19 and _card_network(digits) and _luhn(digits):
            return REDACTED + number[len(separator.join(head)) :]
    return number


#: The smallest 13-digit number: below it an integer cannot be a card number.
_CARD_MIN = 10**12


def _card_int(value: int) -> int | str:
    """A card number held as an integer (``{"card": 4111111111111111}``) is redacted too."""
    digits = str(value)
    return REDACTED if len(digits) <= 19 and _card_network(digits) and _luhn(digits) else value


def redact_text(text: str) -> str:
    """``text`` with every secret-looking part replaced by ``[REDACTED]`` (the rest kept)."""
    if len(text) < MIN_SECRET_LEN:
        return text
    # The gates below may read a ``low`` from before a replacement: "[redacted]" adds no word.
    low = text.lower()
    # Labels first: "password=sk-..." is then one redaction, not two.
    if ":" in text or "=" in text:
        if ";" in text:
            start = _ADO_START.match(text)
            if start is not None:
                text = _with_spans_replaced(text, [start.span(1)])
            text = _ADO_RE.sub(_replace, text)
            low = text.lower()
        text = _labels(text, low)
        if "://" in text:
            if "@" in text:
                text = _URL_RE.sub(_replace, text)
            text = _WEBHOOK_RE.sub(_replace, text)
    if "private" in low:
        if "BEGIN" in text:
            text = _PEM_RE.sub(_replace, text)
        if "Private-Lines" in text:
            text = _PUTTY_RE.sub(_replace, text)
    if "eyJ" in text:
        text = _JWT_RE.sub(_replace, text)
    if "bearer" in low or "basic" in low:
        text = _SCHEME_RE.sub(_replace, text)
    if "-" in text:
        text = _tokens(text, _DASH_GATE, _DASH_PREFIXES, _DASH_RE)
    if "_" in text:
        text = _tokens(text, _UNDERSCORE_GATE, _UNDERSCORE_PREFIXES, _UNDERSCORE_RE)
    aws = "AKIA" in text or "ASIA" in text
    if aws or "AIza" in text:
        text = _marked(text, _MARKED)
    data = text.encode("utf-8", "surrogatepass")
    digit_mask = data.translate(_DIGIT_MASK)
    digits = digit_mask.count(b"0")
    if digits:
        if _TOKEN_RUN in data.translate(_TOKEN_MASK):  # every marked format holds such a run
            text = _marked(text, _MARKED_WITH_DIGITS)
            if "AC" in text and _TWILIO_SID_RE.search(text) is not None:
                text = _HEX32_RE.sub(_hex32, text)
        if len(text) >= 40 and (aws or "aws" in low):
            text = _AWS_SECRET_RE.sub(_aws_secret, text)
        if digits >= 13 and (
            _CARD_RUN in digit_mask or _CARD_GROUPS in digit_mask or _AMEX_GROUPS in digit_mask
        ):  # a card's digits: 13 in a row, or grouped 4-4-4 or 4-6-4 with any separator
            text = _CARD_RE.sub(_card, text)
    return text


# --- the walk ------------------------------------------------------------------------------


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


class Redactor:
    """Applies the redaction policy; one instance per configuration, shared by every batch.

    ``enabled=False`` turns secret redaction off, never the JSON conversion or the limits:
    the sinks need those whatever the policy.
    """

    def __init__(
        self,
        extra_keys: Iterable[str] = (),
        extra_patterns: Iterable[str] = (),
        max_value_bytes: int = 32_768,
        max_span_bytes: int = 262_144,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.max_value_bytes = max_value_bytes
        self.max_span_bytes = max_span_bytes
        self._extra_phrases = _phrases(extra_keys)
        self._extra_re = re.compile("|".join(f"(?:{p})" for p in extra_patterns)) if extra_patterns else None
        self._key_cache: dict[str, tuple[str, bool]] = {}
        # Values repeat across spans (model names, regions, statuses): redact each once.
        self._text_cache: dict[str, str] = {}

    # -- strings --------------------------------------------------------------------------

    def text(self, value: str) -> str:
        """A string made safe: NUL-free, valid UTF-8, secrets replaced, at most ``max_value_bytes``."""
        cacheable = len(value) <= _CACHED_TEXT_LEN
        if cacheable:
            found = self._text_cache.get(value)
            if found is not None:
                return found
        original = value
        if "\x00" in value:  # Postgres text and jsonb refuse NUL
            value = value.replace("\x00", "\ufffd")
        limit = self.max_value_bytes
        cut = len(value) > limit + _SCAN_MARGIN
        if cut:
            value = value[: limit + _SCAN_MARGIN]
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: no sink can store them
                value = value.encode("utf-8", "replace").decode("utf-8")
        if self.enabled and len(value) >= MIN_SECRET_LEN:
            decoded = self._json_text(value) if not cut and value[0] in _JSON_OPENERS else None
            if decoded is not None:
                value = decoded
            else:
                value = redact_text(value)
                if self._extra_re is not None:
                    value = self._extra_re.sub(REDACTED, value)
        if cut or len(value) > limit // 4:
            value = self._cap(value, cut)
        if cacheable:
            cache = self._text_cache
            if len(cache) >= _CACHE_ENTRIES:
                cache.clear()
            cache[original] = value
        return value

    def _json_text(self, value: str) -> str | None:
        """A string holding a JSON object or array, redacted as data and kept a string.

        A tool result or a request body often arrives serialised: walked as data, its keys
        count ("password" as a key, whatever its value looks like) and a value with spaces is
        replaced whole, which the text patterns cannot promise. Unchanged JSON keeps its exact
        text; changed JSON is written back compactly. None: not JSON, the text patterns apply.
        Nesting (JSON in a string in JSON) is bounded by size: every level escapes the next.
        """
        end = value.rstrip()[-1:]
        if not end or end not in "}]" or value.lstrip()[:1] not in ("{", "["):
            return None
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return None
        if type(parsed) is not dict and type(parsed) is not list:
            return None
        cleaned, _ = self._clean(parsed, 1, set())
        if cleaned == parsed:
            return value
        return json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))

    def _cap(self, value: str, already_cut: bool) -> str:
        data = value.encode("utf-8")
        limit = self.max_value_bytes
        if len(data) <= limit and not already_cut:
            return value
        kept = data[:limit].decode("utf-8", "ignore")
        return f"{kept}…[truncated: over {limit} bytes]"

    def _key(self, key: Any) -> tuple[str, bool]:
        """(the key as a JSON string, whether its value is a secret); cached: keys repeat."""
        is_str = type(key) is str
        if is_str:
            found = self._key_cache.get(key)
            if found is not None:
                return found
            text = key
        elif key is None:
            text = "null"
        elif isinstance(key, bool):
            text = "true" if key else "false"
        elif isinstance(key, float):
            text = str(_float(key))
        elif isinstance(key, (int, str)):
            text = str(key)
        else:
            text = self._repr(key)
        safe = self.text(text)
        sensitive = self.enabled and (safe != text or is_sensitive_key(text, self._extra_phrases))
        result = (safe, sensitive)
        if is_str:
            if len(self._key_cache) >= _CACHE_ENTRIES:
                self._key_cache.clear()
            self._key_cache[key] = result
        return result

    @staticmethod
    def _repr(value: Any) -> str:
        try:
            return repr(value)
        except Exception:  # a broken __repr__ must not cost the span
            return f"<{type(value).__name__}>"

    # -- values -----------------------------------------------------------------------------

    def clean(self, value: Any) -> Any:
        """``value`` as plain, redacted, size-limited JSON data (a new object; the input is not touched)."""
        return self._clean(value, 0, set())[0]

    def _clean(self, value: Any, depth: int, active: set[int]) -> tuple[Any, int]:
        kind = type(value)
        if kind is str:
            if len(value) < MIN_SECRET_LEN and "\x00" not in value:
                return value, len(value) + 2
            safe = self.text(value)
            return safe, (len(safe) if safe.isascii() else len(safe.encode("utf-8", "replace"))) + 2
        if value is None or kind is bool:
            return value, 5
        if kind is int:
            return (value if value < _CARD_MIN or not self.enabled else _card_int(value)), 12
        if kind is float:
            return _float(value), 12
        if kind is dict:
            return self._mapping(value, depth, active)
        if kind is list or kind is tuple:
            return self._sequence(value, depth, active)
        return self._other(value, depth, active)

    def _mapping(
        self,
        value: Mapping[Any, Any],
        depth: int,
        active: set[int],
        sizes: dict[str, int] | None = None,
    ) -> tuple[Any, int]:
        """A dict, cleaned. With ``sizes`` (the span's top level) each value's size is recorded
        there and nothing is cut here: the span-level limit decides what goes."""
        if depth >= MAX_DEPTH:
            return "[max depth exceeded]", 22
        ident = id(value)
        if ident in active:
            return "[circular reference]", 22
        if type(value) is dict:
            items: Any = value.items()
        else:
            try:
                items = list(value.items())
            except Exception:  # a Mapping whose items() raises
                return self._text_of(value)
        active.add(ident)
        out: dict[str, Any] = {}
        size = 2
        limit = self.max_value_bytes if sizes is None else None
        key_cache = self._key_cache
        text_cache = self._text_cache
        enabled = self.enabled
        count = len(items)
        # The common leaves (short or already-seen strings, ints, None) are handled inline:
        # a method call per leaf was most of the cost of a typical span.
        for index, (raw_key, item) in enumerate(items):
            found = key_cache.get(raw_key) if type(raw_key) is str else None
            key, sensitive = found if found is not None else self._key(raw_key)
            if key is not raw_key and key in out:  # 1 and "1" both became "1": keep both
                key = f"{key} ({type(raw_key).__name__})"
            kind = type(item)
            if sensitive and enabled and item is not None and kind is not bool and item != "":
                out[key] = REDACTED
                item_size = 12
            elif kind is str:
                if len(item) < MIN_SECRET_LEN and "\x00" not in item:
                    safe = item
                else:
                    safe = text_cache.get(item) or self.text(item)
                out[key] = safe
                item_size = len(safe) + 2
            elif kind is int or kind is bool or item is None:
                out[key] = item if item is None or item < _CARD_MIN or not enabled else _card_int(item)
                item_size = 8
            elif kind is dict:
                out[key], item_size = self._mapping(item, depth + 1, active)
            elif kind is list:
                out[key], item_size = self._sequence(item, depth + 1, active)
            else:
                out[key], item_size = self._clean(item, depth + 1, active)
            item_size += len(key) + 4
            size += item_size
            if sizes is not None:
                sizes[key] = item_size
            elif size > limit and index + 1 < count:  # type: ignore[operator]
                out["…"] = f"[truncated: {count - index - 1} more keys, over {limit} bytes]"
                size += 60
                break
        active.discard(ident)
        return out, size

    def _sequence(self, value: Iterable[Any], depth: int, active: set[int]) -> tuple[Any, int]:
        if depth >= MAX_DEPTH:
            return "[max depth exceeded]", 22
        ident = id(value)
        if ident in active:
            return "[circular reference]", 22
        active.add(ident)
        items = value if isinstance(value, (list, tuple)) else list(value)
        out: list[Any] = []
        size = 2
        limit = self.max_value_bytes
        count = len(items)
        text_cache = self._text_cache
        for index, item in enumerate(items):
            kind = type(item)
            if kind is int or kind is bool or item is None:
                cleaned = item if item is None or item < _CARD_MIN or not self.enabled else _card_int(item)
                item_size = 8
            elif kind is str:
                if len(item) < MIN_SECRET_LEN and "\x00" not in item:
                    cleaned = item
                else:
                    cleaned = text_cache.get(item) or self.text(item)
                item_size = len(cleaned) + 2
            elif kind is dict:
                cleaned, item_size = self._mapping(item, depth + 1, active)
            else:
                cleaned, item_size = self._clean(item, depth + 1, active)
            out.append(cleaned)
            size += item_size + 1
            if size > limit and index + 1 < count:
                out.append(f"[truncated: {count - index - 1} more items, over {limit} bytes]")
                size += 60
                break
        active.discard(ident)
        return out, size

    def _text_of(self, value: Any) -> tuple[str, int]:
        return self._clean(self._repr(value), 0, set())

    def _other(self, value: Any, depth: int, active: set[int]) -> tuple[Any, int]:
        """Everything that is not already JSON: convert to the closest JSON value."""
        if isinstance(value, str):
            return self._clean(str.__str__(value), depth, active)
        if isinstance(value, bool):
            return bool(value), 5
        if isinstance(value, Enum):
            return self._clean(value.value, depth, active)
        if isinstance(value, int):
            return int(value), 12
        if isinstance(value, float):
            return _float(float(value)), 12
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            try:
                return self._clean(raw.decode("utf-8"), depth, active)
            except UnicodeDecodeError:
                return f"<{len(raw)} bytes of binary data>", 40
        if isinstance(value, (datetime, date, time)):
            return value.isoformat(), 34
        if isinstance(value, timedelta):
            return value.total_seconds(), 12
        if isinstance(value, Decimal):
            if value.is_nan():
                return "NaN", 5
            if value.is_infinite():
                return ("Infinity" if value > 0 else "-Infinity"), 10
            number = float(value)
            # Beyond float range: the exact digits as text rather than a made-up infinity.
            return (number, 12) if math.isfinite(number) else (str(value), len(str(value)) + 2)
        if isinstance(value, UUID):
            return str(value), 38
        if isinstance(value, Mapping):
            return self._mapping(value, depth, active)
        if isinstance(value, (set, frozenset)):
            try:
                ordered: list[Any] = sorted(value)  # one order in every process: replays compare equal
            except TypeError:
                ordered = list(value)
            return self._sequence(ordered, depth, active)
        if isinstance(value, (list, tuple)) or type(value).__name__ == "deque":
            return self._sequence(list(value), depth, active)
        if isinstance(value, BaseException):
            return self._clean(f"{type(value).__name__}: {value}", depth, active)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
            return self._mapping(fields, depth, active)
        dump = getattr(value, "model_dump", None)  # pydantic models
        if callable(dump) and not isinstance(value, type):
            try:
                dumped = dump()
            except Exception:
                dumped = None
            if isinstance(dumped, dict):
                return self._mapping(dumped, depth, active)
        return self._text_of(value)

    # -- spans ------------------------------------------------------------------------------

    def redact_span(self, span: Any) -> Any:
        """Redact, convert and limit one ``ObservabilitySpan`` in place (it is ours: just built)."""
        fields = span.__dict__
        active: set[int] = set()
        attributes, attribute_sizes = self._top_level(fields.get("attributes") or {}, active)
        events, events_size = self._sequence(fields.get("events") or [], 0, active)
        if type(events) is not list:
            events = [{"name": "events", "attributes": {"value": events}}]
        message = fields.get("error_message")
        message_size = 0
        if message is not None:
            message = self.text(message if type(message) is str else self._repr(message))
            message_size = len(message)
        for name in ("error_type", "operation_type", "llm_model"):
            value = fields.get(name)
            if type(value) is str and len(value) >= MIN_SECRET_LEN:
                fields[name] = self.text(value)
        total = sum(attribute_sizes.values()) + events_size + message_size + 512
        if total > self.max_span_bytes:
            events, message = self._trim(attributes, attribute_sizes, events, events_size, message, total)
        fields["attributes"] = attributes
        fields["events"] = events
        fields["error_message"] = message
        return span

    def _top_level(self, attributes: Any, active: set[int]) -> tuple[dict[str, Any], dict[str, int]]:
        """The attributes dict, cleaned, with each top-level value's size (the trimming unit)."""
        sizes: dict[str, int] = {}
        if type(attributes) is not dict and not isinstance(attributes, Mapping):  # skip the ABC check for dicts
            attributes = {"attributes": attributes}
        out, _ = self._mapping(attributes, 0, active, sizes)
        if type(out) is not dict:  # a broken mapping came back as text
            out = {"attributes": out}
            sizes = {"attributes": len(str(out["attributes"]))}
        return out, sizes

    def _trim(
        self,
        attributes: dict[str, Any],
        sizes: dict[str, int],
        events: list[Any],
        events_size: int,
        message: str | None,
        total: int,
    ) -> tuple[list[Any], str | None]:
        """Replace the largest values until the span fits, and record what went."""
        candidates = [(size, "attributes." + key) for key, size in sizes.items()]
        candidates.append((events_size, "events"))
        if message:
            candidates.append((len(message), "error_message"))
        candidates.sort(reverse=True)
        trimmed: list[str] = []
        original = total
        for size, name in candidates:
            if total <= self.max_span_bytes:
                break
            marker = f"[trimmed: about {size} bytes, span over {self.max_span_bytes} bytes]"
            if name == "events":
                events = [{"name": "events_trimmed", "attributes": {"note": marker, "count": len(events)}}]
            elif name == "error_message":
                message = message[:1024] + "…" + marker if message else message
            else:
                attributes[name.removeprefix("attributes.")] = marker
            total -= size - len(marker)
            trimmed.append(name)
        attributes["span_trimmed"] = {
            "original_bytes": original,
            "limit_bytes": self.max_span_bytes,
            "trimmed": trimmed,
        }
        return events, message


# --- log lines -----------------------------------------------------------------------------

_LOG_PREFIXES = ("src.agents.ml_foundation.observability_connector", "src.mlops", "src.repositories")
#: Libraries the connector sends through, whose own records can echo what they were handed:
#: httpx logs every request's URL at INFO (with the user:password of an Opik URL that has one),
#: httpcore and urllib3 their connections at DEBUG, opik its configuration and its failures.
THIRD_PARTY_LOGGERS = ("httpx", "httpcore", "urllib3", "opik")
_installed = False


class RedactingFilter(logging.Filter):
    """Scrubs a record as it passes a logger (see :func:`install_log_redaction`); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub(record)
        return True


def install_log_redaction(
    prefixes: Iterable[str] = _LOG_PREFIXES, third_party: Iterable[str] = THIRD_PARTY_LOGGERS
) -> None:
    """Scrub secrets from every log record of the connector's packages and of the libraries it
    sends through (idempotent).

    A record factory, because handlers belong to the application and a filter on a logger does
    not see its children's records (httpx logs on ``httpx``, but httpcore on
    ``httpcore.http11``, urllib3 on ``urllib3.connectionpool``, opik on its modules' loggers):
    the factory sees every record of those names as it is created. The third-party loggers also
    get a :class:`RedactingFilter`, so their own records stay scrubbed should something later
    replace the record factory without calling ours. Records of other libraries are left alone,
    and a record without a secret is left exactly as it was.
    """
    global _installed
    if _installed:
        return
    _installed = True
    outside = tuple(third_party)
    names = (*prefixes, *outside)
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        name = record.name  # None from logging.makeLogRecord()
        if isinstance(name, str) and name.startswith(names):
            _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    for name in outside:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def _scrub(record: logging.LogRecord) -> None:
    if getattr(record, "_secrets_scrubbed", False):  # the factory already did (the filter comes later)
        return
    record._secrets_scrubbed = True
    try:
        message = record.getMessage()
    except Exception:  # a bad format string is logging's problem to report, not ours
        return
    safe = redact_text(message)
    if safe != message:
        record.msg, record.args = safe, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact_text(text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and status output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{netloc}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
