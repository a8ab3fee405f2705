"""Server events: round trips, safe characters, and no forgeries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    BroadcastFrom,
    BroadcastSent,
    Chat,
    InvalidInput,
    MessageFrom,
    MessageSent,
    OnlineUsers,
    ProtocolError,
    ServerFull,
    ShuttingDown,
    UsernameTaken,
    UserOffline,
    UserOnline,
    UserUnknown,
    format_command,
    format_event,
    parse_command,
    parse_event,
)
from protocol.escaping import find_unsafe
from tests.strategies import events, usernames


def wire_line(event: object) -> str:
    data = format_event(event)  # type: ignore[arg-type]
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return data[:-1].decode("utf-8")


@given(events)
def test_every_event_survives_format_then_parse(event: object) -> None:
    assert parse_event(wire_line(event)) == event


@given(events)
def test_no_event_line_carries_a_raw_control_character(event: object) -> None:
    assert find_unsafe(wire_line(event)) is None


@given(st.text())
def test_the_event_parser_raises_only_protocol_error(line: str) -> None:
    try:
        parse_event(line)
    except ProtocolError:
        pass


@given(usernames, st.text(min_size=1))
def test_a_message_cannot_pose_as_another_event(sender: str, text: str) -> None:
    """Whatever Alice types, Bob's line parses as a message from Alice with that text."""
    delivered = wire_line(MessageFrom(sender, text))
    assert parse_event(delivered) == MessageFrom(sender, text)
    assert "\n" not in delivered


@given(usernames, st.text(min_size=1))
def test_what_the_sender_typed_is_what_the_recipient_recovers(sender: str, text: str) -> None:
    typed = parse_command(format_command(Chat("Bob", text))[:-1].decode())
    assert isinstance(typed, Chat)
    assert parse_event(wire_line(MessageFrom(sender, typed.text))).text == text  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (UserOnline("Alice"), "<User Alice is online.>"),
        (UserOffline("Bob"), "<User Bob is offline.>"),
        (UserUnknown("Carol"), "<User Carol does not exist.>"),
        (MessageSent("Bob", "Hello Bob!"), "<To Bob> Hello Bob!"),
        (MessageFrom("Alice", "Hello Bob!"), '<Message from Alice: "Hello Bob!">'),
        (MessageFrom("Alice", 'a "quote" \\'), '<Message from Alice: "a \\"quote\\" \\\\">'),
        (MessageFrom("Alice", "\x1b[2J\r\u2028\x85"), '<Message from Alice: "\\x1b[2J\\x0d\\u2028\\x85">'),
        (BroadcastFrom("Alice", "hi"), '<Broadcast from Alice: "hi">'),
        (BroadcastSent("hi"), "<To everyone> hi"),
        (OnlineUsers(("Alice", "Bob")), "<Online users: Alice, Bob>"),
        (OnlineUsers(()), "<Online users: >"),
        (InvalidInput("unknown command"), '<Invalid input: unknown command. Type "help" for commands.>'),
        (UsernameTaken("Alice"), "<Username Alice is already taken.>"),
        (ServerFull(), "<Server is full.>"),
        (ShuttingDown(), "<Server is shutting down.>"),
    ],
)
def test_event_lines_read_as_the_original_wrote_them(event: object, line: str) -> None:
    assert wire_line(event) == line
    assert parse_event(line) == event


def test_a_line_with_raw_escape_is_not_an_event() -> None:
    with pytest.raises(ProtocolError):
        parse_event('<Message from Alice: "\x1b[2J">')
