"""The operator's ``python -m reactor.accounts`` on the file a running server uses.

The promise (docs, and the command's own help): it works while servers use
the store, and they see a change at the next login.  Precisely, as users
observe it:

* removing a name does not disconnect its user; the name is open once they
  leave, and nobody can take it while they are online;
* a reset while a login waits at the password prompt applies to that very
  answer: the old password is wrong from then on;
* the operator and users registering at the same moment lose nothing;
* a file the operator cannot use (locked by another program past the busy
  timeout, damaged) is one line on stderr and exit status 1, never a
  traceback, and the server keeps answering logins meanwhile.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from reactor.config import AccountsConfig
from tests.accounts.test_accounts import (
    FAST_HASH,
    OTHER,
    PASSWORD,
    accounts_server,
    log_in,
    operator,
    register,
)
from tests.accounts.test_accounts import (
    db as db,  # a fixture, re-exported so that pytest finds it here
)
from tests.faults import REPO
from tests.support import LineClient


def reply(client: LineClient) -> str:
    """The next line that is not someone's presence notice."""
    return client.read_until(lambda line: not line.startswith("<User "))[-1]


def test_a_name_removed_while_its_user_is_online_stays_theirs_until_they_leave(
    backend: str, db: str
) -> None:
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        with log_in(server.port, "Alice", PASSWORD) as alice, log_in(server.port, "Bob") as bob:
            removed = operator(db, "remove", "Alice")
            assert removed.returncode == 0, removed.stderr
            alice.send('chat Bob "still me"')
            assert reply(alice) == "<To Bob> still me"
            assert reply(bob) == '<Message from Alice: "still me">'
            with LineClient(server.port) as impostor:
                impostor.send("Alice")
                impostor.expect("<Username Alice is already taken.>")
            alice.send("bye")
            alice.expect("<User Alice is offline.>")
            # Open now: whoever comes next has it, with no password.
            log_in(server.port, "Alice").close()
            assert operator(db, "list").stdout == ""


def test_a_reset_while_the_password_is_asked_for_applies_to_that_answer(
    backend: str, db: str
) -> None:
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        with LineClient(server.port) as client:
            client.send("Alice")
            client.expect("<Password required for Alice.>")
            reset = operator(db, "reset", "Alice", stdin=f"{OTHER}\n")
            assert reset.returncode == 0, reset.stderr
            client.send(f'"{PASSWORD}"')
            client.expect("<Wrong password for Alice.>")
            client.send(f'"{OTHER}"')
            client.expect("<User Alice is online.>")


def test_the_operator_and_users_registering_at_once_lose_nothing(
    backend: str, db: str
) -> None:
    users = [f"User{i}" for i in range(8)]
    created = [f"Made{i}" for i in range(4)]
    with accounts_server(backend, db) as server:
        clients = [log_in(server.port, name) for name in users]
        try:
            commands = [subprocess.Popen(
                [sys.executable, "-m", "reactor.accounts", "--db", db, "--password-hash",
                 FAST_HASH, "reset", "--create", name],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, cwd=REPO) for name in created]
            for command in commands:
                assert command.stdin is not None
                command.stdin.write(f"{PASSWORD}\n")
                command.stdin.close()
            # While the operator's commands run, in waves of one address's
            # share of the hash queue (more at once is refused as busy, on purpose).
            share = AccountsConfig("unused").hash_queue_per_address
            pairs = list(zip(users, clients, strict=True))
            for wave in (pairs[i:i + share] for i in range(0, len(pairs), share)):
                for _, client in wave:
                    client.send(f'register "{PASSWORD}"')
                for name, client in wave:
                    assert reply(client) == f"<Username {name} is now registered.>"
            for command in commands:
                assert command.wait(30) == 0, command.stderr.read() if command.stderr else ""
                for stream in (command.stdout, command.stderr):
                    if stream is not None:
                        stream.close()
        finally:
            for client in clients:
                client.close()
        listed = operator(db, "list")
        assert sorted(line.split("\t")[0] for line in listed.stdout.splitlines()) == sorted(
            users + created)
        for name in (users[0], created[0]):
            log_in(server.port, name, PASSWORD).close()


def test_a_file_locked_by_another_program_is_one_line_for_the_operator_and_logins_go_on(
    db: str,
) -> None:
    """(The store is the point, so one backend.)  A writer holding the lock
    past the operator's busy timeout: the operator is told in one line; the
    server's lookups (readers, in WAL mode) do not wait for it."""
    with accounts_server("select", db) as server:
        register(server.port, "Alice")
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other_program:
            other_program.execute("BEGIN EXCLUSIVE")
            locked = operator(db, "reset", "Alice", stdin=f"{OTHER}\n")
            log_in(server.port, "Alice", PASSWORD).close()
            other_program.execute("ROLLBACK")
        assert locked.returncode == 1
        assert locked.stderr == (f"python -m reactor.accounts: the accounts file {db}: "
                                 "database is locked\n")
        assert operator(db, "reset", "Alice", stdin=f"{OTHER}\n").returncode == 0
        log_in(server.port, "Alice", OTHER).close()


def test_a_damaged_file_is_one_line_for_the_operator(db: str) -> None:
    Path(db).write_bytes(b"not a database, not at all" * 100)
    for args in (("list",), ("remove", "Alice")):
        result = operator(db, *args)
        assert result.returncode == 1
        assert result.stderr == (f"python -m reactor.accounts: cannot open the accounts file "
                                 f"{db}: file is not a database\n")
