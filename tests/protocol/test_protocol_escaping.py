"""Escaping by Unicode category: what is never raw on the wire, and what a client may send raw.

The rules, as :mod:`protocol.escaping` states them, checked against
``unicodedata`` directly (the module builds its tables in bulk for speed;
these tests ask character by character).
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    MAX_COMBINING_MARKS,
    BroadcastFrom,
    MessageFrom,
    MessageSent,
    RemoteProtocolError,
    decode_line,
    escape,
    escaping,
    format_event,
    parse_event,
    unescape,
)
from protocol.escaping import ESCAPED_CATEGORIES, INVISIBLE_LETTERS, find_refused, find_unsafe
from tests.strategies import events, is_unicode, raw_texts, tricky_texts, usernames

ALL_CODE_POINTS = range(0x110000)


def always_escaped(char: str) -> bool:
    """The rule for single characters, straight from unicodedata."""
    code = ord(char)
    noncharacter = 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE
    return (unicodedata.category(char) in ESCAPED_CATEGORIES or char in INVISIBLE_LETTERS
            or noncharacter)


def is_mark(char: str) -> bool:
    return unicodedata.category(char) in ("Mn", "Me")


def longest_mark_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if is_mark(char) else 0
        longest = max(longest, run)
    return longest


def reference_escape(text: str, *, quoted: bool = True) -> str:
    """escape(), written the slow and obvious way."""
    out, run = [], 0
    for char in text:
        run = run + 1 if is_mark(char) else 0
        if char == "\\" or (quoted and char == '"'):
            out.append("\\" + char)
        elif (always_escaped(char) and not 0xD800 <= ord(char) <= 0xDFFF) or (
            run > MAX_COMBINING_MARKS
        ):
            out.append(escaping.escape_sequence(char))
        else:
            out.append(char)
    return "".join(out)


def event_text(line: bytes) -> str:
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return line[:-1].decode("utf-8")


# -- the tables ---------------------------------------------------------------------


def test_the_bulk_built_tables_match_unicodedata_for_every_code_point() -> None:
    escaped = bytearray(0x110000)
    for first, last in escaping._ESCAPED_RANGES:
        escaped[first : last + 1] = b"\x01" * (last - first + 1)
    marks = bytearray(0x110000)
    for first, last in escaping._MARK_RANGES:
        marks[first : last + 1] = b"\x01" * (last - first + 1)
    wrong = [
        hex(code) for code in ALL_CODE_POINTS
        if bool(escaped[code]) != always_escaped(chr(code))
        or bool(marks[code]) != is_mark(chr(code))
    ]
    assert wrong == []


def test_every_always_escaped_character_is_found_unsafe_alone_and_no_other() -> None:
    # The compiled patterns (BMP classes, astral binary search) agree with the tables.
    wrong = [hex(code) for code in ALL_CODE_POINTS
             if (find_unsafe(chr(code)) is not None) != always_escaped(chr(code))]
    assert wrong == []


# -- every event line ---------------------------------------------------------------


@given(events)
def test_no_event_line_holds_a_character_of_the_escaped_categories_raw(event: object) -> None:
    line = event_text(format_event(event))  # type: ignore[arg-type]
    assert [c for c in line if always_escaped(c)] == []


@given(events)
def test_no_event_line_stacks_more_combining_marks_than_the_cap(event: object) -> None:
    assert longest_mark_run(event_text(format_event(event))) <= MAX_COMBINING_MARKS  # type: ignore[arg-type]


@given(raw_texts, st.booleans())
def test_escape_is_the_rule_applied_character_by_character(text: str, quoted: bool) -> None:
    assert escape(text, quoted=quoted) == reference_escape(text, quoted=quoted)


@given(raw_texts, st.booleans())
def test_unescape_gives_back_exactly_what_was_escaped(text: str, quoted: bool) -> None:
    assert unescape(escape(text, quoted=quoted)) == text


@given(usernames, tricky_texts.filter(is_unicode))
def test_invisible_text_reaches_the_recipient_visible_and_comes_back_whole(
    sender: str, text: str,
) -> None:
    line = event_text(format_event(MessageFrom(sender, text)))
    assert find_unsafe(line) is None
    assert parse_event(line) == MessageFrom(sender, text)


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("tab\there", "tab\\x09here"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("family \U0001f468\u200d\U0001f469\u200d\U0001f467", "family \U0001f468\\u200d\U0001f469\\u200d\U0001f467"),
        ("\u200e\u200f\u061c marks", "\\u200e\\u200f\\u061c marks"),
        ("\u202eevil\u2066", "\\u202eevil\\u2066"),
        ("soft\u00adhyphen", "soft\\xadhyphen"),
        ("\ufeffbom \u2060 \u2062", "\\ufeffbom \\u2060 \\u2062"),
        ("\ufff9anchor\ufffb", "\\ufff9anchor\\ufffb"),
        ("tag\U000e0041\U000e007f", "tag\\U000e0041\\U000e007f"),
        ("non\ufffe\uffff\U0001fffe\ufdd0", "non\\ufffe\\uffff\\U0001fffe\\ufdd0"),
        ("private\ue000\U000f0000", "private\\ue000\\U000f0000"),
        ("unassigned\u0378\U00050000", "unassigned\\u0378\\U00050000"),
        ("blank\u3164name\u115f\u1160\uffa0", "blank\\u3164name\\u115f\\u1160\\uffa0"),
        ("lines\u2028\u2029", "lines\\u2028\\u2029"),
        ("emoji \U0001f600 \u00e9 \u4e2d \u05e9\u05c1\u05b8", "emoji \U0001f600 \u00e9 \u4e2d \u05e9\u05c1\u05b8"),
    ],
)
def test_invisible_and_format_characters_are_delivered_as_escapes(text: str, wire: str) -> None:
    assert event_text(format_event(MessageSent("Bob", text))) == f"<To Bob> {wire}"
    assert event_text(format_event(BroadcastFrom("Bob", text))) == f'<Broadcast from Bob: "{wire}">'


# -- combining marks ----------------------------------------------------------------


def test_real_scripts_keep_their_marks_raw() -> None:
    for word in ["Vi\u1ec7t", "vie\u0323\u0302t", "\u0928\u092e\u0938\u094d\u0924\u0947",
                 "\u05d1\u05bc\u05b0\u05bc\u0591\u05c3", "\u0e01\u0e34\u0e48", "1\ufe0f\u20e3"]:
        assert escape(word) == word


def test_marks_past_the_cap_are_escaped_and_the_first_ones_stay() -> None:
    zalgo = "Z" + "\u0301" * MAX_COMBINING_MARKS + "\u0302\U0001d167" + "a"
    assert escape(zalgo) == "Z" + "\u0301" * MAX_COMBINING_MARKS + "\\u0302\\U0001d167a"
    assert unescape(escape(zalgo)) == zalgo


def test_each_run_of_marks_is_counted_on_its_own() -> None:
    two_runs = ("a" + "\u0301" * MAX_COMBINING_MARKS) * 2
    assert escape(two_runs) == two_runs


def test_a_raw_run_of_too_many_marks_is_refused_with_its_escape() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_line(("chat Bob x" + "\u0301" * (MAX_COMBINING_MARKS + 1)).encode())
    assert caught.value.reason == (
        f"more than {MAX_COMBINING_MARKS} combining marks on one character;"
        " inside quotes write the rest as escapes such as \\u0301"
    )


def test_the_cap_is_written_in_the_escaping_docs() -> None:
    assert "MAX_COMBINING_MARKS" in (escaping.__doc__ or "")
    assert MAX_COMBINING_MARKS == 8


# -- what a client may send raw -----------------------------------------------------


def test_a_client_may_send_raw_everything_but_line_breakers_and_terminal_controls() -> None:
    refused = [code for code in range(0x3000) if find_refused(chr(code)) is not None]
    assert refused == [*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]


@given(st.text())
def test_whatever_a_client_may_send_raw_is_refused_or_escaped_on_delivery(text: str) -> None:
    # The two rules fit together: nothing passes both unnoticed.
    if find_refused(text) is None:
        assert find_unsafe(escape(text)) is None
