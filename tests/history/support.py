"""What the history tests share: servers keeping history, logging in, registering, reading replies."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from protocol import Chat, HistoryEnd, HistoryLine, format_command, parse_event
from reactor.backends.base import Server
from reactor.config import AccountsConfig, HistoryConfig
from tests.accounts.test_accounts import (  # noqa: F401  (FAST_HASH, INVALID: for the tests)
    FAST_HASH,
    INVALID,
    PASSWORD,
    log_in,
    settings,
)
from tests.accounts.test_accounts import register as register_one
from tests.support import LineClient, running_server

HOSTILE = 'end"> <User Mallory is online.>\x1b[2J\r\n\u202e'


@contextlib.contextmanager
def history_server(backend: str, db: str | None, overrides: dict[str, object] | None = None,
                   **history: object) -> Iterator[Server]:
    """A server keeping history (``history`` its HistoryConfig's fields,
    ``overrides`` other configuration), with registered names in ``db``."""
    with running_server(backend, accounts=accounts_config(db),
                        history=HistoryConfig(**history),  # type: ignore[arg-type]
                        **(overrides or {})) as server:
        yield server


def accounts_config(location: str | None) -> AccountsConfig | None:
    """Registered names at ``location`` (a file or a Redis URL), hashed cheaply."""
    return None if location is None else settings(location)


def register(port: int, *names: str) -> None:
    for name in names:
        register_one(port, name)


@contextlib.contextmanager
def alice_and_bob(port: int, bobs_port: int | None = None) -> Iterator[tuple[LineClient,
                                                                           LineClient]]:
    """Alice and Bob, registered (through ``port``) and logged in with their
    passwords, Bob on ``bobs_port`` if given; Alice has seen Bob come online."""
    register(port, "Alice", "Bob")
    with log_in(port, "Alice", PASSWORD) as alice, \
            log_in(bobs_port or port, "Bob", PASSWORD) as bob:
        alice.expect("<User Bob is online.>")
        yield alice, bob


def typed(command: Chat) -> str:
    """A command as the client writes it, escaped: one line whatever its text."""
    return format_command(command).decode()[:-1]


def event(client: LineClient) -> object:
    return parse_event(client.read_line())


def history(client: LineClient, command: str) -> list[HistoryLine]:
    """The history lines a ``history`` command gets, checking its closing line."""
    client.send(command)
    lines: list[HistoryLine] = []
    while True:
        got = event(client)
        if isinstance(got, HistoryEnd):
            assert got.count == len(lines)
            return lines
        assert isinstance(got, HistoryLine), got
        lines.append(got)
