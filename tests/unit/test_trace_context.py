"""W3C Trace Context (Recommendation): one test per parsing/formatting rule.

The cases follow the Recommendation's section on the ``traceparent`` / ``tracestate`` request
headers and the W3C test suite (``w3c/trace-context`` ``test/test.py``): a header that breaks
a rule must start a new trace (``traceparent``) or be dropped on its own (``tracestate``),
because anything else would either join unrelated traces or forward garbage downstream.
``tracestate`` keys and duplicated keys follow the June 2026 amendment (one key rule with "@"
among the keychars; a repeated key keeps its left-most entry), where the suite's older
strict-level-2 cases expected the tenant@system limits and a dropped header.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.message
import os
import random
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from src.agents.ml_foundation.observability_connector import trace_context as tc
from src.agents.ml_foundation.observability_connector.trace_context import TraceContext

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{SPAN_ID}-01"
FUTURE = f"cc-{TRACE_ID}-{SPAN_ID}-01"

# All characters a tracestate key may hold after its first one (keychar), "@" included.
KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-*/@"
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")


def traceparent(version: str = "00", trace_id: str = TRACE_ID, span_id: str = SPAN_ID, flags: str = "01") -> str:
    return f"{version}-{trace_id}-{span_id}-{flags}"


def members(count: int, prefix: str = "k") -> str:
    return ",".join(f"{prefix}{i}={i}" for i in range(count))


# --- traceparent: version 00 ---------------------------------------------------------------


def test_version_00_is_exactly_55_characters_and_parses() -> None:
    assert len(VALID) == 55
    assert tc.parse_traceparent(VALID) == (TRACE_ID, SPAN_ID, 0x01)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"0-{TRACE_ID}-{SPAN_ID}-01", id="version-1-char"),
        pytest.param(f"000-{TRACE_ID}-{SPAN_ID}-01", id="version-3-chars"),
        pytest.param(f"0000-{TRACE_ID}-{SPAN_ID}-01", id="version-4-chars"),
        pytest.param(traceparent(trace_id=TRACE_ID[:-1]), id="trace-id-31"),
        pytest.param(traceparent(trace_id=TRACE_ID + "a"), id="trace-id-33"),
        pytest.param(traceparent(span_id=SPAN_ID[:-1]), id="parent-id-15"),
        pytest.param(traceparent(span_id=SPAN_ID + "a"), id="parent-id-17"),
        pytest.param(traceparent(flags="1"), id="flags-1-char"),
        pytest.param(traceparent(flags="001"), id="flags-3-chars"),
        pytest.param(VALID[:-1], id="truncated-54"),
        pytest.param("", id="empty"),
    ],
)
def test_wrong_field_lengths_are_invalid(header: str) -> None:
    """Each field has a fixed width; a shifted field must never be read as a neighbour's."""
    assert tc.parse_traceparent(header) is None


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(traceparent(version="0A"), id="version"),
        pytest.param(traceparent(version="CC"), id="future-version"),
        pytest.param(traceparent(trace_id=TRACE_ID.upper()), id="trace-id"),
        pytest.param(traceparent(trace_id=TRACE_ID[:-1] + "F"), id="trace-id-one-char"),
        pytest.param(traceparent(span_id=SPAN_ID.upper()), id="parent-id"),
        pytest.param(traceparent(flags="0B"), id="flags"),
        pytest.param(VALID.upper(), id="whole-header"),
    ],
)
def test_uppercase_hex_is_invalid(header: str) -> None:
    """HEXDIGLC is lowercase only; accepting uppercase would split one trace id into two."""
    assert tc.parse_traceparent(header) is None


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f".0-{TRACE_ID}-{SPAN_ID}-01", id="version-dot-first"),
        pytest.param(f"0.-{TRACE_ID}-{SPAN_ID}-01", id="version-dot-second"),
        pytest.param(traceparent(trace_id="." + TRACE_ID[1:]), id="trace-id-dot-first"),
        pytest.param(traceparent(trace_id=TRACE_ID[:-1] + "."), id="trace-id-dot-last"),
        pytest.param(traceparent(trace_id=TRACE_ID[:-1] + "g"), id="trace-id-g"),
        pytest.param(traceparent(span_id="." + SPAN_ID[1:]), id="parent-id-dot-first"),
        pytest.param(traceparent(span_id=SPAN_ID[:-1] + "."), id="parent-id-dot-last"),
        pytest.param(traceparent(trace_id=TRACE_ID[:-1] + "\u0661"), id="trace-id-non-ascii-digit"),
    ],
)
def test_non_hex_characters_are_invalid(header: str) -> None:
    assert tc.parse_traceparent(header) is None


@pytest.mark.parametrize("position", [2, 35, 52])
@pytest.mark.parametrize("replacement", ["_", ".", " ", "a"])
def test_fields_must_be_separated_by_dashes(position: int, replacement: str) -> None:
    header = VALID[:position] + replacement + VALID[position + 1 :]
    assert tc.parse_traceparent(header) is None


def test_all_zero_trace_id_is_invalid() -> None:
    assert tc.parse_traceparent(traceparent(trace_id="0" * 32)) is None
    assert tc.parse_traceparent(traceparent(version="cc", trace_id="0" * 32)) is None


def test_all_zero_parent_id_is_invalid() -> None:
    assert tc.parse_traceparent(traceparent(span_id="0" * 16)) is None
    assert tc.parse_traceparent(traceparent(version="cc", span_id="0" * 16)) is None


def test_ids_with_some_zeros_are_valid() -> None:
    """Only *all* zeros is the invalid id; leading zeros are ordinary."""
    trace_id, span_id = "0" * 31 + "1", "0" * 15 + "1"
    assert tc.parse_traceparent(traceparent(trace_id=trace_id, span_id=span_id)) == (trace_id, span_id, 1)


@pytest.mark.parametrize("suffix", ["", "-what-the-future-will-be-like"])
def test_version_ff_is_invalid(suffix: str) -> None:
    assert tc.parse_traceparent(traceparent(version="ff") + suffix) is None


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(VALID + ".", id="dot"),
        pytest.param(VALID + "-", id="lone-dash"),
        pytest.param(VALID + "-what-the-future-will-be-like", id="extra-field"),
        pytest.param(VALID + "0", id="flags-too-long"),
        pytest.param(VALID + "\n", id="line-feed"),
    ],
)
def test_version_00_with_trailing_data_is_invalid(header: str) -> None:
    """Version 00 defines exactly four fields; more data means it is not a version 00 header."""
    assert tc.parse_traceparent(header) is None


@pytest.mark.parametrize("version", ["01", "02", "cc", "fe"])
@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param("", id="no-extra-field"),
        pytest.param("-what-the-future-will-be-like", id="extra-fields"),
        pytest.param("-", id="empty-extra-field"),
        pytest.param("-\x00anything\nat all", id="arbitrary-extra-bytes"),
    ],
)
def test_higher_version_is_parsed_leniently(version: str, suffix: str) -> None:
    """Future versions are additive: read the four known fields, ignore what follows a dash."""
    header = traceparent(version=version, flags="01") + suffix
    assert tc.parse_traceparent(header) == (TRACE_ID, SPAN_ID, 0x01)


@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param(".what-the-future-will-be-like", id="dot"),
        pytest.param("0", id="third-flag-digit"),
        pytest.param("_x", id="underscore"),
        pytest.param(" -x", id="space-then-dash"),
        pytest.param("\n", id="line-feed"),
    ],
)
def test_higher_version_needs_a_dash_at_position_55(suffix: str) -> None:
    assert tc.parse_traceparent(FUTURE + suffix) is None


def test_higher_version_shorter_than_55_is_invalid() -> None:
    assert tc.parse_traceparent(FUTURE[:-1]) is None
    assert tc.parse_traceparent(f"cc-{TRACE_ID}-{SPAN_ID[:-1]}-01-extra-field") is None


@pytest.mark.parametrize("ows", [" ", "\t", " \t ", "\t \t"])
def test_optional_whitespace_around_traceparent_is_allowed(ows: str) -> None:
    """The W3C test suite sends OWS before and after the value; HTTP strips it."""
    assert tc.parse_traceparent(ows + VALID) == (TRACE_ID, SPAN_ID, 1)
    assert tc.parse_traceparent(VALID + ows) == (TRACE_ID, SPAN_ID, 1)
    assert tc.parse_traceparent(ows + VALID + ows) == (TRACE_ID, SPAN_ID, 1)
    assert tc.parse_traceparent(ows + FUTURE + "-x" + ows) == (TRACE_ID, SPAN_ID, 1)


def test_other_whitespace_is_not_optional_whitespace() -> None:
    assert tc.parse_traceparent("\v" + VALID) is None
    assert tc.parse_traceparent(VALID + "\r\n") is None


@pytest.mark.parametrize(
    ("flags", "value", "sampled"),
    [
        ("00", 0x00, False),
        ("01", 0x01, True),
        ("02", 0x02, False),
        ("03", 0x03, True),
        ("09", 0x09, True),
        ("fe", 0xFE, False),
        ("ff", 0xFF, True),
    ],
)
def test_sampled_is_the_lowest_flag_bit(flags: str, value: int, sampled: bool) -> None:
    """Flags are a bit field: masking, not comparing with 01, decides ``sampled``."""
    assert tc.parse_traceparent(traceparent(flags=flags)) == (TRACE_ID, SPAN_ID, value)
    ctx = tc.extract({"traceparent": traceparent(flags=flags)})
    assert ctx is not None
    assert ctx.sampled is sampled


@pytest.mark.parametrize("flags", ["0g", "x1", ".0", "0.", "-1", "  "])
def test_non_hex_flags_are_invalid(flags: str) -> None:
    assert tc.parse_traceparent(traceparent(flags=flags)) is None


def test_non_string_traceparent_is_invalid() -> None:
    """Header values arrive untyped from state dicts; a wrong type must restart, not raise."""
    assert tc.parse_traceparent(None) is None
    assert tc.parse_traceparent(VALID.encode()) is None  # type: ignore[arg-type]
    assert tc.parse_traceparent(12) is None  # type: ignore[arg-type]


def test_format_traceparent_writes_version_00_with_only_the_sampled_flag() -> None:
    """Unknown flags must be sent as zero, and we only speak version 00."""
    assert tc.format_traceparent(TRACE_ID, SPAN_ID, True) == VALID
    assert tc.format_traceparent(TRACE_ID, SPAN_ID, False) == traceparent(flags="00")
    ctx = tc.extract({"traceparent": traceparent(version="cc", flags="ff") + "-future"})
    assert ctx is not None
    assert ctx.traceparent == VALID


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [
        ("0" * 32, SPAN_ID),
        (TRACE_ID, "0" * 16),
        (TRACE_ID.upper(), SPAN_ID),
        (TRACE_ID, SPAN_ID.upper()),
        (TRACE_ID[:-1], SPAN_ID),
        (TRACE_ID, SPAN_ID + "0"),
        ("trace_456", "span_123"),
    ],
)
def test_format_traceparent_refuses_ids_the_recommendation_forbids(trace_id: str, span_id: str) -> None:
    with pytest.raises(ValueError):
        tc.format_traceparent(trace_id, span_id)


# --- tracestate -------------------------------------------------------------------------


def test_tracestate_allows_32_members() -> None:
    parsed = tc.parse_tracestate(members(32))
    assert parsed is not None
    assert len(parsed) == 32
    assert parsed[0] == ("k0", "0")


def test_tracestate_with_33_members_is_invalid() -> None:
    assert tc.parse_tracestate(members(33)) is None
    fields = [members(10, "a"), members(10, "b"), members(10, "c"), members(3, "d")]
    assert tc.parse_tracestate(fields) is None


def test_empty_members_do_not_count_towards_the_limit() -> None:
    parsed = tc.parse_tracestate(",, ," + members(32) + ", \t,,")
    assert parsed is not None
    assert len(parsed) == 32


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("a", id="one-letter"),
        pytest.param("7", id="one-digit"),
        pytest.param("foo", id="word"),
        pytest.param("z" * 256, id="256-chars"),
        pytest.param("0" * 256, id="256-digits"),
        pytest.param(KEY_CHARS, id="every-keychar"),
        pytest.param("0" + KEY_CHARS, id="digit-then-every-keychar"),
        pytest.param("1abc", id="starts-with-digit"),
        pytest.param("a0_-*/", id="punctuation"),
        pytest.param("congo", id="congo"),
        pytest.param("rojo", id="rojo"),
    ],
)
def test_keys_start_with_lcalpha_or_digit_and_are_up_to_256_chars(key: str) -> None:
    """``key = ( lcalpha / DIGIT ) 0*255 ( keychar )``: a digit may lead any key now, not
    only a tenant's."""
    assert tc.parse_tracestate(f"{key}=1,bar=2") == ((key, "1"), ("bar", "2"))


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("t" * 241 + "@" + "v" * 14, id="old-tenant-241-system-14"),
        pytest.param("0tenant@vendor", id="old-digit-tenant"),
        pytest.param("tenant@v0_-*/", id="old-system-keychars"),
        pytest.param("t" * 242 + "@v", id="tenant-over-old-241"),
        pytest.param("t@" + "v" * 15, id="system-over-old-14"),
        pytest.param("t@" + "v" * 254, id="system-254"),
        pytest.param("t@1abc", id="digit-after-at"),
        pytest.param("t@_x", id="underscore-after-at"),
        pytest.param("foo@", id="at-last"),
        pytest.param("9@", id="digit-then-at"),
        pytest.param("foo@@bar", id="two-ats-in-a-row"),
        pytest.param("foo@bar@baz", id="two-ats-apart"),
        pytest.param("a" + "@" * 255, id="255-ats"),
        pytest.param("a@" * 128, id="alternating-256"),
    ],
)
def test_at_signs_are_ordinary_keychars(key: str) -> None:
    """The amendment folded the tenant@system form into one rule: "@" may appear anywhere
    after the first character, any number of times, with no per-part limits."""
    assert len(key) <= 256
    assert tc.parse_tracestate(f"{key}=1,bar=2") == ((key, "1"), ("bar", "2"))


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("z" * 257, id="257-chars"),
        pytest.param("1" * 257, id="257-digits"),
        pytest.param("t" * 242 + "@" + "v" * 14, id="tenant-and-system-257"),
        pytest.param("@foo", id="starts-with-at"),
        pytest.param("@", id="only-at"),
        pytest.param("_abc", id="starts-with-underscore"),
        pytest.param("-abc", id="starts-with-dash"),
        pytest.param("*abc", id="starts-with-asterisk"),
        pytest.param("/abc", id="starts-with-slash"),
        pytest.param("FOO", id="uppercase"),
        pytest.param("Foo", id="capitalised"),
        pytest.param("foo@BAR", id="uppercase-after-at"),
        pytest.param("TENANT@bar", id="uppercase-before-at"),
        pytest.param("foo.bar", id="dot"),
        pytest.param("foo#bar", id="hash"),
        pytest.param("foo:bar", id="colon"),
        pytest.param("foo ", id="space-before-equals"),
        pytest.param("foo bar", id="inner-space"),
        pytest.param("foo\tbar", id="inner-tab"),
        pytest.param("fo\u00f6", id="non-ascii"),
        pytest.param("\u0661abc", id="non-ascii-digit-first"),
        pytest.param("foo\n", id="trailing-line-feed"),
        pytest.param("", id="empty"),
    ],
)
def test_keys_outside_the_grammar_invalidate_the_header(key: str) -> None:
    """One bad member invalidates the whole tracestate (W3C test suite, strict level 2):
    forwarding the rest would re-send a header the sender got wrong."""
    assert tc.parse_tracestate(f"{key}=1,bar=2") is None
    assert tc.parse_tracestate(f"bar=2,{key}=1") is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("1", id="one-char"),
        pytest.param("v" * 256, id="256-chars"),
        pytest.param(VALUE_CHARS, id="all-printable-except-comma-equals"),
        pytest.param(" leading spaces are part of the value", id="leading-space"),
        pytest.param("a b", id="inner-space"),
        pytest.param("t61rcWkgMzE", id="base64"),
    ],
)
def test_values_of_printable_ascii_up_to_256_chars_are_valid(value: str) -> None:
    assert tc.parse_tracestate(f"foo={value}") == (("foo", value),)


@pytest.mark.parametrize(
    "member",
    [
        pytest.param("foo=" + "v" * 257, id="257-chars"),
        pytest.param("foo=", id="empty-value"),
        pytest.param("foo=bar=baz", id="equals-in-value"),
        pytest.param("foo", id="no-equals"),
        pytest.param("=bar", id="no-key"),
        pytest.param("foo=a\tb", id="tab-in-value"),
        pytest.param("foo=a\x7fb", id="del"),
        pytest.param("foo=caf\u00e9", id="non-ascii"),
        pytest.param("foo=1\n", id="trailing-line-feed"),
        pytest.param("foo=a\r\nx-injected: 1", id="header-injection"),
    ],
)
def test_values_outside_the_grammar_invalidate_the_header(member: str) -> None:
    assert tc.parse_tracestate(f"{member},bar=3") is None


def test_trailing_space_is_whitespace_not_part_of_the_value() -> None:
    """A value never ends in a space: at the end of a member that space is OWS."""
    assert tc.parse_tracestate("foo=bar   ,baz=1 ") == (("foo", "bar"), ("baz", "1"))
    assert tc.format_tracestate([("foo", "bar "), ("baz", "1")]) == "baz=1"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("foo=1,foo=1", (("foo", "1"),), id="same-value"),
        pytest.param("foo=1,foo=2", (("foo", "1"),), id="different-value"),
        pytest.param(["foo=1", "foo=1"], (("foo", "1"),), id="across-fields"),
        pytest.param(["foo=1", "foo=2"], (("foo", "1"),), id="across-fields-different-value"),
        pytest.param("t@v=1,bar=2,t@v=3", (("t@v", "1"), ("bar", "2")), id="at-sign-key"),
        pytest.param(
            "congo=new,rojo=1,congo=old,rojo=2,congo=older",
            (("congo", "new"), ("rojo", "1")),
            id="several-keys-several-times",
        ),
        pytest.param(" foo=1 ,, foo=2\t,bar=3", (("foo", "1"), ("bar", "3")), id="with-ows-and-empty-members"),
        pytest.param("foo= lead,foo=lead", (("foo", " lead"),), id="values-differ-only-by-leading-space"),
    ],
)
def test_duplicate_keys_keep_the_left_most_entry(header: str | list[str], expected: tuple[Any, ...]) -> None:
    """One entry per key, and the left-most is the vendor's latest position: keep it, drop
    the stale ones, keep everyone else's entries in their order."""
    assert tc.parse_tracestate(header) == expected


def test_duplicate_keys_still_count_towards_the_32_member_limit() -> None:
    """The limit is on list members received; a repeat must not smuggle a 33rd member in."""
    with_repeat = members(31) + ",k0=again"
    parsed = tc.parse_tracestate(with_repeat)
    assert parsed is not None
    assert len(parsed) == 31
    assert parsed[0] == ("k0", "0")
    assert tc.parse_tracestate(with_repeat + ",extra=1") is None


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("foo=1,foo=", id="repeat-with-empty-value"),
        pytest.param("foo=1,foo=a=b", id="repeat-with-equals-in-value"),
        pytest.param("foo=1,FOO=2", id="repeat-in-uppercase"),
        pytest.param("foo=1,foo", id="repeat-without-value"),
        pytest.param("foo=1,foo =2", id="repeat-with-space-before-equals"),
    ],
)
def test_a_repeated_key_outside_the_grammar_still_invalidates_the_header(header: str) -> None:
    """Only the repetition itself is forgiven; a later entry that breaks the grammar is a
    bad member like any other, even though its value would be discarded."""
    assert tc.parse_tracestate(header) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", ()),
        (" ", ()),
        (" \t , ,\t", ()),
        ("foo=1,,bar=2", (("foo", "1"), ("bar", "2"))),
        (",foo=1,", (("foo", "1"),)),
        (["", "foo=1"], (("foo", "1"),)),
        (["foo=1", ""], (("foo", "1"),)),
        ([], ()),
        (None, ()),
    ],
)
def test_empty_members_and_headers_are_ignored(header: str | list[str] | None, expected: tuple[Any, ...]) -> None:
    assert tc.parse_tracestate(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "foo=1 \t , \t bar=2, \t baz=3",
        "foo=1\t \t,\t \tbar=2,\t \tbaz=3",
        " foo=1,bar=2,baz=3",
        "\tfoo=1,bar=2,baz=3\t",
        "\t foo=1 \t,bar=2,baz=3 \t",
    ],
)
def test_optional_whitespace_around_members_is_allowed(header: str) -> None:
    assert tc.parse_tracestate(header) == (("foo", "1"), ("bar", "2"), ("baz", "3"))


def test_multiple_header_fields_are_combined_in_order() -> None:
    fields = ["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]
    expected = (("foo", "1"), ("bar", "2"), ("rojo", "1"), ("congo", "2"), ("baz", "3"))
    assert tc.parse_tracestate(fields) == expected
    assert tc.parse_tracestate(tuple(fields)) == expected


def test_non_string_tracestate_is_invalid() -> None:
    assert tc.parse_tracestate(b"foo=1") is None  # type: ignore[arg-type]
    assert tc.parse_tracestate(["foo=1", None]) is None  # type: ignore[list-item]


def test_format_tracestate_round_trips() -> None:
    header = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,t@v= lead,0vendor=1,a@b@c=2,x@=3," + "t" * 250 + "@vvvvv=4"
    parsed = tc.parse_tracestate(header)
    assert parsed is not None
    assert tc.format_tracestate(parsed) == header


def test_format_tracestate_forwards_a_header_with_repeated_keys_once_per_key() -> None:
    """What we forward is what we read: the left-most entry of each key, in order."""
    parsed = tc.parse_tracestate(["congo=2,rojo=1", "congo=1, \t,0x@y=5"])
    assert parsed == (("congo", "2"), ("rojo", "1"), ("0x@y", "5"))
    assert tc.format_tracestate(parsed) == "congo=2,rojo=1,0x@y=5"


def test_format_tracestate_never_sends_what_a_receiver_would_reject() -> None:
    """One bad member would make the next hop drop every member, so it is left out alone."""
    given_members = [
        ("good", "1"),
        ("BAD", "1"),
        ("bad", "a,b"),
        ("bad2", "a=b"),
        ("bad3", ""),
        ("bad4", "x\n"),
        ("good", "2"),  # a repeated key: the left-most (most recent) entry wins
        ("other", "3"),
    ]
    out = tc.format_tracestate(given_members)
    assert out == "good=1,other=3"
    assert tc.parse_tracestate(out) == (("good", "1"), ("other", "3"))


def test_format_tracestate_truncates_to_32_members_from_the_right() -> None:
    pairs = [(f"k{i}", str(i)) for i in range(40)]
    parsed = tc.parse_tracestate(tc.format_tracestate(pairs))
    assert parsed == tuple(pairs[:32])


# Generators for the properties below, written from the ABNF rather than from the parser.
KEY_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789"
NBLK_CHARS = VALUE_CHARS.replace(" ", "")
GRAMMAR_KEYS = st.one_of(
    st.builds(str.__add__, st.sampled_from(KEY_FIRST), st.text(alphabet=KEY_CHARS, max_size=12)),
    st.builds(str.__add__, st.sampled_from(KEY_FIRST), st.text(alphabet=KEY_CHARS, min_size=250, max_size=255)),
    st.builds(
        lambda t, s: f"{t}@{s}",
        st.text(alphabet=KEY_FIRST, min_size=1, max_size=4),
        st.text(alphabet=KEY_CHARS, max_size=4),
    ),
)
GRAMMAR_VALUES = st.one_of(
    st.builds(str.__add__, st.text(alphabet=VALUE_CHARS, max_size=10), st.sampled_from(NBLK_CHARS)),
    st.builds(str.__add__, st.text(alphabet=VALUE_CHARS, min_size=255, max_size=255), st.sampled_from(NBLK_CHARS)),
)
# Mostly outside the grammar; a short draw may land inside ("a"), which no property assumes away.
OFF_GRAMMAR_KEYS = st.one_of(
    st.text(alphabet="aZ@_.= \t\n", max_size=6),
    st.text(alphabet="k", min_size=257, max_size=258),
    st.sampled_from(["@a", "_a", "A", "a b"]),
)
OFF_GRAMMAR_VALUES = st.one_of(st.just(""), st.text(alphabet="a=,\t\x7f\u00e9 ", min_size=1, max_size=4))
OWS_TEXT = st.text(alphabet=" \t", max_size=2)


@st.composite
def grammar_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    """List members inside the grammar, with keys repeated now and then, up to 32 of them."""
    pairs = draw(st.lists(st.tuples(GRAMMAR_KEYS, GRAMMAR_VALUES), max_size=32))
    for index in draw(st.lists(st.integers(0, max(len(pairs) - 1, 0)), max_size=4)):
        if pairs and len(pairs) < 32:  # a repeat: an earlier key comes back with another value
            pairs.insert(draw(st.integers(index + 1, len(pairs))), (pairs[index][0], draw(GRAMMAR_VALUES)))
    return pairs


def render(pairs: list[tuple[str, str]], draw: st.DrawFn) -> list[str]:
    """Members written as a sender may: OWS around them, empty members, split into fields."""
    parts: list[str] = []
    for key, value in pairs:
        parts.append(f"{draw(OWS_TEXT)}{key}={value}{draw(OWS_TEXT)}")
        if draw(st.integers(0, 5)) == 0:
            parts.append(draw(OWS_TEXT))
    cuts = sorted(draw(st.lists(st.integers(0, len(parts)), max_size=3)))
    fields, start = [], 0
    for cut in [*cuts, len(parts)]:
        fields.append(",".join(parts[start:cut]))
        start = cut
    return fields


@st.composite
def valid_headers(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[str]]:
    pairs = draw(grammar_lists())
    return pairs, render(pairs, draw)


@st.composite
def any_headers(draw: st.DrawFn) -> list[str]:
    """Mostly valid lists with one member sometimes broken, sometimes past 32 members."""
    pairs = draw(grammar_lists())
    shape = draw(st.sampled_from(["valid", "bad-key", "bad-value", "too-many"]))
    if shape == "bad-key":
        pairs.insert(draw(st.integers(0, len(pairs))), (draw(OFF_GRAMMAR_KEYS), "1"))
    elif shape == "bad-value":
        pairs.insert(draw(st.integers(0, len(pairs))), (draw(GRAMMAR_KEYS), draw(OFF_GRAMMAR_VALUES)))
    elif shape == "too-many":
        pairs += [(f"k{i}", "1") for i in range(33 - len(pairs) + draw(st.integers(0, 2)))]
    return render(pairs, draw)


def first_of_each_key(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    kept: dict[str, str] = {}
    for key, value in pairs:
        kept.setdefault(key, value)
    return tuple(kept.items())


@settings(max_examples=300, deadline=None)
@given(case=valid_headers())
def test_any_list_inside_the_grammar_parses_to_the_first_entry_of_each_key(
    case: tuple[list[tuple[str, str]], list[str]],
) -> None:
    pairs, fields = case
    assert tc.parse_tracestate(fields) == first_of_each_key(pairs)


@settings(max_examples=300, deadline=None)
@given(fields=any_headers())
def test_format_gives_back_exactly_what_parse_accepted(fields: list[str]) -> None:
    """Forwarding must not lose, reorder or alter a member we accepted, nor add OWS."""
    parsed = tc.parse_tracestate(fields)
    if parsed is None:
        return
    assert len(parsed) <= 32
    assert len({key for key, _ in parsed}) == len(parsed)
    formatted = tc.format_tracestate(parsed)
    assert formatted == ",".join(f"{key}={value}" for key, value in parsed)
    assert tc.parse_tracestate(formatted) == parsed


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.one_of(GRAMMAR_KEYS, OFF_GRAMMAR_KEYS), st.one_of(GRAMMAR_VALUES, OFF_GRAMMAR_VALUES)),
        max_size=40,
    )
)
def test_format_only_sends_what_parse_accepts(pairs: list[tuple[str, str]]) -> None:
    """Whatever a caller puts in a context, the header we send is one a receiver keeps."""
    formatted = tc.format_tracestate(pairs)
    parsed = tc.parse_tracestate(formatted)
    assert parsed is not None
    kept = [(key, value) for key, value in pairs if tc.parse_tracestate(f"{key}={value}") == ((key, value),)]
    assert parsed == first_of_each_key(kept)[:32]


def test_the_generators_reach_every_case() -> None:
    """A property that only ever saw valid (or only invalid) headers would prove little.

    Each search seeded: what this checks is that the generators can reach every case, not luck.
    """
    search = settings(max_examples=2000, database=None, phases=[Phase.generate])

    def reach(strategy: Any, condition: Callable[[Any], Any]) -> None:
        find(strategy, condition, settings=search, random=random.Random(2026))

    reach(valid_headers(), lambda case: len(case[0]) != len(first_of_each_key(case[0])))
    reach(valid_headers(), lambda case: any(k[:1].isdigit() and "@" not in k for k, _ in case[0]))
    reach(valid_headers(), lambda case: any(k.count("@") >= 2 or k.endswith("@") for k, _ in case[0]))
    reach(valid_headers(), lambda case: any(len(k) == 256 for k, _ in case[0]))
    reach(any_headers(), lambda f: tc.parse_tracestate(f) is None)
    reach(any_headers(), lambda f: len(tc.parse_tracestate(f) or ()) >= 3)


# --- extract ----------------------------------------------------------------------------


def test_extract_continues_the_trace_as_a_remote_parent() -> None:
    ctx = tc.extract({"traceparent": VALID, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"})
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled, ctx.remote) == (TRACE_ID, SPAN_ID, True, True)
    assert ctx.tracestate == (("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE"))


@pytest.mark.parametrize(
    "tracestate", ["FOO=1", "@foo=1", "foo=1,foo=", members(33), members(32) + ",k0=1", "foo=", "foo=1,bar"]
)
def test_invalid_tracestate_is_dropped_but_traceparent_kept(tracestate: str) -> None:
    """Failing to parse tracestate MUST NOT affect the parsing of traceparent."""
    ctx = tc.extract({"traceparent": VALID, "tracestate": tracestate})
    assert ctx is not None
    assert ctx.trace_id == TRACE_ID
    assert ctx.tracestate == ()


def test_extract_keeps_a_tracestate_with_repeated_keys() -> None:
    """A repeated key used to cost every vendor its entry; now only the stale entry goes."""
    ctx = tc.extract({"traceparent": VALID, "tracestate": "rojo=2,congo=t61rcWkgMzE,rojo=1"})
    assert ctx is not None
    assert ctx.tracestate == (("rojo", "2"), ("congo", "t61rcWkgMzE"))
    assert tc.inject({}, ctx)["tracestate"] == "rojo=2,congo=t61rcWkgMzE"


@pytest.mark.parametrize(
    "header",
    [
        traceparent(trace_id="0" * 32),
        traceparent(version="ff"),
        VALID + "-extra",
        VALID.upper(),
        "garbage",
        "",
    ],
)
def test_invalid_traceparent_starts_a_new_trace(header: str) -> None:
    """``None`` tells the caller to start a new trace; the tracestate is never parsed then."""
    assert tc.extract({"traceparent": header, "tracestate": "foo=1"}) is None


def test_missing_traceparent_starts_a_new_trace_even_with_tracestate() -> None:
    assert tc.extract({"tracestate": "foo=1"}) is None
    assert tc.extract({}) is None


@pytest.mark.parametrize("name", ["traceparent", "TraceParent", "TrAcEpArEnT", "TRACEPARENT"])
@pytest.mark.parametrize("state_name", ["tracestate", "TraceState", "TRACESTATE"])
def test_header_names_are_matched_in_any_case(name: str, state_name: str) -> None:
    ctx = tc.extract({name: VALID, state_name: "foo=1"})
    assert ctx is not None
    assert ctx.trace_id == TRACE_ID
    assert ctx.tracestate == (("foo", "1"),)


@pytest.mark.parametrize("name", ["trace-parent", "trace.parent", "trace_parent", "traceparents"])
def test_wrong_header_names_are_not_traceparent(name: str) -> None:
    assert tc.extract({name: VALID}) is None


@pytest.mark.parametrize("name", ["trace-state", "trace.state"])
def test_wrong_header_names_are_not_tracestate(name: str) -> None:
    ctx = tc.extract({"traceparent": VALID, name: "foo=1"})
    assert ctx is not None
    assert ctx.tracestate == ()


def test_two_traceparent_fields_start_a_new_trace() -> None:
    """The W3C test suite (test_traceparent_duplicated) expects a restart, not a pick."""
    other = traceparent(trace_id="1" * 32)
    assert tc.extract({"traceparent": [VALID, other]}) is None
    assert tc.extract({"traceparent": VALID, "TraceParent": other}) is None
    assert tc.extract({"traceparent": [VALID]}) is not None


def test_multiple_tracestate_fields_are_combined() -> None:
    ctx = tc.extract({"traceparent": VALID, "tracestate": ["foo=1,bar=2", "", "baz=3"], "TraceState": "qux=4"})
    assert ctx is not None
    assert ctx.tracestate == (("foo", "1"), ("bar", "2"), ("baz", "3"), ("qux", "4"))


def test_repeated_fields_of_a_multi_dict_are_all_seen() -> None:
    """Multi-dicts (here ``email.message.Message``, as ``http.client`` uses) return only the
    first field from ``[]``; the Recommendation needs all of them."""
    message = email.message.Message()
    message["Traceparent"] = VALID
    message["tracestate"] = "foo=1"
    message["TraceState"] = "bar=2"
    ctx = tc.extract(message)  # type: ignore[arg-type]
    assert ctx is not None
    assert ctx.tracestate == (("foo", "1"), ("bar", "2"))

    message["traceparent"] = traceparent(trace_id="1" * 32)
    assert tc.extract(message) is None  # type: ignore[arg-type]


def test_extract_does_not_raise_on_odd_header_values() -> None:
    assert tc.extract({"traceparent": None}) is None
    assert tc.extract({"traceparent": b"00-..."}) is None
    ctx = tc.extract({"traceparent": VALID, "tracestate": b"foo=1", "baggage": 5})
    assert ctx is not None
    assert (ctx.tracestate, dict(ctx.baggage)) == ((), {})


def test_baggage_fields_are_combined() -> None:
    ctx = tc.extract({"traceparent": VALID, "baggage": ["a=1", "b=2;prop=x"]})
    assert ctx is not None
    assert dict(ctx.baggage) == {"a": "1", "b": "2"}


# --- inject -----------------------------------------------------------------------------


def test_inject_then_extract_round_trips_traceparent_tracestate_and_baggage() -> None:
    ctx = TraceContext(
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        sampled=False,
        tracestate=(("rojo", "00f067aa0ba902b7"), ("t@v", " x y")),
        baggage={"user_id": "u 1", "odd,key=": "ü;,=%"},
    )
    headers = tc.inject({}, ctx)
    assert headers["traceparent"] == traceparent(flags="00")
    assert headers["tracestate"] == "rojo=00f067aa0ba902b7,t@v= x y"
    back = tc.extract(headers)
    assert back is not None
    assert (back.trace_id, back.span_id, back.sampled) == (TRACE_ID, SPAN_ID, False)
    assert back.tracestate == ctx.tracestate
    assert dict(back.baggage) == dict(ctx.baggage)


@settings(max_examples=200, deadline=None)
@given(baggage=st.dictionaries(st.text(min_size=1).filter(str.strip), st.text(), max_size=5))
def test_baggage_round_trips_any_text(baggage: dict[str, str]) -> None:
    """Percent-encoding must protect ',', ';', '=' and whitespace in keys and values."""
    headers = tc.inject({}, TraceContext(trace_id=TRACE_ID, span_id=SPAN_ID, baggage=baggage))
    back = tc.extract(headers)
    assert back is not None
    assert dict(back.baggage) == baggage


def test_inject_writes_only_traceparent_for_a_bare_context() -> None:
    assert tc.inject({}, TraceContext(trace_id=TRACE_ID, span_id=SPAN_ID)) == {"traceparent": VALID}


def test_inject_drops_members_a_receiver_would_reject() -> None:
    ctx = TraceContext(trace_id=TRACE_ID, span_id=SPAN_ID, tracestate=(("BAD", "1"), ("ok", "1")))
    assert tc.inject({}, ctx)["tracestate"] == "ok=1"
    only_bad = TraceContext(trace_id=TRACE_ID, span_id=SPAN_ID, tracestate=(("BAD", "1"),))
    assert "tracestate" not in tc.inject({}, only_bad)


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [
        ("trace_456", "span_123"),
        ("trace_456", SPAN_ID),
        (TRACE_ID, "span_123"),
        (TRACE_ID.upper(), SPAN_ID),
        ("0" * 32, SPAN_ID),
        (TRACE_ID, "0" * 16),
    ],
)
def test_inject_leaves_headers_alone_for_non_w3c_ids(trace_id: str, span_id: str) -> None:
    """Callers' own ids ("trace_456") cannot travel as W3C headers, and must not raise either."""
    headers = {"x-request-id": "r1"}
    assert tc.inject(headers, SimpleNamespace(trace_id=trace_id, span_id=span_id, sampled=True)) == {
        "x-request-id": "r1"
    }


def test_inject_uses_the_current_parent_by_default() -> None:
    assert tc.inject({}) == {}
    with tc.attach(TraceContext(trace_id=TRACE_ID, span_id=SPAN_ID)):
        assert tc.inject({}) == {"traceparent": VALID}


def test_inject_accepts_an_open_span_without_a_sampled_attribute() -> None:
    """A span object only promises ids; a missing ``sampled`` means it is being recorded."""
    assert tc.inject({}, SimpleNamespace(trace_id=TRACE_ID, span_id=SPAN_ID)) == {"traceparent": VALID}


def test_child_keeps_the_trace_and_points_at_its_parent() -> None:
    root = TraceContext(trace_id=TRACE_ID, span_id=SPAN_ID, sampled=False, tracestate=(("a", "1"),))
    child = root.child()
    assert (child.trace_id, child.parent_span_id, child.sampled, child.tracestate) == (
        TRACE_ID,
        SPAN_ID,
        False,
        (("a", "1"),),
    )
    assert child.span_id != SPAN_ID


# --- ids --------------------------------------------------------------------------------


def _is_lower_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def test_trace_ids_are_uuid7_in_32_lowercase_hex() -> None:
    """Opik rejects any id that is not a UUIDv7; W3C wants 32 lowercase hex, never all zero."""
    for _ in range(1000):
        trace_id = tc.new_trace_id()
        assert _is_lower_hex(trace_id, 32)
        assert trace_id != "0" * 32
        parsed = uuid.UUID(hex=trace_id)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert parsed.hex == trace_id


def test_trace_id_carries_the_clock_in_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    now_ns = 1_717_171_717_123_456_789
    monkeypatch.setattr(time, "time_ns", lambda: now_ns)
    trace_id = tc.new_trace_id()
    assert int(trace_id[:12], 16) == now_ns // 1_000_000


def test_trace_ids_are_time_ordered_across_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(1_700_000_000_000, 1_700_000_000_000 + 500))
    monkeypatch.setattr(time, "time_ns", lambda: next(clock) * 1_000_000)
    ids = [tc.new_trace_id() for _ in range(500)]
    assert ids == sorted(ids)


def test_trace_ids_on_the_real_clock_sort_by_creation_time() -> None:
    first = tc.new_trace_id()
    time.sleep(0.003)  # the real clock is the point here (the injected one is tested above): past a millisecond
    second = tc.new_trace_id()
    assert first < second


def test_span_ids_are_16_lowercase_hex_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(1000):
        span_id = tc.new_span_id()
        assert _is_lower_hex(span_id, 16)
        assert span_id != "0" * 16
    monkeypatch.setattr(tc, "getrandbits", lambda bits: 0)
    assert tc.new_span_id() == "0" * 15 + "1"


def test_span_ids_use_the_whole_64_bit_space() -> None:
    """Forcing a bit (the old ``| 1``) made every id odd: half the space, and recognisable."""
    last_digits = {int(tc.new_span_id()[-1], 16) % 2 for _ in range(200)}
    assert last_digits == {0, 1}


def test_no_duplicate_ids_over_100k() -> None:
    trace_ids = {tc.new_trace_id() for _ in range(100_000)}
    span_ids = {tc.new_span_id() for _ in range(100_000)}
    assert len(trace_ids) == 100_000
    assert len(span_ids) == 100_000


def test_ids_never_read_os_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.urandom`` releases the GIL; on a busy process the caller then waits (see DESIGN)."""

    def forbidden(size: int) -> bytes:
        raise AssertionError("os.urandom called on the hot path")

    monkeypatch.setattr(os, "urandom", forbidden)
    root = TraceContext.new_root()
    child = root.child()
    for _ in range(1000):
        tc.new_trace_id()
        tc.new_span_id()
    headers = tc.inject({}, child)
    assert tc.extract(headers) is not None


def test_generated_ids_make_a_valid_traceparent() -> None:
    root = TraceContext.new_root()
    assert tc.parse_traceparent(root.traceparent) == (root.trace_id, root.span_id, 1)


# --- the current span -------------------------------------------------------------------


def _ctx(span_id: str = SPAN_ID) -> TraceContext:
    return TraceContext(trace_id=TRACE_ID, span_id=span_id)


def test_attach_sets_and_restores_the_current_parent() -> None:
    outer, inner = _ctx("1" * 16), _ctx("2" * 16)
    assert tc.current_parent() is None
    with tc.attach(outer) as entered:
        assert entered is outer
        assert tc.current_parent() is outer
        with tc.attach(inner):
            assert tc.current_parent() is inner
        assert tc.current_parent() is outer
        with tc.attach(None):
            assert tc.current_parent() is None  # a remote "start a new trace" masks the parent
        assert tc.current_parent() is outer
    assert tc.current_parent() is None


def test_attach_restores_on_error() -> None:
    with pytest.raises(RuntimeError), tc.attach(_ctx()):
        raise RuntimeError("boom")
    assert tc.current_parent() is None


def test_set_and_reset_current() -> None:
    token = tc.set_current(_ctx())
    assert tc.current_parent() is not None
    tc.reset_current(token)
    assert tc.current_parent() is None


def test_reset_with_a_token_from_another_context_clears_the_parent() -> None:
    """A generator finalised in another context must not leave a stale parent behind."""
    foreign = contextvars.copy_context().run(tc.set_current, _ctx("3" * 16))
    tc.set_current(_ctx())
    tc.reset_current(foreign)
    assert tc.current_parent() is None


async def test_gather_children_inherit_the_parent_and_do_not_leak_back() -> None:
    parent = _ctx("1" * 16)

    async def child(index: int) -> tuple[Any, Any]:
        seen = tc.current_parent()
        tc.set_current(_ctx(f"{index + 2:016x}"))
        await asyncio.sleep(0)
        return seen, tc.current_parent()

    with tc.attach(parent):
        results = await asyncio.gather(*(child(i) for i in range(5)))
        assert tc.current_parent() is parent
    for index, (seen, own) in enumerate(results):
        assert seen is parent
        assert own.span_id == f"{index + 2:016x}"  # siblings do not see each other's spans


async def test_create_task_child_sees_the_parent_at_creation_only() -> None:
    parent, later = _ctx("1" * 16), _ctx("2" * 16)
    started = asyncio.Event()
    release = asyncio.Event()

    async def child() -> tuple[Any, Any]:
        seen = tc.current_parent()
        tc.set_current(_ctx("4" * 16))
        started.set()
        await release.wait()
        return seen, tc.current_parent()

    token = tc.set_current(parent)
    task = asyncio.create_task(child())
    tc.set_current(later)  # after creation: the task already holds its own copy
    await started.wait()
    assert tc.current_parent() is later  # the child's own set did not leak back
    release.set()
    seen, own = await task
    tc.reset_current(token)
    assert seen is parent
    assert own.span_id == "4" * 16
    assert tc.current_parent() is None
