"""Which keys hold secrets: a value under ``password``, ``api_key``, ``Authorization``,
``PGPASSWORD``, ``csrftoken``, ``session_id``, ``webhook_url``, ``cvv`` ... is a secret whatever
it looks like. Used by :class:`redaction.Redactor` for every key of a span's data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["is_sensitive_key", "key_phrases"]

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
        # units: "llm.time_to_first_token_ms" is a latency, not a token
        "ms",
        "us",
        "ns",
        "seconds",
    }
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def _key_words(key: str) -> list[str]:
    return [w for w in _NON_ALNUM.split(_CAMEL.sub("_", key).lower()) if w]


def key_phrases(extra: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Configured extra keys as word sequences, the form :func:`is_sensitive_key` takes."""
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
