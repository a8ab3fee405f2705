"""The accounts file corrupted, deleted or made unwritable while the server runs.

What must hold, on every backend, whatever happens to the file:

* nothing is forged: a registered name never logs in without its password,
  and a registration is acknowledged only once the file holds it;
* what cannot be answered is told in one line (``the account store is
  unavailable; try again later``), and the connection stays usable;
* users already chatting are not disturbed;
* the log says what went wrong in one line per failure, never a traceback;
* once the operator repairs the file (a backup restored, space freed), the
  server uses it again without a restart.

A server process each (``python -m reactor --accounts``): its log is what the
operator reads, and a full disk is its own file-size limit (``prlimit``).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import ServerProcess, server_process
from tests.support import LineClient, wait_until

FAST_HASH = "scrypt:ln=4,r=8,p=1"
PASSWORD = "correct horse 42"
UNAVAILABLE = "the account store is unavailable; try again later"
LOGIN_UNAVAILABLE = f"<Invalid username: {UNAVAILABLE}.>"
COMMAND_UNAVAILABLE = f'<Invalid input: {UNAVAILABLE}. Type "help" for commands.>'


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "accounts.db"


@contextlib.contextmanager
def accounts_process(backend: str, db: Path) -> Iterator[ServerProcess]:
    with server_process(backend, "--accounts", str(db), "--password-hash", FAST_HASH,
                        "--password-backoff", "0", log_level="INFO") as server:
        yield server


def online(port: int, name: str) -> LineClient:
    client = LineClient(port)
    client.send(name)
    client.expect(f"<User {name} is online.>")
    return client


def register(port: int, name: str) -> None:
    with online(port, name) as client:
        client.send(f'register "{PASSWORD}"')
        client.expect(f"<Username {name} is now registered.>")
        client.send("bye")
        client.expect(f"<User {name} is offline.>")


def log_in_registered(port: int, name: str) -> None:
    with LineClient(port) as client:
        client.send(name)
        client.expect(f"<Password required for {name}.>")
        client.send(f'"{PASSWORD}"')
        client.expect(f"<User {name} is online.>")


def refused_at_login(port: int, name: str) -> None:
    """``name`` is told the store is unavailable; the connection may try again."""
    with LineClient(port) as client:
        client.send(name)
        client.expect(LOGIN_UNAVAILABLE)
        client.send(name)
        client.expect(LOGIN_UNAVAILABLE)


def still_chatting(bob: LineClient) -> None:
    """Bob's own DM comes back; before it, only others' presence notices."""
    bob.send('chat Bob "still here"')
    lines = bob.read_until(lambda line: line == '<Message from Bob: "still here">')
    assert lines[-2] == "<To Bob> still here", lines
    assert all(line.startswith("<User ") for line in lines[:-2]), lines


def reply(client: LineClient) -> str:
    """The next line that is not someone's presence notice."""
    return client.read_until(lambda line: not line.startswith("<User "))[-1]


def settle_into_the_file(db: Path) -> None:
    """Move what the WAL holds into the file itself, as a backup tool does,
    so that what is done to the file is done to the data."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def store_failures(server: ServerProcess) -> list[str]:
    return [line for line in server.log if "Account store failed" in line]


def assert_one_line_each(server: ServerProcess, count: int, reason: str) -> None:
    # The log is written by its own thread: a client's reply can come first.
    wait_until(lambda: len(store_failures(server)) >= count,
               message=f"{count} store failures in the log")
    failures = store_failures(server)
    assert len(failures) == count, failures
    assert all(reason in line for line in failures), failures
    assert not any("Traceback" in line for line in server.log)


def test_a_corrupted_file_makes_logins_unavailable_forges_nothing_and_recovers_when_restored(
    backend: str, db: Path
) -> None:
    with accounts_process(backend, db) as server:
        register(server.port, "Alice")
        with online(server.port, "Bob") as bob:
            settle_into_the_file(db)
            good = db.read_bytes()
            db.write_bytes(os.urandom(len(good)))  # the same file, every byte wrong

            refused_at_login(server.port, "Alice")  # registered: no password, no entry
            refused_at_login(server.port, "Carol")  # maybe registered: not let in either
            still_chatting(bob)
            server.wait_for_log(lambda line: "looking up Carol" in line)
            assert_one_line_each(server, 4, "file is not a database")

            db.write_bytes(good)  # the operator restores it
            log_in_registered(server.port, "Alice")
            online(server.port, "Carol").close()
            still_chatting(bob)
        assert len(store_failures(server)) == 4


def test_a_deleted_file_acknowledges_nothing_it_cannot_keep_and_a_restored_one_is_used(
    backend: str, db: Path
) -> None:
    backup = db.with_name("backup.db")
    with accounts_process(backend, db) as server:
        register(server.port, "Alice")
        with online(server.port, "Bob") as bob, online(server.port, "Carol") as carol:
            settle_into_the_file(db)
            shutil.copyfile(db, backup)
            for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                leftover.unlink(missing_ok=True)

            # A registration into a deleted file would be gone at the next restart.
            carol.send(f'register "{PASSWORD}"')
            assert reply(carol) == COMMAND_UNAVAILABLE
            refused_at_login(server.port, "Alice")
            refused_at_login(server.port, "Dave")
            still_chatting(bob)
            assert not db.exists(), "an empty file would open every registered name"
            server.wait_for_log(lambda line: "looking up Dave" in line)
            assert_one_line_each(server, 5, f"the accounts file {db} is gone")

            os.replace(backup, db)  # the operator restores a backup: a new file
            log_in_registered(server.port, "Alice")
            carol.send(f'register "{PASSWORD}"')
            assert reply(carol) == "<Username Carol is now registered.>"
            still_chatting(bob)
    # What was acknowledged is in the file.
    with contextlib.closing(sqlite3.connect(db)) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM accounts ORDER BY key")]
    assert names == ["Alice", "Carol"]


def test_a_full_disk_refuses_registrations_and_changes_in_one_line_and_logins_go_on(
    backend: str, db: Path
) -> None:
    with accounts_process(backend, db) as server:
        register(server.port, "Alice")
        with online(server.port, "Bob") as bob, online(server.port, "Carol") as carol:
            # No file of the server's may grow past one byte: every write fails.
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
            carol.send(f'register "{PASSWORD}"')
            assert reply(carol) == COMMAND_UNAVAILABLE
            with LineClient(server.port) as alice:
                alice.send("Alice")
                alice.expect("<Password required for Alice.>")
                alice.send(f'"{PASSWORD}"')
                alice.expect("<User Alice is online.>")  # reading needs no space
                alice.send(f'password "{PASSWORD}" "a new one, not kept"')
                alice.expect(COMMAND_UNAVAILABLE)
                alice.send("bye")
                alice.expect("<User Alice is offline.>")
            still_chatting(bob)
            assert_one_line_each(server, 2, "disk I/O error")

            limit = resource.RLIM_INFINITY
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (limit, limit))
            carol.send(f'register "{PASSWORD}"')
            assert reply(carol) == "<Username Carol is now registered.>"
        log_in_registered(server.port, "Alice")  # the old password: nothing changed
