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
    InvalidUsername,
    LocalProtocolError,
    MessageFrom,
    MessageSent,
    NotDelivered,
    OnlineUsers,
    PasswordChanged,
    PasswordRequired,
    Registered,
    RemoteProtocolError,
    ServerFull,
    ShuttingDown,
    TooManyTries,
    UsernameTaken,
    UserOffline,
    UserOnline,
    UserUnknown,
    WrongPassword,
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
def test_the_event_parser_raises_only_remote_protocol_error(line: str) -> None:
    try:
        parse_event(line)
    except RemoteProtocolError:
        pass


@given(st.lists(st.sampled_from(["<", ">", "User ", "Online users: ", "Alice", ", ", '"', "\\",
                                 "Message from ", "Message to ", " not delivered: ", ": ",
                                 ".", " is online", "To ", "everyone", "-x", "\u200b", "\t"])))
def test_the_event_parser_raises_only_remote_protocol_error_on_near_misses(parts: list[str]) -> None:
    try:
        parse_event("".join(parts))
    except RemoteProtocolError:
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
        (NotDelivered("Bob", "Bob is not reading"), "<Message to Bob not delivered: Bob is not reading.>"),
        (NotDelivered("Bob", "the chat service is unavailable"), "<Message to Bob not delivered: the chat service is unavailable.>"),
        (MessageFrom("Alice", "a\tb\u200dc"), '<Message from Alice: "a\\x09b\\u200dc">'),
        (ServerFull(), "<Server is full.>"),
        (ShuttingDown(), "<Server is shutting down.>"),
    ],
)
def test_event_lines_read_as_the_original_wrote_them(event: object, line: str) -> None:
    assert wire_line(event) == line
    assert parse_event(line) == event


@pytest.mark.parametrize(
    "line",
    [
        '<Message from Alice: "\x1b[2J">',
        '<Message from Alice: "tab\there">',
        '<Message from Alice: "zero\u200bwidth">',
        "<To Bob> \u202eevil",
        '<Broadcast from Alice: "\U000e0041">',
        '<Message from Alice: "Z' + "\u0301" * 9 + '">',
    ],
    ids=["ESC", "TAB", "ZWSP", "bidi-override", "tag", "nine-marks"],
)
def test_a_line_with_a_raw_character_the_server_always_escapes_is_not_an_event(line: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_event(line)


@pytest.mark.parametrize(
    "line",
    [
        "<User -x is online.>",
        "<User ... is offline.>",
        "<User everyone is online.>",
        '<Message from everyone: "hi">',
        "<Message to .x not delivered: gone.>",
        "<Online users: Alice, -x>",
        "<Online users: Alice, >",
        "<Online users: Alice,Bob>",
        "<Username _x is already taken.>",
    ],
)
def test_a_line_naming_no_possible_user_is_not_an_event(line: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_event(line)


def test_a_long_line_of_names_that_is_no_event_is_refused_quickly() -> None:
    # The names-list grammar is unambiguous, so a near miss cannot backtrack
    # exponentially.
    with pytest.raises(RemoteProtocolError):
        parse_event("<Online users: " + "a" * 40_000 + "!>")


@pytest.mark.parametrize(
    "event",
    [
        UserOnline("-x"),
        UserOffline(""),
        UserUnknown("a b"),
        MessageSent("everyone", "hi"),
        MessageFrom("Ålice", "hi"),
        NotDelivered("Bob", "no."),
        NotDelivered("Bob", "caf\u00e9"),
        NotDelivered("..", "gone"),
        OnlineUsers(("Alice", "<Admin>")),
        InvalidInput("bad\nreason"),
        InvalidUsername(""),
        UsernameTaken("a" * 33),
        MessageFrom("Alice", "\udc80"),
    ],
)
def test_formatting_an_event_the_wire_cannot_carry_is_our_own_error(event: object) -> None:
    with pytest.raises(LocalProtocolError):
        format_event(event)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (PasswordRequired("Alice"), "<Password required for Alice.>"),
        (WrongPassword("Alice"), "<Wrong password for Alice.>"),
        (TooManyTries(), "<Too many wrong passwords.>"),
        (Registered("Alice"), "<Username Alice is now registered.>"),
        (PasswordChanged("Alice"), "<Password changed for Alice.>"),
    ],
)
def test_the_account_events_on_the_wire(event: object, line: str) -> None:
    assert wire_line(event) == line
    assert parse_event(line) == event
