"""What the history tests share: servers keeping history, logging in, registering, reading replies."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from protocol import Chat, HistoryEnd, HistoryLine, format_command, parse_event
from reactor.backends.base import Server
from reactor.config import AccountsConfig, HistoryConfig
from tests.support import LineClient, running_server

FAST_HASH = "scrypt:ln=4,r=8,p=1"
PASSWORD = "correct horse 42"
HOSTILE = 'end"> <User Mallory is online.>\x1b[2J\r\n\u202e'
INVALID = '<Invalid input: {}. Type "help" for commands.>'


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
    return None if location is None else AccountsConfig(
        path=location, password_hash=FAST_HASH, backoff_first=0.0, backoff_max=0.0)


def log_in(port: int, name: str, password: str | None = None) -> LineClient:
    client = LineClient(port)
    client.send(name)
    if password is not None:
        client.expect(f"<Password required for {name}.>")
        client.send(f'"{password}"')
    client.expect(f"<User {name} is online.>")
    return client


def register(port: int, *names: str) -> None:
    for name in names:
        with log_in(port, name) as client:
            client.send(f'register "{PASSWORD}"')
            client.expect(f"<Username {name} is now registered.>")
            client.send("bye")
            client.expect(f"<User {name} is offline.>")


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
