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
from collections.abc import Callable, Iterator

import pytest

from reactor.accounts import ScryptHasher, hasher_from_spec
from reactor.accounts.hashing import PasswordHasher
from reactor.accounts.service import Accounts
from reactor.backends.base import Server
from tests.accounts.test_accounts import (
    FAST_HASH,
    OTHER,
    PASSWORD,
    Records,
    accounts_server,
    db,  # noqa: F401  (a fixture)
    harness_with_accounts,
    records,  # noqa: F401  (a fixture)
    register,
)
from tests.fake_transport import FakePeer
from tests.support import LineClient, wait_until

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
        try:
            return super().verify(encoded, password)
        finally:
            self.timeline.add("checked", password)  # before its failure is counted


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


class Guesses:
    """Alice's wrong guesses as the hasher saw them (when each check started
    and ended), and the back-offs the server logged for her, shortest first
    (failures in a row only lengthen it, whichever node logged first)."""

    def __init__(self, entries: list[tuple[float, str, str]]) -> None:
        self.checks: list[tuple[float, float]] = []
        self.back_offs: list[float] = []
        started: dict[str, float] = {}
        for when, kind, what in entries:
            if kind == "check" and what.startswith("wrong guess"):
                started[what] = when
            elif kind == "checked" and what in started:
                self.checks.append((started.pop(what), when))
            elif kind == "log" and (match := BACKING_OFF.fullmatch(what)) and match[1] == "Alice":
                self.back_offs.append(float(match[2]))
        self.back_offs.sort()


def assert_one_check_per_window(guesses: Guesses) -> None:
    """Each guess is checked alone, and not before the back-off that the
    previous one started is over."""
    checks = guesses.checks
    assert len(checks) <= len(guesses.back_offs) + 1, vars(guesses)
    for (_, ended), (started, _), back_off in zip(checks, checks[1:], guesses.back_offs,
                                                   strict=False):
        # The server's own timer; a lower bound, never a deadline.
        assert started - ended >= back_off * 0.8, vars(guesses)


def three_back_offs(timeline: Timeline) -> Callable[[], bool]:
    return lambda: len(Guesses(timeline.snapshot()).back_offs) >= 3


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
            wait_until(three_back_offs(timeline), message="three back-offs")
            # Another name from another address is not held up by them.
            bob = LineClient(server.port, source=OWNER)
            bob.send("Bob")
            bob.expect("<Password required for Bob.>")
            bob.send(f'"{OTHER}"')
            bob.expect("<User Bob is online.>")
            bob.close()
            guesses = Guesses(timeline.snapshot())
            assert_one_check_per_window(guesses)
            assert guesses.back_offs[:3] == [0.25, 0.5, 1]
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
        assert_one_check_per_window(Guesses(timeline.snapshot()))


# -- item 2: a storm of hashes ---------------------------------------------------------------


class HeldHasher(PasswordHasher):
    """Hashes only once the test lets them go: busy workers on demand."""

    spec = "held"

    def __init__(self) -> None:
        self.go = threading.Event()
        self._lock = threading.Lock()
        self._started = 0
        self._inner = ScryptHasher(4, 8, 1)

    def started(self) -> int:
        with self._lock:
            return self._started

    def hash(self, password: str) -> str:
        with self._lock:
            self._started += 1
        assert self.go.wait(20), "the test never let the hashes go"
        return self._inner.hash(password)

    def needs_rehash(self, encoded: str) -> bool:
        return False


def answer_to_register(client: LineClient) -> str:
    return client.read_until(lambda line: not line.startswith("<User "))[-1]


def test_logins_never_wait_behind_hashes_and_a_full_hash_queue_says_busy(
    backend: str, db: str,  # noqa: F811
) -> None:
    with accounts_server(backend, db, workers=2, hash_queue=6,
                         hash_queue_per_address=2) as server:
        register(server.port, "Eve")
        accounts = accounts_of(server)
        hasher = accounts.hasher = HeldHasher()
        clients: list[LineClient] = []

        def registering(name: str, source: str) -> LineClient:
            client = LineClient(server.port, source=source)
            clients.append(client)
            client.send(name)
            client.expect(f"<User {name} is online.>")
            client.send(f'register "{PASSWORD}"')
            return client

        try:
            # Both workers hash (held); one address may hold two hashes, not three.
            registering("A1", "127.0.0.11")
            wait_until(lambda: hasher.started() == 1, message="the first hash")
            registering("A2", "127.0.0.11")
            wait_until(lambda: hasher.started() == 2, message="both workers busy")
            assert answer_to_register(registering("A3", "127.0.0.11")) == BUSY
            # Other addresses fill the queue (6 hashes); the next is refused.
            for index, source in enumerate(["127.0.0.12", "127.0.0.12", "127.0.0.13",
                                            "127.0.0.13"]):
                registering(f"Queued{index}", source)
            wait_until(lambda: len(accounts.hashes) == 6, message="a full hash queue")
            assert answer_to_register(registering("Late", "127.0.0.14")) == BUSY

            # Meanwhile an open name logs in, and a registered one is asked
            # its password: look-ups do not queue behind the hashes.
            with LineClient(server.port, source="127.0.0.15") as bob:
                bob.send("Bob")
                bob.expect("<User Bob is online.>")
            eve = LineClient(server.port, source="127.0.0.16")
            clients.append(eve)
            eve.send("Eve")
            eve.expect("<Password required for Eve.>")
            eve.send(f'"{PASSWORD}"')
            eve.expect(BUSY)  # her check needs a hash: not a try, she may send it again
            assert hasher.started() == 2  # and every registration still waits

            hasher.go.set()
            names = ["A1", "A2", None, "Queued0", "Queued1", "Queued2", "Queued3"]
            for name, client in zip(names, clients, strict=False):
                if name is not None:  # (after the others' online notices)
                    assert answer_to_register(client) == f"<Username {name} is now registered.>"
            eve.send(f'"{PASSWORD}"')
            eve.expect("<User Eve is online.>")
        finally:
            hasher.go.set()
            for client in clients:
                client.close()


# -- whose turn: the rules on a fake clock ------------------------------------------------------


def test_in_memory_when_a_back_off_ends_the_least_suspect_check_goes_first(db: str) -> None:  # noqa: F811
    """Per name and per address: a guesser's queue does not stand in front of
    the owner typing from elsewhere, and a different name from the guessing
    address waits for that address's back-off (only)."""
    h = harness_with_accounts(db, backoff_first=4.0, backoff_max=60.0,
                              allow_plaintext_passwords=True)
    store = h.chat.accounts.store  # type: ignore[union-attr]
    hasher = hasher_from_spec(FAST_HASH)
    store.create("Alice", hasher.hash(PASSWORD))
    store.create("Carol", hasher.hash(OTHER))

    def asked(name: str, host: str) -> FakePeer:
        peer = h.connect(host)
        peer.send(name)
        h.advance(0)
        peer.expect(f"<Password required for {name}.>")
        return peer

    first, second = asked("Alice", "192.0.2.1"), asked("Alice", "192.0.2.1")
    carol, owner = asked("Carol", "192.0.2.1"), asked("Alice", "198.51.100.7")
    first.send("wrong guess 1")
    second.send("wrong guess 2")
    h.advance(0)
    first.expect("<Wrong password for Alice.>")  # Alice and 192.0.2.1 back off 4 s
    carol.send(OTHER)
    owner.send(PASSWORD)
    h.advance(3.9)
    for peer in (second, carol, owner):
        peer.expect_nothing()
    h.advance(0.2)
    owner.expect("<User Alice is online.>")  # no failures from her address: first
    second.expect("<Wrong password for Alice.>")  # then the guess (the name is free again)
    carol.expect_nothing()  # the guessing address backs off 8 s now
    h.advance(8)
    carol.expect("<User Carol is online.>")
    h.chat.close()
