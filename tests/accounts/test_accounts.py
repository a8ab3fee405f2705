"""Registered names (``--accounts``): real sockets on every backend, a server
process restarted on the same file, the operator's command line, and the
rules that sockets cannot reach (a remote peer, a fake clock) in memory.

Hashes use tiny scrypt parameters (``FAST_HASH``) so that the tests are about
the rules, not about the KDF's cost; one test uses a hasher that blocks until
the test lets it go, to show that hashing holds up nobody else.  Waits are
for conditions (lines, log records), never sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reactor.accounts import (
    BackOff,
    ScryptHasher,
    SQLiteAccountStore,
    hasher_from_spec,
    verify_password,
)
from reactor.accounts.hashing import PasswordHasher, below_recommended
from reactor.accounts.service import INSECURE, Accounts
from reactor.app import open_store
from reactor.backends.base import Server
from reactor.chat import NO_ACCOUNTS
from reactor.config import AccountsConfig
from tests.cli_support import ROOT, TIMEOUT, cli_args, client_env, terminal
from tests.cluster_support import RedisServer, redis_server  # noqa: F401 - a fixture
from tests.fake_transport import Harness
from tests.faults import REPO, server_process
from tests.support import LineClient, running_server, wait_until

FAST_HASH = "scrypt:ln=4,r=8,p=1"
PASSWORD = "correct horse 42"
OTHER = "battery staple 7"
INVALID = '<Invalid input: {}. Type "help" for commands.>'


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "accounts.db")


def settings(path: str, **overrides: object) -> AccountsConfig:
    values: dict[str, object] = {"password_hash": FAST_HASH, "backoff_first": 0.0,
                                 "backoff_max": 0.0}
    values.update(overrides)
    return AccountsConfig(path=path, **values)  # type: ignore[arg-type]


@contextlib.contextmanager
def accounts_server(backend: str, path: str, **overrides: object) -> Iterator[Server]:
    with running_server(backend, accounts=settings(path, **overrides)) as server:
        yield server


def log_in(port: int, name: str, password: str | None = None) -> LineClient:
    client = LineClient(port)
    client.send(name)
    if password is not None:
        client.expect(f"<Password required for {name}.>")
        client.send(f'"{password}"')
    client.expect(f"<User {name} is online.>")
    return client


def register(port: int, name: str, password: str = PASSWORD) -> None:
    with log_in(port, name) as client:
        client.send(f'register "{password}"')
        client.expect(f"<Username {name} is now registered.>")
        client.send("bye")
        client.expect(f"<User {name} is offline.>")


class Records(logging.Handler):
    """Every log record of the server (in this process), formatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        with self._lock2:
            self.lines.append(text)

    def snapshot(self) -> list[str]:
        with self._lock2:
            return list(self.lines)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("reactor")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# -- registering and logging in ---------------------------------------------------------


def test_a_registered_name_asks_for_its_password_and_the_right_one_logs_in(
    backend: str, db: str
) -> None:
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        with LineClient(server.port) as client:
            client.send("alice")  # any case; the registered spelling is kept
            client.expect("<Password required for Alice.>")
            client.send(PASSWORD)  # bare works as well as quoted
            client.expect("<User Alice is online.>")
            client.send("users")
            client.expect("<Online users: Alice>")


def test_a_wrong_password_is_said_and_the_same_connection_may_try_again(
    backend: str, db: str
) -> None:
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        with log_in(server.port, "Bob") as bob, LineClient(server.port) as client:
            client.send("Alice")
            client.expect("<Password required for Alice.>")
            client.send('"not the password"')
            client.expect("<Wrong password for Alice.>")
            client.send(f'"{PASSWORD}"')
            client.expect("<User Alice is online.>")
            bob.expect("<User Alice is online.>")  # Bob heard of nothing before


def test_the_try_limit_closes_the_connection(backend: str, db: str) -> None:
    with accounts_server(backend, db, max_tries=3) as server:
        register(server.port, "Alice")
        with LineClient(server.port) as client:
            client.send("Alice")
            client.expect("<Password required for Alice.>")
            for attempt in range(3):
                client.send(f'"wrong guess {attempt}"')
                client.expect("<Wrong password for Alice.>")
            client.expect("<Too many wrong passwords.>")
            assert client.expect_closed() == b""
        log_in(server.port, "Alice", PASSWORD).close()  # the name itself is not locked out


def test_an_unregistered_name_logs_in_as_before(backend: str, db: str) -> None:
    with accounts_server(backend, db) as server, log_in(server.port, "Carol") as carol:
        carol.send('chat Carol "hi"')
        carol.expect("<To Carol> hi", '<Message from Carol: "hi">')


def test_register_twice_and_password_changes(backend: str, db: str) -> None:
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        with log_in(server.port, "Alice", PASSWORD) as alice:
            alice.send(f'register "{OTHER}"')
            alice.expect(INVALID.format(
                'Alice is already registered; change its password with password "<old>" "<new>"'))
            alice.send(f'password "wrong old one" "{OTHER}"')
            alice.expect("<Wrong password for Alice.>")
            alice.send(f'password "{PASSWORD}" "{OTHER}"')
            alice.expect("<Password changed for Alice.>")
            alice.send("bye")
            alice.expect("<User Alice is offline.>")
        log_in(server.port, "Alice", OTHER).close()


def test_a_taken_registered_name_is_refused_before_any_password(backend: str, db: str) -> None:
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        with log_in(server.port, "Alice", PASSWORD), LineClient(server.port) as other:
            other.send("ALICE")
            other.expect("<Username Alice is already taken.>")


def test_an_unfit_password_is_refused_by_the_parser(backend: str, db: str) -> None:
    with accounts_server(backend, db) as server, log_in(server.port, "Alice") as alice:
        alice.send("register short")
        alice.expect(INVALID.format("a password has at least 8 characters"))


def test_without_accounts_register_says_how_to_get_them(server: Server) -> None:
    with log_in(server.port, "Alice") as alice:
        alice.send(f'register "{PASSWORD}"')
        alice.expect(INVALID.format(NO_ACCOUNTS))
        alice.send(f'password "{PASSWORD}" "{OTHER}"')
        alice.expect(INVALID.format(NO_ACCOUNTS))


def test_lines_after_the_password_wait_for_its_answer_and_keep_their_order(
    backend: str, db: str
) -> None:
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        with LineClient(server.port) as client:
            client.send_raw(f'Alice\n"{PASSWORD}"\nusers\nchat Alice "me"\n'.encode())
            client.expect("<Password required for Alice.>", "<User Alice is online.>",
                          "<Online users: Alice>", "<To Alice> me", '<Message from Alice: "me">')


# -- what must stay secret ---------------------------------------------------------------


def test_the_password_is_never_logged_nor_sent_to_anyone_else(
    backend: str, db: str, records: Records
) -> None:
    secret = "s3cret-never-shown"
    wrong = "wr0ng-never-shown"
    with accounts_server(backend, db) as server:
        with log_in(server.port, "Watcher") as watcher:
            with log_in(server.port, "Alice") as alice:
                alice.send(f'register "{secret}"')
                alice.expect("<Username Alice is now registered.>")
                alice.send(f'password "{wrong}" "{secret}x"')
                alice.expect("<Wrong password for Alice.>")
                alice.send("bye")
                alice.expect("<User Alice is offline.>")
            with LineClient(server.port) as again:
                again.send("Alice")
                again.expect("<Password required for Alice.>")
                again.send(wrong)
                again.expect("<Wrong password for Alice.>")
                again.send(secret)
                again.expect("<User Alice is online.>")
                again.send("bye")
                again.expect("<User Alice is offline.>")
            seen = watcher.read_until(lambda line: line == "<User Alice is offline.>")
            seen += watcher.read_until(lambda line: line == "<User Alice is offline.>")
            watcher.send("users")  # a marker: everything for the watcher came before it
            seen += watcher.read_until(lambda line: line.startswith("<Online users"))
        wait_until(lambda: any("Watcher disconnected" in line for line in records.snapshot()))
    log = "\n".join(records.snapshot())
    assert "Alice registered" in log and "Login failures for Alice" in log
    for text in (secret, wrong):
        assert text not in log
        assert not any(text in line for line in seen)
    stored = Path(db).read_bytes()
    assert secret.encode() not in stored and wrong.encode() not in stored


def test_passwords_need_tls_or_loopback_unless_the_operator_allows_plaintext(
    backend: str, db: str
) -> None:
    # Every address a test can connect from is loopback, so the loopback
    # rule is turned off to stand for a remote peer over plain TCP.
    register_path = db
    with accounts_server(backend, register_path) as server:
        register(server.port, "Alice")
    with accounts_server(backend, register_path, trust_loopback=False) as server, \
            LineClient(server.port) as remote:
            remote.send("Alice")
            remote.expect(f"<Invalid username: Alice is registered, and {INSECURE}.>")
            remote.send("Bob")  # the connection carries on: another name works
            remote.expect("<User Bob is online.>")
            remote.send(f'register "{PASSWORD}"')
            remote.expect(INVALID.format(INSECURE))
            remote.send(f'password "{PASSWORD}" "{OTHER}"')
            remote.expect(INVALID.format(INSECURE))
    with accounts_server(backend, register_path, trust_loopback=False,
                         allow_plaintext_passwords=True) as server:
        log_in(server.port, "Alice", PASSWORD).close()


def test_a_secure_transport_is_trusted_from_anywhere(db: str) -> None:
    accounts = Accounts(settings(db, trust_loopback=False), SQLiteAccountStore(db))
    try:
        h = Harness()
        peer = h.connect("192.0.2.7")
        assert not accounts.is_secure(peer.connection)
        peer.transport.secure = True  # what the TLS transports set
        assert accounts.is_secure(peer.connection)
        local = h.connect("127.0.0.1")
        assert not accounts.is_secure(local.connection)  # trust_loopback off
    finally:
        accounts.close()


def test_loopback_peers_are_this_machine(db: str) -> None:
    accounts = Accounts(settings(db), SQLiteAccountStore(db))
    try:
        h = Harness()
        for host, secure in [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                             ("192.0.2.7", False), ("2001:db8::1", False),
                             ("unknown", False)]:
            assert accounts.is_secure(h.connect(host).connection) is secure, host
    finally:
        accounts.close()


# -- slowing guessing down -------------------------------------------------------------------


def test_a_wrong_password_backs_off_the_name_and_the_address_and_says_so(
    backend: str, db: str, records: Records
) -> None:
    first = 0.3
    with accounts_server(backend, db, backoff_first=first, backoff_max=0.6) as server:
        register(server.port, "Alice")
        register(server.port, "Bob", OTHER)
        with LineClient(server.port) as client:
            client.send("Alice")
            client.expect("<Password required for Alice.>")
            client.send('"bad guess"')
            client.expect("<Wrong password for Alice.>")
            failed_at = time.monotonic()
            wait_until(lambda: any(
                line == f"Login failures for Alice from 127.0.0.1: backing off {first:g} s"
                for line in records.snapshot()))
            client.send(PASSWORD)  # waits out the back-off, then is answered
            client.expect("<User Alice is online.>")
            assert time.monotonic() - failed_at >= first * 0.9
        with LineClient(server.port) as client:
            # The address failed twice in a row now: Bob waits for it too.
            client.send("Bob")
            client.expect("<Password required for Bob.>")
            client.send('"bad guess"')
            client.expect("<Wrong password for Bob.>")
            failed_at = time.monotonic()
            client.send(OTHER)
            client.expect("<User Bob is online.>")
            assert time.monotonic() - failed_at >= 0.6 * 0.9
    assert any(line == "Login failures for Bob from 127.0.0.1: backing off 0.6 s"
               for line in records.snapshot())


def test_back_off_doubles_to_its_cap_forgets_the_quiet_and_stays_bounded() -> None:
    backoff = BackOff(first=1.0, most=8.0, max_keys=3)
    assert backoff.wait("alice", 0.0) == 0.0
    assert [backoff.failed("alice", t) for t in (0.0, 1.0, 3.0, 7.0, 15.0)] == [1, 2, 4, 8, 8]
    assert backoff.wait("alice", 16.0) == 7.0
    assert backoff.wait("alice", 23.0) == 0.0
    assert backoff.wait("alice", 31.0) == 0.0 and len(backoff) == 0  # quiet: forgotten
    assert backoff.failed("alice", 40.0) == 1.0
    backoff.succeeded("alice")
    assert backoff.wait("alice", 40.0) == 0.0
    for index in range(10):
        backoff.failed(f"guess{index}", 50.0)
    assert len(backoff) == 3  # the least recently failed are forgotten first


# -- hashing on the worker pool -----------------------------------------------------------------


class BlockingHasher(PasswordHasher):
    """Hashes only when the test says so: a KDF as slow as the test wants."""

    spec = "blocking"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        self._inner = ScryptHasher(4, 8, 1)

    def hash(self, password: str) -> str:
        self.started.set()
        assert self.go.wait(10), "the test never let the hash go"
        return self._inner.hash(password)

    def needs_rehash(self, encoded: str) -> bool:
        return False


def test_hashing_holds_up_nobody_else(backend: str, db: str) -> None:
    with accounts_server(backend, db) as server:
        hasher = BlockingHasher()
        accounts = server.chat.accounts
        assert accounts is not None
        accounts.hasher = hasher
        with log_in(server.port, "Alice") as alice, log_in(server.port, "Bob") as bob:
            alice.expect("<User Bob is online.>")
            alice.send(f'register "{PASSWORD}"')
            assert hasher.started.wait(10)
            # The hash is under way on a worker: the loop (or the chat lock)
            # still serves everyone, Alice's next line waits its turn.
            alice.send("users")
            bob.send('chat Alice "still here"')
            bob.expect("<To Alice> still here")
            bob.send("users")
            bob.expect("<Online users: Alice, Bob>")
            hasher.go.set()
            alice.expect('<Message from Bob: "still here">',
                         "<Username Alice is now registered.>", "<Online users: Alice, Bob>")


def test_scrypt_hashes_carry_their_parameters_and_are_remade_when_they_rise() -> None:
    weak = hasher_from_spec("scrypt:ln=4,r=8,p=1")
    encoded = weak.hash("pässword ok")
    assert encoded.startswith("$scrypt$ln=4,r=8,p=1$")
    assert verify_password(encoded, "pässword ok")
    assert verify_password(encoded, "pa\u0308ssword ok")  # NFC: the same password
    assert not verify_password(encoded, "password ok")
    assert not weak.needs_rehash(encoded)
    assert hasher_from_spec("scrypt:ln=5,r=8,p=1").needs_rehash(encoded)
    assert not hasher_from_spec("scrypt:ln=3,r=8,p=1").needs_rehash(encoded)
    assert hasher_from_spec("scrypt").spec == "scrypt:ln=15,r=8,p=3"
    assert not verify_password("$unknown$x", "anything")
    with pytest.raises(ValueError):
        hasher_from_spec("md5")


def test_argon2id_when_installed() -> None:
    pytest.importorskip("argon2")
    hasher = hasher_from_spec("argon2id:m=1024,t=1,p=1")
    encoded = hasher.hash(PASSWORD)
    assert encoded.startswith("$argon2id$")
    assert verify_password(encoded, PASSWORD) and not verify_password(encoded, OTHER)
    assert hasher_from_spec("scrypt").needs_rehash(encoded)


def test_a_login_remakes_a_hash_made_with_weaker_parameters(backend: str, db: str) -> None:
    store = SQLiteAccountStore(db)
    store.create("Alice", hasher_from_spec("scrypt:ln=3,r=8,p=1").hash(PASSWORD))
    store.close()
    with accounts_server(backend, db, password_hash="scrypt:ln=5,r=8,p=1") as server:
        log_in(server.port, "Alice", PASSWORD).close()
        store = SQLiteAccountStore(db)
        try:
            wait_until(lambda: store.get("alice").password_hash.startswith(  # type: ignore[union-attr]
                "$scrypt$ln=5,r=8,p=1$"))
        finally:
            store.close()


# -- the store ----------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What follows ``--accounts``: a SQLite file, or a real redis-server's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "accounts.db")
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.url


def test_every_store_ignores_case_keeps_the_spelling_and_changes_only_what_exists(
    location: str,
) -> None:
    store = open_store(location)
    try:
        assert store.create("Alice", "$scrypt$h1")
        assert not store.create("ALICE", "$scrypt$h2")
        account = store.get("alice")
        assert account is not None and account.name == "Alice"
        assert account.password_hash == "$scrypt$h1"
        assert "h1" not in repr(account)
        assert store.set_password("aLiCe", "$scrypt$h3")
        assert not store.set_password("Bob", "$scrypt$h4")
        assert [a.name for a in store.accounts()] == ["Alice"]
        assert store.remove("ALICE") and not store.remove("Alice")
        assert store.get("Alice") is None and store.accounts() == []
    finally:
        store.close()


def test_the_sqlite_file_is_readable_by_its_owner_only(db: str) -> None:
    SQLiteAccountStore(db).close()
    assert os.stat(db).st_mode & 0o077 == 0


def test_an_unusable_accounts_file_is_one_line_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reactor", "--port", "0", "--accounts",
         str(tmp_path / "missing-dir" / "a.db")],
        capture_output=True, text=True, timeout=30, cwd=REPO, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("reactor-chat-server: cannot open the accounts file ")
    assert result.stderr.count("\n") == 1


# -- a server process, restarted -------------------------------------------------------------


@pytest.mark.slow
def test_registered_names_survive_a_restart_and_the_log_never_holds_a_password(
    backend: str, db: str
) -> None:
    secret = "restart-proof-secret"
    args = ("--accounts", db, "--password-hash", FAST_HASH)
    with server_process(backend, *args, log_level="DEBUG") as server:
        register(server.port, "Alice", secret)
        assert server.terminate() == 0
        first_log = server.final_log()
    with server_process(backend, *args, log_level="DEBUG") as server:
        with LineClient(server.port) as client:
            client.send("Alice")
            client.expect("<Password required for Alice.>")
            client.send("not it at all")
            client.expect("<Wrong password for Alice.>")
            client.send(f'"{secret}"')
            client.expect("<User Alice is online.>")
        assert server.terminate() == 0
        second_log = server.final_log()
    assert any("Alice registered (127.0.0.1)" in line for line in first_log)
    assert any("Login failures for Alice from 127.0.0.1" in line for line in second_log)
    for line in first_log + second_log:
        assert secret not in line and "not it at all" not in line


# -- the operator's command line -----------------------------------------------------------------


def operator(db: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reactor.accounts", "--db", db, "--password-hash", FAST_HASH,
         *args],
        input=stdin, capture_output=True, text=True, timeout=30, cwd=REPO,
    )


@pytest.mark.slow
def test_the_operator_lists_removes_and_resets_names_while_the_server_runs(db: str) -> None:
    operate_on_a_running_server("select", db)  # (the store is the point, not the backend)


@pytest.mark.slow
def test_the_operator_manages_the_names_in_redis_the_same_way(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    operate_on_a_running_server("select", redis_server.url)  # (the store is the point)


def operate_on_a_running_server(backend: str, db: str) -> None:
    """``db``: a SQLite file, or the Redis URL the server was given."""
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        register(server.port, "bob", OTHER)
        listed = operator(db, "list")
        assert listed.returncode == 0
        assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["Alice", "bob"]
        assert "scrypt" in listed.stdout and PASSWORD not in listed.stdout
        # (before it, on Redis: that this test's Redis keeps nothing on disk)
        assert listed.stderr.endswith("2 registered names\n")

        reset = operator(db, "reset", "ALICE", stdin="brand new pass\n")
        assert reset.returncode == 0, reset.stderr
        assert "brand new pass" not in reset.stdout + reset.stderr
        log_in(server.port, "Alice", "brand new pass").close()

        removed = operator(db, "remove", "BOB")
        assert (removed.returncode, removed.stdout) == (0, "Removed bob; the name is open again.\n")
        log_in(server.port, "Bob").close()  # open again: no password asked

        assert operator(db, "remove", "Bob").returncode == 1
        missing = operator(db, "reset", "Carol", stdin="carols password\n")
        assert missing.returncode == 1 and "not registered" in missing.stderr
        created = operator(db, "reset", "--create", "Carol", stdin="carols password\n")
        assert created.returncode == 0
        log_in(server.port, "Carol", "carols password").close()
        short = operator(db, "reset", "Carol", stdin="short\n")
        assert short.returncode == 2 and "at least 8 characters" in short.stderr
        assert operator(db, "remove", "-x").returncode == 2


def test_the_operator_is_asked_twice_with_no_echo_on_a_terminal(db: str) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "reactor.accounts", "--db", db,
                                           "--password-hash", FAST_HASH, "reset", "--create",
                                           "Alice"], cwd=str(REPO), encoding="utf-8", timeout=20)
    child.expect("New password for Alice: ")
    child.sendline("typed on a tty")
    child.expect("Again: ")
    child.sendline("typed on a tty")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "typed on a tty" not in (child.before or "")
    store = SQLiteAccountStore(db)
    try:
        account = store.get("Alice")
        assert account is not None and verify_password(account.password_hash, "typed on a tty")
    finally:
        store.close()


# -- in memory: the rules on a fake clock ---------------------------------------------------------


class InlineExecutor:
    """The "worker" runs at once on the chat thread, and hands its answer
    back at once, as the in-memory whiteboard answers a claim."""

    def submit(self, fn: object) -> None:
        assert callable(fn)
        fn()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def harness_with_accounts(db: str, **overrides: object) -> Harness:
    accounts = Accounts(settings(db, **overrides), SQLiteAccountStore(db),
                        executor=InlineExecutor())
    h = Harness(accounts=accounts)
    # The workers' answers come back at once, as the inline executor runs them.
    h.chat.scheduler.attach(h.scheduler.call_later, lambda callback: callback())
    return h


def test_in_memory_the_password_line_waits_out_the_back_off_and_nothing_is_dropped(
    db: str,
) -> None:
    h = harness_with_accounts(db, backoff_first=4.0, backoff_max=60.0)
    store = h.chat.accounts.store  # type: ignore[union-attr]
    store.create("Alice", hasher_from_spec(FAST_HASH).hash(PASSWORD))
    peer = h.connect()
    peer.send("Alice")
    h.advance(0)
    peer.expect("<Password required for Alice.>")
    peer.send("wrong password")
    h.advance(0)
    peer.expect("<Wrong password for Alice.>")
    peer.send(PASSWORD, "users")
    h.advance(3.9)
    peer.expect_nothing()  # waiting: neither answered nor refused
    assert peer.paused  # and the lines behind it wait in TCP
    h.advance(0.2)
    peer.expect("<User Alice is online.>", "<Online users: Alice>")
    h.chat.close()


def test_in_memory_a_connection_that_leaves_during_the_back_off_is_simply_gone(db: str) -> None:
    h = harness_with_accounts(db, backoff_first=4.0, backoff_max=60.0)
    store = h.chat.accounts.store  # type: ignore[union-attr]
    store.create("Alice", hasher_from_spec(FAST_HASH).hash(PASSWORD))
    watcher = h.login("Watcher")
    peer = h.connect()
    peer.send("Alice")
    h.advance(0)
    peer.send("wrong password")
    h.advance(0)
    peer.send(PASSWORD)
    peer.drop()
    h.advance(5)
    assert h.online() == ["Watcher"]
    watcher.expect_nothing()
    h.chat.close()


def test_in_memory_a_name_removed_while_its_password_is_asked_for_becomes_open(db: str) -> None:
    h = harness_with_accounts(db)
    store = h.chat.accounts.store  # type: ignore[union-attr]
    store.create("Alice", hasher_from_spec(FAST_HASH).hash(PASSWORD))
    peer = h.connect()
    peer.send("Alice")
    h.advance(0)
    peer.expect("<Password required for Alice.>")
    store.remove("Alice")
    peer.send("anything at all")
    h.advance(0)
    peer.expect("<User Alice is online.>")
    h.chat.close()


def test_in_memory_a_malformed_password_line_is_not_a_try(db: str) -> None:
    h = harness_with_accounts(db, max_tries=1)
    store = h.chat.accounts.store  # type: ignore[union-attr]
    store.create("Alice", hasher_from_spec(FAST_HASH).hash(PASSWORD))
    peer = h.connect()
    peer.send("Alice")
    h.advance(0)
    peer.expect("<Password required for Alice.>")
    peer.send('"unterminated')
    peer.expect(INVALID.format("unterminated quote"))
    peer.send(f'"{PASSWORD}"')
    h.advance(0)
    peer.expect("<User Alice is online.>")
    h.chat.close()


# -- the terminal client ----------------------------------------------------------------------------


def run_client(port: int, name: str, stdin: bytes, **env: str) -> subprocess.CompletedProcess[bytes]:
    # A new session: no controlling terminal, so nobody can be asked.
    return subprocess.run(cli_args(port, name, "--raw"), input=stdin, capture_output=True,
                          timeout=TIMEOUT * 2, env={**client_env(), **env}, cwd=str(ROOT),
                          check=False, start_new_session=True)


@pytest.mark.slow
def test_a_script_gives_the_password_in_the_environment(backend: str, db: str) -> None:
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        result = run_client(server.port, "Alice", b"users\nbye\n",
                            REACTOR_CHAT_PASSWORD=PASSWORD)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().splitlines() == [
            "<Password required for Alice.>", "<User Alice is online.>",
            "<Online users: Alice>", "<User Alice is offline.>",
        ]
        assert PASSWORD.encode() not in result.stdout + result.stderr

        wrong = run_client(server.port, "Alice", b"users\n", REACTOR_CHAT_PASSWORD="not it, sorry")
        assert wrong.returncode == 1
        assert wrong.stderr.decode() == "reactor-chat: cannot log in as Alice: wrong password\n"

        nobody = run_client(server.port, "Alice", b"users\n")
        assert nobody.returncode == 1
        assert nobody.stderr.decode() == (
            "reactor-chat: cannot log in as Alice: the name is registered; give its password"
            " in REACTOR_CHAT_PASSWORD or on a terminal\n")


def test_a_script_registers_and_changes_its_password(backend: str, db: str) -> None:
    with accounts_server(backend, db) as server:
        script = f'register "{PASSWORD}"\npassword "{PASSWORD}" "{OTHER}"\nbye\n'.encode()
        result = run_client(server.port, "Alice", script)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().splitlines() == [
            "<User Alice is online.>", "<Username Alice is now registered.>",
            "<Password changed for Alice.>", "<User Alice is offline.>",
        ]
        log_in(server.port, "Alice", OTHER).close()


@pytest.mark.slow
def test_the_terminal_client_asks_for_the_password_without_echo(backend: str, db: str) -> None:
    with accounts_server(backend, db) as server:
        register(server.port, "Alice")
        with terminal(server.port, "Alice", logged_in=False) as term:
            term.wait_for_text("Password for Alice:")
            term.enter("not the password")
            term.wait_for_text("✗ wrong password for Alice")
            term.wait_for_text("Password for Alice:")
            term.enter(PASSWORD)
            term.wait_for_text("-- logged in as Alice")
            term.wait_for_input_line("Alice>")
            assert "not the password" not in term.dump() and PASSWORD not in term.dump()
            term.enter("/password")
            term.wait_for_text("Current password:")
            term.enter(PASSWORD)
            term.wait_for_text("New password:")
            term.enter(OTHER)
            term.wait_for_text("Again:")
            term.enter(OTHER)
            term.wait_for_text("✓ password changed for Alice")
            assert OTHER not in term.dump()
            term.enter("/quit")
            assert term.wait_exit() == 0
        log_in(server.port, "Alice", OTHER).close()


@pytest.mark.slow
def test_the_terminal_client_registers_with_slash_register(backend: str, db: str) -> None:
    with accounts_server(backend, db) as server:
        with terminal(server.port, "Alice") as term:
            term.enter("/register")
            term.wait_for_text("New password:")
            term.enter(PASSWORD)
            term.wait_for_text("Again:")
            term.enter(PASSWORD)
            term.wait_for_text("✓ Alice is now registered")
            assert PASSWORD not in term.dump()
            term.enter("/quit")
            assert term.wait_exit() == 0
        log_in(server.port, "Alice", PASSWORD).close()


# -- the backend contract's call_soon_threadsafe ------------------------------------------------------


def test_call_soon_threadsafe_runs_callbacks_in_order_on_the_chat_thread(backend: str) -> None:
    with running_server(backend) as server:
        seen: list[tuple[int, str]] = []
        done = threading.Event()

        def callback(index: int) -> None:
            seen.append((index, threading.current_thread().name))
            if index == 99:
                done.set()

        def worker() -> None:
            for index in range(100):
                server.call_soon_threadsafe(lambda index=index: callback(index))

        thread = threading.Thread(target=worker, name="a-worker")
        thread.start()
        assert done.wait(10)
        thread.join()
        assert [index for index, _ in seen] == list(range(100))
        # The loop's own thread -- or, for threads, the caller under the chat lock.
        expected = "a-worker" if backend == "threads" else f"server-{backend}"
        assert {name for _, name in seen} == {expected}


@pytest.mark.parametrize(("spec", "weak"), [
    ("scrypt", False),  # the default: OWASP's N=2^15, r=8, p=3
    ("scrypt:ln=17,r=8,p=1", False),
    ("scrypt:ln=14,r=8,p=5", False),
    ("scrypt:ln=14,r=8,p=4", True),
    ("scrypt:ln=16,r=8,p=1", True),
    ("scrypt:ln=12,r=8,p=16", True),
    ("scrypt:ln=17,r=4,p=1", True),
    ("argon2id", False),  # OWASP's m=19 MiB, t=2
    ("argon2id:m=12288,t=3,p=1", False),
    ("argon2id:m=12288,t=2,p=1", True),
    ("argon2id:m=7168,t=9,p=1", False),
])
def test_only_hashes_below_every_owasp_minimum_are_called_weak(spec: str, weak: bool) -> None:
    if spec.startswith("argon2id"):
        pytest.importorskip("argon2")
    assert below_recommended(hasher_from_spec(spec)) is weak
