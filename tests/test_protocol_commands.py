"""Client commands: the grammar, round trips, and the parser's one error type."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    Broadcast,
    Bye,
    Chat,
    Help,
    Login,
    ProtocolError,
    Users,
    format_command,
    parse_command,
    parse_login,
)
from tests.strategies import commands, usernames


def parse_wire(data: bytes) -> object:
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return parse_command(data[:-1].decode("utf-8"))


@given(commands)
def test_every_command_survives_format_then_parse(command: object) -> None:
    assert parse_wire(format_command(command)) == command  # type: ignore[arg-type]


@given(commands)
def test_a_formatted_command_is_one_line_of_safe_characters(command: object) -> None:
    line = format_command(command)[:-1].decode("utf-8")  # type: ignore[arg-type]
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in line)
    assert "\u2028" not in line and "\u2029" not in line


@given(st.text())
def test_the_parser_raises_only_protocol_error(line: str) -> None:
    try:
        parse_command(line)
    except ProtocolError:
        pass


@given(usernames)
def test_login_round_trip(name: str) -> None:
    assert parse_login(format_command(Login(name))[:-1].decode()) == Login(name)


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ('chat Bob "Hello Bob!"', Chat("Bob", "Hello Bob!")),
        ("chat Bob Hello Bob!", Chat("Bob", "Hello Bob!")),
        ('chat Bob "say \\"hi\\" \\\\o/"', Chat("Bob", 'say "hi" \\o/')),
        ('chat Bob "C:\\dir"', Chat("Bob", "C:\\dir")),
        ('chat Bob "\\x1b[31m"', Chat("Bob", "\x1b[31m")),
        ('  CHAT   Bob    "spaced"  ', Chat("Bob", "spaced")),
        ('broadcast "to all"', Broadcast("to all")),
        ("broadcast to all, bare", Broadcast("to all, bare")),
        ('chat Bob "héllo 👋"', Chat("Bob", "héllo 👋")),
        ("users", Users()),
        ("Help", Help()),
        ("bye", Bye()),
    ],
)
def test_commands_as_people_type_them(line: str, command: object) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("dance", "unknown command"),
        ("chat", 'usage is chat <user> "<message>"'),
        ("chat Bob", 'usage is chat <user> "<message>"'),
        ('chat Bob "unterminated', "unterminated quote"),
        ('chat Bob "hi" there', "text after the closing quote"),
        ('chat Bob ""', "the message is empty"),
        ('broadcast ""', "the message is empty"),
        ("broadcast", 'usage is broadcast "<message>"'),
        ("users now", "users takes no arguments"),
        ('chat <Bob> "x"', "the recipient is not a valid username"),
        ('chat Bob "\\ud800"', "escape \\ud800 is not a Unicode character"),
        ("", "empty command"),
    ],
)
def test_mistakes_get_a_reason(line: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_command(line)
    assert caught.value.reason == reason


@pytest.mark.parametrize("name", ["", "a" * 33, "Al ice", "Alice!", "Ålice", "everyone", "EVERYONE"])
def test_bad_usernames_are_rejected(name: str) -> None:
    with pytest.raises(ProtocolError):
        parse_login(name)


def test_usernames_may_use_the_whole_alphabet() -> None:
    assert parse_login(" A-z_0.9 ") == Login("A-z_0.9")
    assert parse_login("a" * 32) == Login("a" * 32)
