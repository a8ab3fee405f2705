"""What the client writes to a terminal: a correct server's lines unchanged, anything else escaped.

The property that matters: whatever bytes a server sends, the displayed text
holds no character a terminal would act on.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cli.display import render, visible
from protocol import (
    Event,
    InvalidInput,
    LineTooLong,
    format_event,
)
from protocol.escaping import find_unsafe
from tests.strategies import events


def _assert_terminal_safe(text: str) -> None:
    assert find_unsafe(text) is None, repr(text)
    text.encode("utf-8")  # no lone surrogates: printable on a UTF-8 terminal


@given(events)
def test_a_correct_servers_lines_are_shown_exactly_as_sent(event: Event) -> None:
    wire = format_event(event)
    shown = render(wire[:-1])
    assert shown.event == event
    assert shown.text == wire[:-1].decode("utf-8")


@given(st.binary(max_size=200))
def test_no_bytes_from_a_server_reach_the_terminal_unescaped(raw: bytes) -> None:
    line = raw.replace(b"\n", b"")  # the framing has already split on newlines
    _assert_terminal_safe(render(line).text)


@given(st.text(max_size=100))
def test_any_text_from_a_server_is_shown_safely(text: str) -> None:
    raw = text.encode("utf-8", errors="surrogatepass").replace(b"\n", b"")
    _assert_terminal_safe(render(raw).text)


def test_terminal_escapes_are_shown_as_visible_escapes() -> None:
    assert render(b"\x1b]0;pwned\x07").text == r"\x1b]0;pwned\x07"
    assert render(b"\x1b[2J").text == r"\x1b[2J"
    assert render(b"abc\rXYZ\x08\x7f").text == r"abc\x0dXYZ\x08\x7f"
    assert render("CSI as C1 \u009b1m".encode()).text == r"CSI as C1 \x9b1m"
    assert render("bidi \u202e override".encode()).text == r"bidi \u202e override"


def test_bytes_that_are_not_utf8_are_shown_as_hex() -> None:
    assert render(b"caf\xe9 \x9b").text == r"caf\xe9 \x9b"


def test_an_event_carrying_a_raw_control_character_is_not_trusted() -> None:
    shown = render(b'<Message from Bob: "\x1b[31mred">')
    assert shown.event is None
    assert shown.text == r'<Message from Bob: "\x1b[31mred">'


def test_backslashes_in_a_non_event_line_are_doubled_so_escapes_stay_unambiguous() -> None:
    assert visible(b"\\x1b is four characters") == r"\\x1b is four characters"


def test_an_event_the_protocol_would_not_write_is_still_shown_escaped() -> None:
    # Parses as InvalidInput, but the reason is not one the server would write.
    raw = '<Invalid input: caf\u00e9. Type "help" for commands.>'.encode()
    shown = render(raw)
    assert shown.event == InvalidInput("caf\u00e9")
    assert shown.text == raw.decode()


def test_an_overlong_line_is_reported_not_shown() -> None:
    assert render(LineTooLong(1024)).text == "[a server line longer than 1024 bytes was not shown]"
