"""Registered names under load: guesses sent in parallel, and a storm of hashes.

Every backend, real sockets.  Clients come from different loopback
addresses (any of 127/8 is this machine) where the address matters.  The
hashers here are the test's: one records every password check, in order
with the server's log, so that the tests assert sequences rather than
timings; one holds every hash until the test lets it go, so that "the
workers are busy" is a state the test controls, not a race.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator

import pytest

from reactor.accounts import ScryptHasher
from reactor.accounts.hashing import PasswordHasher
from reactor.accounts.service import Accounts
from reactor.backends.base import Server
from tests.support import LineClient, wait_until
from tests.test_accounts import (
    OTHER,
    PASSWORD,
    Records,
    accounts_server,
    db,  # noqa: F401  (a fixture)
    records,  # noqa: F401  (a fixture)
    register,
)

GUESSER = "127.0.0.2"  # the address the guesses come from
OWNER = "127.0.0.3"  # the name's owner, somewhere else
BUSY = "<Server busy: try again in a moment.>"
BACKING_OFF = re.compile(r"Login failures for (\w+) from [\d.]+: backing off ([\d.]+) s")


class Timeline:
    """The server's log and the hasher's password checks, in one order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[float, str, str]] = []  # (when, kind, what)

    def add(self, kind: str, what: str) -> None:
        with self._lock:
            self.entries.append((time.monotonic(), kind, what))

    def snapshot(self) -> list[tuple[float, str, str]]:
        with self._lock:
            return list(self.entries)


class RecordingHasher(PasswordHasher):
    """Checks as scrypt does (tiny parameters), writing each check down."""

    spec = "recording"

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self._inner = ScryptHasher(4, 8, 1)

    def hash(self, password: str) -> str:
        return self._inner.hash(password)

    def needs_rehash(self, encoded: str) -> bool:
        return False

    def verify(self, encoded: str, password: str) -> bool:
        self.timeline.add("check", password)
        return super().verify(encoded, password)


class TimelineHandler(logging.Handler):
    def __init__(self, timeline: Timeline) -> None:
        super().__init__(logging.DEBUG)
        self.timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        self.timeline.add("log", record.getMessage())


@pytest.fixture
def timeline(records: Records) -> Iterator[Timeline]:  # noqa: F811 - records: DEBUG level
    line = Timeline()
    handler = TimelineHandler(line)
    logger = logging.getLogger("reactor")
    logger.addHandler(handler)
    try:
        yield line
    finally:
        logger.removeHandler(handler)


def accounts_of(server: Server) -> Accounts:
    accounts = server.chat.accounts  # type: ignore[attr-defined]
    assert isinstance(accounts, Accounts)
    return accounts


def alice_checks_and_failures(entries: list[tuple[float, str, str]]) -> list[tuple[float, str]]:
    """Alice's checks ("check") and the back-offs they started ("off N")."""
    seen: list[tuple[float, str]] = []
    for when, kind, what in entries:
        if kind == "check" and what.startswith("wrong guess"):
            seen.append((when, "check"))
        elif kind == "log" and (match := BACKING_OFF.fullmatch(what)) and match[1] == "Alice":
            seen.append((when, f"off {match[2]}"))
    return seen


def assert_one_check_per_window(seen: list[tuple[float, str]]) -> None:
    """Each guess is checked alone -- its failure counted before the next one
    starts -- and not before the back-off the last failure started is over."""
    kinds = [kind.split()[0] for _, kind in seen]
    assert kinds[: len(kinds) // 2 * 2] == ["check", "off"] * (len(kinds) // 2), kinds
    for (failed_at, off), (checked_at, _) in zip(seen[1::2], seen[2::2], strict=False):
        # The server's own timer; a lower bound, never a deadline.
        assert checked_at - failed_at >= float(off.split()[1]) * 0.9, seen


def guess_in_parallel(ports: list[int], guesses: int) -> list[LineClient]:
    """``guesses`` connections from GUESSER, spread over ``ports``, each sending
    one wrong password for Alice at the same moment."""
    clients = [LineClient(ports[index % len(ports)], source=GUESSER) for index in range(guesses)]
    for client in clients:
        client.send("Alice")
    for client in clients:
        client.expect("<Password required for Alice.>")
    for index, client in enumerate(clients):
        client.send(f'"wrong guess {index}"')
    return clients


# -- item 1: parallel guesses ----------------------------------------------------------------


def test_parallel_wrong_guesses_are_checked_one_per_back_off_window(
    backend: str, db: str, timeline: Timeline,  # noqa: F811
) -> None:
    with accounts_server(backend, db, backoff_first=0.25, backoff_max=60.0) as server:
        register(server.port, "Alice")
        register(server.port, "Bob", OTHER)
        accounts_of(server).hasher = RecordingHasher(timeline)
        guessers = guess_in_parallel([server.port], 8)
        try:
            wait_until(lambda: len([kind for _, kind in alice_checks_and_failures(
                timeline.snapshot()) if kind.startswith("off")]) >= 3,
                message="three back-offs (0.25, 0.5 and 1 s)")
            # Another name from another address is not held up by them.
            bob = LineClient(server.port, source=OWNER)
            bob.send("Bob")
            bob.expect("<Password required for Bob.>")
            bob.send(f'"{OTHER}"')
            bob.expect("<User Bob is online.>")
            bob.close()
            seen = alice_checks_and_failures(timeline.snapshot())
            assert_one_check_per_window(seen)
            assert [kind for _, kind in seen][:6] == [
                "check", "off 0.25", "check", "off 0.5", "check", "off 1"]
        finally:
            for client in guessers:
                client.close()
        # The owner, after the back-off, still logs in (the guessers are gone:
        # their waiting checks are dropped, not counted).
        with LineClient(server.port, source=OWNER) as owner:
            owner.send("Alice")
            owner.expect("<Password required for Alice.>")
            owner.send(f'"{PASSWORD}"')
            owner.expect("<User Alice is online.>")
        assert_one_check_per_window(alice_checks_and_failures(timeline.snapshot()))
