"""The history command and the stored-message lines: as written, round trips, and no forgeries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    BroadcastFrom,
    History,
    HistoryEnd,
    HistoryLine,
    LocalProtocolError,
    MessageFrom,
    MessageStored,
    RemoteProtocolError,
    WaitingDelivered,
    WaitingMessage,
    format_command,
    format_event,
    format_server_time,
    parse_command,
    parse_event,
    parse_server_time,
)
from protocol.servertime import MAX_SERVER_TIME_MS
from tests.strategies import conversations, message_ids, server_times, usernames

T = "2026-12-07T06:17:43.123Z"


def wire_line(event: object) -> str:
    data = format_event(event)  # type: ignore[arg-type]
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return data[:-1].decode("utf-8")


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (MessageStored("Bob"), "<Message to Bob stored until they log in.>"),
        (WaitingMessage("Alice", T, "hi"), f'<Waiting message from Alice, sent {T}: "hi">'),
        (WaitingDelivered("Bob", T), f"<Waiting message to Bob, sent {T}, delivered.>"),
        (HistoryLine("17", T, "Alice", "Bob", "hi"), f'<History #17 {T} Alice to Bob: "hi">'),
        (HistoryLine("1733552263123-0", T, "Alice", "everyone", 'a "q"'),
         f'<History #1733552263123-0 {T} Alice to everyone: "a \\"q\\"">'),
        (HistoryEnd("Bob", 3), "<End of history with Bob: 3 shown.>"),
        (HistoryEnd("everyone", 0), "<End of history with everyone: 0 shown.>"),
    ],
)
def test_stored_message_lines_read_as_written(event: object, line: str) -> None:
    assert wire_line(event) == line
    assert parse_event(line) == event


@given(message_ids, server_times, usernames, conversations, st.text(min_size=1))
def test_a_hostile_text_in_history_is_escaped_exactly_as_live(
    message_id: str, time: str, sender: str, to: str, text: str,
) -> None:
    """The quoted part of a history line is byte for byte the live message's."""
    try:
        live = wire_line(MessageFrom(sender, text))
    except LocalProtocolError:
        return  # text no formatter can write (a lone surrogate)
    stored = wire_line(HistoryLine(message_id, time, sender, to, text))
    assert stored.split(": ", 1)[1] == live.split(": ", 1)[1]
    assert parse_event(stored) == HistoryLine(message_id, time, sender, to, text)
    waiting = wire_line(WaitingMessage(sender, time, text))
    assert waiting.split(": ", 1)[1] == live.split(": ", 1)[1]


@given(usernames, st.text(min_size=1))
def test_no_message_text_makes_a_live_line_read_as_a_stored_one(sender: str, text: str) -> None:
    for event in (MessageFrom(sender, text), BroadcastFrom(sender, text)):
        try:
            line = wire_line(event)
        except LocalProtocolError:
            return
        assert parse_event(line) == event


@pytest.mark.parametrize(
    "line",
    [
        f'<History #x {T} Alice to Bob: "hi">',
        f'<History #17 {T} Alice to Everyone: "hi">',
        f'<History #17 {T} everyone to Bob: "hi">',
        '<History #17 2026-13-07T06:17:43.123Z Alice to Bob: "hi">',
        '<History #17 2026-12-07T06:17:43Z Alice to Bob: "hi">',
        '<History #17 ٢٠٢٦-12-07T06:17:43.123Z Alice to Bob: "hi">',
        f'<History #17 {T} Alice to Bob: "\x1b">',
        f'<Waiting message from everyone, sent {T}: "hi">',
        "<End of history with Bob: -1 shown.>",
        "<End of history with -x: 1 shown.>",
        "<Message to everyone stored until they log in.>",
    ],
)
def test_a_malformed_stored_line_is_not_an_event(line: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_event(line)


@pytest.mark.parametrize(
    "event",
    [
        HistoryLine("x", T, "Alice", "Bob", "hi"),
        HistoryLine("1", "yesterday", "Alice", "Bob", "hi"),
        HistoryLine("1", T, "everyone", "Bob", "hi"),
        HistoryLine("1", T, "Alice", "Bob", "\udc80"),
        WaitingMessage("Alice", "2026-12-07", "hi"),
        HistoryEnd("Bob", -1),
        MessageStored("everyone"),
    ],
)
def test_formatting_a_stored_line_the_wire_cannot_carry_is_our_own_error(event: object) -> None:
    with pytest.raises(LocalProtocolError):
        format_event(event)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("history Bob", History("Bob")),
        ("history everyone", History("everyone")),
        ("HISTORY Everyone 20", History("everyone", None, 20)),
        ("history Bob before 42", History("Bob", "42")),
        ("history Bob before 1733552263123-0 100", History("Bob", "1733552263123-0", 100)),
        ("history  Bob   BEFORE  42  5 ", History("Bob", "42", 5)),
    ],
)
def test_history_as_people_type_it(line: str, command: History) -> None:
    assert parse_command(line) == command
    assert parse_command(format_command(command)[:-1].decode()) == command


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("history", "usage is history <user>|everyone [before <id>] [<count>]"),
        ("history Bob before", "usage is history <user>|everyone [before <id>] [<count>]"),
        ("history Bob 1 2", "usage is history <user>|everyone [before <id>] [<count>]"),
        ("history Bob 0", "a history page holds 1 to 100 messages"),
        ("history Bob 101", "a history page holds 1 to 100 messages"),
        ("history Bob 0100", "a history page holds 1 to 100 messages"),
        ("history Bob lots", "a history page holds 1 to 100 messages"),
        ("history Bob before yesterday", "a message id is written as history lines show it, like 42"),
        ("history -x", "history is of a conversation: a username, or everyone"),
        ("history Bob\t5", "a tab does not separate words; use a space"),
    ],
)
def test_history_mistakes_get_a_reason(line: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_command(line)
    assert str(caught.value) == reason


@given(st.integers(0, MAX_SERVER_TIME_MS))
def test_server_time_survives_format_then_parse(milliseconds: int) -> None:
    text = format_server_time(milliseconds)
    assert len(text) == len(T)
    assert parse_server_time(text) == milliseconds


def test_server_time_is_utc_with_milliseconds() -> None:
    assert format_server_time(0) == "1970-01-01T00:00:00.000Z"
    assert parse_server_time(T) % 1000 == 123
    with pytest.raises(LocalProtocolError):
        format_server_time(-1)
