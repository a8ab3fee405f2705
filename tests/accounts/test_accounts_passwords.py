"""Passwords that are long, not ASCII, or not passwords at all, on every backend.

A password is any text of 8 to 256 characters: emoji, combining marks,
right-to-left text, a NUL written as an escape.  What a user observes:

* a password registered in one form logs in, and changes, in that form, and
  in any form that means the same text (escaped or raw, composed or
  decomposed: passwords are NFC-normalised);
* a password that differs in one character is wrong, however alike it looks;
* what cannot be a password (too long, over the line limit, a raw control
  character, bytes that are not UTF-8) is refused in one line, is not a
  try, and leaves the connection waiting for the right password;
* no password ever reaches the log or another user.
"""

from __future__ import annotations

import pytest

from protocol.commands import ChangePassword, Register, format_command, format_password
from reactor.backends.base import Server
from tests.accounts.test_accounts import INVALID, Records, accounts_server, settings

# Fixtures, re-exported so that pytest finds them here.
from tests.accounts.test_accounts import db as db
from tests.accounts.test_accounts import records as records
from tests.support import LineClient, running_server

SMILE = "\U0001f600"  # four bytes of UTF-8, beyond the BMP
PASSWORDS = {
    "emoji": SMILE * 8,
    "the longest, all astral": SMILE * 256,
    "combining marks": "pa\u0301ssw\u0308o\u0327rd",
    "right to left": "\u202eكلمة السر\u202c",
    "hebrew and latin": "סיסמה secret",
    "an escaped NUL": "before\x00after",
    "CJK": "密码密码密码密码",
    "a backslash and quotes": 'back\\slash "quoted"',
}


def register(port: int, name: str, password: str) -> None:
    with LineClient(port) as client:
        client.send(name)
        client.expect(f"<User {name} is online.>")
        client.send_raw(format_command(Register(password)))
        client.expect(f"<Username {name} is now registered.>")
        client.send("bye")
        client.expect(f"<User {name} is offline.>")


def ask_password(port: int, name: str) -> LineClient:
    client = LineClient(port)
    client.send(name)
    client.expect(f"<Password required for {name}.>")
    return client


def log_in_with(port: int, name: str, line: bytes) -> LineClient:
    """Log in as registered ``name``, answering the prompt with ``line``."""
    client = ask_password(port, name)
    client.send_raw(line)
    client.expect(f"<User {name} is online.>")
    return client


def log_in_and_out(port: int, name: str, line: bytes) -> None:
    """Log in as in :func:`log_in_with`, then leave, and wait until the server
    says so: the name is free again for the next login, however busy it is."""
    with log_in_with(port, name, line) as client:
        client.send("bye")
        client.expect(f"<User {name} is offline.>")


@pytest.mark.parametrize("password", list(PASSWORDS.values()), ids=list(PASSWORDS))
def test_any_text_is_a_password_that_registers_logs_in_and_changes(
    backend: str, db: str, records: Records, password: str
) -> None:
    other = "ascii again, longer"
    with accounts_server(backend, db) as server, LineClient(server.port) as watcher:
        watcher.send("Watcher")
        watcher.expect("<User Watcher is online.>")
        register(server.port, "Alice", password)
        with ask_password(server.port, "Alice") as guess:
            # One character off (the last one dropped) is wrong.
            guess.send_raw(format_password(password[:-1] + "x"))
            guess.expect("<Wrong password for Alice.>")
            guess.send_raw(format_password(password))
            guess.expect("<User Alice is online.>")
            guess.send_raw(format_command(ChangePassword(password, other)))
            guess.expect("<Password changed for Alice.>")
            guess.send_raw(format_command(ChangePassword(other, password)))
            guess.expect("<Password changed for Alice.>")
            guess.send("bye")
            guess.expect("<User Alice is offline.>")
        log_in_with(server.port, "Alice", format_password(password)).close()
        # The watcher heard presence only.
        watcher.send("users")
        lines = watcher.read_until(lambda line: line.startswith("<Online users:"))
        assert all(line.startswith(("<User Alice is", "<Online users:")) for line in lines)
    logged = "\n".join(records.snapshot())
    assert password not in logged and other not in logged


def test_a_raw_password_and_its_escaped_form_are_the_same_password(
    backend: str, db: str
) -> None:
    password = f"{SMILE} raw \u202eRTL"
    with accounts_server(backend, db) as server:
        register(server.port, "Alice", password)  # sent escaped and quoted
        log_in_and_out(server.port, "Alice", password.encode() + b"\n")  # raw, bare
        escaped = b'"\\U0001f600 raw \\u202eRTL"\n'
        log_in_and_out(server.port, "Alice", escaped)


def test_composed_and_decomposed_spellings_are_one_password(backend: str, db: str) -> None:
    composed = "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e"
    decomposed = "cafe\u0301 cre\u0300me bru\u0302le\u0301e"
    with accounts_server(backend, db) as server:
        register(server.port, "Alice", decomposed)
        log_in_and_out(server.port, "Alice", format_password(composed))
        log_in_and_out(server.port, "Alice", format_password(decomposed))


def refused_then_right(server: Server, name: str, right: str, bad_line: bytes,
                       expected: str) -> None:
    """``bad_line`` answers the prompt: refused with ``expected``, not a try
    (the server allows one try here), and the right password still logs in."""
    with ask_password(server.port, name) as client:
        client.send_raw(bad_line)
        client.expect(expected)
        client.send_raw(format_password(right))
        client.expect(f"<User {name} is online.>")
        client.send("users")
        client.expect(f"<Online users: {name}>")


NOT_A_PASSWORD = {
    "257 characters": (b'"' + ("x" * 257).encode() + b'"\n',
                       INVALID.format("a password has at most 256 characters")),
    "a raw NUL": (b"before\x00after\n",
                  INVALID.format("character U+0000 is not allowed raw; inside quotes write it as \\x00")),
    "not UTF-8": (b"caf\xe9 au lait\n", INVALID.format("the line is not valid UTF-8 (byte 4)")),
    "an unterminated quote": (b'"no end in sight\n', INVALID.format("unterminated quote")),
}


@pytest.mark.parametrize("case", list(NOT_A_PASSWORD))
def test_what_cannot_be_a_password_is_refused_and_is_not_a_try(
    backend: str, db: str, case: str
) -> None:
    right = "the right one"
    bad_line, expected = NOT_A_PASSWORD[case]
    with accounts_server(backend, db, max_tries=1) as server:
        register(server.port, "Alice", right)
        refused_then_right(server, "Alice", right, bad_line, expected)


def test_a_password_line_over_the_line_limit_is_discarded_and_is_not_a_try(
    backend: str, db: str, records: Records
) -> None:
    right = "the right one"
    with running_server(backend, accounts=settings(db, max_tries=1), max_line=1024) as server:
        register(server.port, "Alice", right)
        huge = "secret-looking-" * 200  # 3,000 bytes, never to be logged
        refused_then_right(server, "Alice", right, f'"{huge}"\n'.encode(),
                           INVALID.format("line longer than 1024 bytes, discarded"))
    assert not any("secret-looking-" in line for line in records.snapshot())


def test_overlong_new_passwords_are_refused_by_register_and_password(
    backend: str, db: str
) -> None:
    right = "the right one"
    too_long = SMILE * 257
    with accounts_server(backend, db) as server:
        with LineClient(server.port) as alice:
            alice.send("Alice")
            alice.expect("<User Alice is online.>")
            line = '"' + "\\U0001f600" * 257 + '"'
            alice.send(f"register {line}")
            alice.expect(INVALID.format("a password has at most 256 characters"))
            alice.send_raw(format_command(Register(right)))
            alice.expect("<Username Alice is now registered.>")
            alice.send(f'password "{right}" "{too_long}"')
            alice.expect(INVALID.format("a password has at most 256 characters"))
            alice.send("bye")
            alice.expect("<User Alice is offline.>")
        # Nothing changed: the old one still logs in.
        log_in_with(server.port, "Alice", format_password(right)).close()

