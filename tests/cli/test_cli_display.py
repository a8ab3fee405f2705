"""What the client writes to a terminal: a correct server's lines unchanged, anything else escaped.

The property that matters: whatever bytes a server sends, the displayed text
holds no character a terminal would act on.
"""

from __future__ import annotations

import time

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


# -- for people: cli.present ------------------------------------------------------

from prompt_toolkit.formatted_text import StyleAndTextTuples  # noqa: E402
from prompt_toolkit.utils import get_cwidth  # noqa: E402

from cli.present import Line, Presenter, is_harmful, plain, wrap, wrap_cells  # noqa: E402
from protocol import MessageFrom, NotDelivered, UserOffline, UserOnline  # noqa: E402


def _rows(body: str, width: int | None = 40, label: str = "Bob → you: ") -> list[str]:
    return [plain(row) for row in Presenter("Alice", None).rows(Line("", label, body), width)]


def test_message_text_is_shown_as_typed_and_only_harmful_characters_as_tokens() -> None:
    assert _rows('C:\\temp "q" 中文 😀 👩\u200d💻 café', None) == [
        'Bob → you: C:\\temp "q" 中文 😀 👩\u200d💻 café']
    assert _rows("esc\x1b[31m del\x7f c1\x9b nel\x85", None) == [
        "Bob → you: esc\\x1b[31m del\\x7f c1\\x9b nel\\x85"]
    assert _rows("zw\u200bsp rtl\u202eo iso\u2066 ls\u2028 pu\ue000 un\U000e0fff"
                 " nc\ufdd0 fill\u3164 lone\udc80", None) == [
        "Bob → you: zw<U+200B>sp rtl<U+202E>o iso<U+2066> ls<U+2028> pu<U+E000>"
        " un<U+E0FFF> nc<U+FDD0> fill<U+3164> lone<U+DC80>"]
    # A joiner not between two emoji is shown.
    assert _rows("a\u200db", None) == ["Bob → you: a<U+200D>b"]
    # Up to eight combining marks in a row stay; the ninth on are shown.
    assert _rows("e" + "\u0301" * 10, None) == [
        "Bob → you: e" + "\u0301" * 8 + "<U+0301><U+0301>"]


def test_tabs_and_newlines_are_laid_out_as_typed() -> None:
    assert _rows("a\tbc\td\n\tnext", None) == ["Bob → you: a   bc  d", "        next"]


def test_rows_wrap_with_a_hanging_indent_and_swallow_spaces_at_the_break() -> None:
    rows = _rows("one two three four five six seven eight nine ten", 30)
    assert rows == ["Bob → you: one two three four", "    five six seven eight nine",
                    "    ten"]
    # Spaces padding a fake event to the start of a row vanish at the break.
    assert _rows("x" + " " * 200 + "-- Admin is online", 40) == [
        "Bob → you: x", "    -- Admin is online"]
    # A word longer than a row is cut; wide characters are never split.
    assert _rows("中" * 20, 20) == ["Bob → you: 中中中中", "    中中中中中中中中",
                                    "    中中中中中中中中"]


@given(st.text(max_size=300), st.integers(min_value=20, max_value=120))
def test_any_message_is_safe_fits_the_width_and_cannot_start_a_row(text: str,
                                                                     width: int) -> None:
    rows = _rows(text, width)
    for number, row in enumerate(rows):
        assert not any(is_harmful(char) and char != "\u200d" for char in row), repr(row)
        assert "\n" not in row and "\t" not in row
        assert get_cwidth(row) <= width
        if number:
            assert row == "" or row.startswith("    ")


def test_events_read_as_sentences() -> None:
    presenter = Presenter("Alice", "%H:%M", clock=lambda: (2026, 1, 1, 9, 5, 7, 0, 1, 0))
    assert presenter.text(presenter.event(MessageFrom("Bob", "hi"), "")) == (
        "[09:05] Bob → you: hi")
    assert presenter.text(presenter.event(UserOnline("Bob"), "")) == "[09:05] -- Bob is online"
    assert presenter.text(presenter.event(UserOffline("alice"), "")) == "[09:05] -- logged out"
    assert presenter.text(presenter.event(NotDelivered("Bob", "gone"), "")) == (
        "[09:05] ✗ a message to Bob was not delivered: gone")
    assert presenter.text(presenter.event(None, r"junk \x1b")) == r"[09:05] junk \x1b"
    seconds = Presenter("Alice", "%H:%M:%S", clock=lambda: (2026, 1, 1, 9, 5, 7, 0, 1, 0))
    assert seconds.text(Line("", "x")) == "[09:05:07] x"
    rows = seconds.rows(Line("", "Bob → you: ", "a " * 40), 40)
    assert plain(rows[1]).startswith(" " * 13 + "a")  # under the text after "[09:05:07] "


def test_wrap_with_no_width_breaks_only_at_newlines() -> None:
    assert [plain(r) for r in wrap([("", "> ")], [("", "a " * 100 + "\nb")], None, 2)] == [
        "> " + "a " * 99 + "a", "  b"]


# Mostly text the fast path takes (plain, wide, emoji, a few marks), and any text.
_MESSAGES = st.text(alphabet=" ab中😀é\u0301", max_size=200) | st.text(max_size=200)


@given(_MESSAGES, st.none() | st.integers(min_value=1, max_value=120),
       st.sampled_from(["", "class:own"]))
def test_a_line_with_nothing_to_lay_out_comes_out_as_laid_out_cell_by_cell(
        text: str, width: int | None, style: str) -> None:
    prefix: StyleAndTextTuples = [("class:time", "[09:05] "), ("class:dm-in", "Bob → you: ")]
    body: StyleAndTextTuples = [(style, text)]
    assert wrap(prefix, body, width, 12) == wrap_cells(prefix, body, width, 12)


def test_stored_messages_read_as_such_with_their_time() -> None:
    from protocol import HistoryEnd, HistoryLine, WaitingDelivered, WaitingMessage

    presenter = Presenter("Alice", None, zone=time.gmtime)
    sent = "2026-12-07T06:17:43.123Z"
    assert presenter.text(presenter.event(WaitingMessage("Bob", sent, "hi\x1b"), "")) == (
        "Bob → you (while away, 2026-12-07 06:17): hi\\x1b")
    assert presenter.text(presenter.event(WaitingDelivered("Bob", sent), "")) == (
        "✓ Bob got your message of 2026-12-07 06:17")
    assert presenter.text(presenter.event(HistoryLine("7", sent, "Bob", "alice", "yo"), "")) == (
        "[2026-12-07 06:17 #7] Bob → you: yo")
    assert presenter.text(presenter.event(HistoryLine("8-0", sent, "Alice", "everyone", "all"),
                                          "")) == "[2026-12-07 06:17 #8-0] you → everyone: all"
    assert presenter.text(presenter.event(HistoryEnd("Bob", 1), "")) == (
        "-- end of history with Bob: 1 shown")
