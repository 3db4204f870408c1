"""Secret-looking parts of free text: :func:`redact_text` replaces each with ``[REDACTED]``
and keeps the rest, so a stack trace or a prompt stays readable.

Found by format: provider tokens by their prefixes (OpenAI, Anthropic, Stripe, GitHub, GitLab,
Slack, npm, PyPI, Twilio, SendGrid, Google, Hugging Face, Databricks, Telegram, ...),
bearer/basic credentials, JWTs, private key blocks of any kind; by their context, cloud keys
that have no label (an AWS secret key beside its key id, Azure ``AccountKey=`` and
``SharedAccessKey=``, Entra client secrets, SAS signatures); values after labels
(``password=...``, ``"secret": "two words"``, ADO ``Password=...;``), the password of any
``scheme://user:password@host``, webhook URLs that are credentials (Slack, Discord, Teams), and
payment card numbers (Luhn-checked, in a card network's range and layout).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["CARD_MIN", "MIN_SECRET_LEN", "REDACTED", "card_int", "redact_text"]

REDACTED = "[REDACTED]"
#: Nothing shorter can hold any of the secret patterns below ("pwd=abcd" is 8).
MIN_SECRET_LEN = 8

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
# ``detect-secrets`` was considered as a source of patterns: its plugins' regexes are built to
# scan files line by line, without gates, and cost far more per prompt than this whole
# function, so the formats are written here, each with its gate.
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
CARD_MIN = 10**12


def card_int(value: int) -> int | str:
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
