"""Where registered names live: a narrow interface, SQLite and Redis behind it.

:class:`AccountStore` is all the server asks of a store: the embedded
default is :class:`SQLiteAccountStore` (one file, one server); a cluster
shares :class:`~reactor.accounts.redis_store.RedisAccountStore`, so that
every node agrees on who owns a name.  The composition root
(:func:`reactor.app.open_store`) picks one from what the operator wrote
after ``--accounts``.  Its
methods may block -- they are called on the accounts worker threads, never on
the chat thread -- and must be safe to call from several threads at once.
Names are matched ignoring case (:func:`protocol.username_key`), as
everywhere in the chat; the spelling given at registration is kept.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from protocol import username_key


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    password_hash: str = field(repr=False)
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class Sanction:
    """A ban (``kind`` "ban") or a mute ("mute") in force.

    ``target`` is how it is matched: a username's key
    (:func:`protocol.username_key`) or an address as
    :func:`protocol.canonical_address` writes it; ``shown`` is as the
    operator wrote it.  ``until`` is a Unix time, None for no end."""

    kind: str
    target: str
    shown: str
    by: str
    reason: str | None
    created: float
    until: float | None

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now


class AccountStore(ABC):
    @abstractmethod
    def get(self, name: str) -> Account | None:
        """The account registered under ``name`` (any case), or None."""

    @abstractmethod
    def create(self, name: str, password_hash: str) -> bool:
        """Register ``name``; False if it already is (nothing changes then)."""

    @abstractmethod
    def set_password(self, name: str, password_hash: str) -> bool:
        """Replace the hash of a registered name; False if it is not registered."""

    @abstractmethod
    def remove(self, name: str) -> bool:
        """Forget ``name``; False if it was not registered."""

    @abstractmethod
    def accounts(self) -> list[Account]:
        """Every account, sorted by name ignoring case."""

    def close(self) -> None:  # noqa: B027 - optional for stores that hold nothing
        """Release what the store holds open."""

    # Moderation: operators, bans and mutes, kept with the accounts so that
    # every server that shares them enforces them.

    @abstractmethod
    def set_operator(self, name: str, operator: bool) -> bool:
        """Mark a registered name an operator or not; False if it is not registered."""

    @abstractmethod
    def is_operator(self, name: str) -> bool:
        """Is ``name`` registered and an operator?"""

    @abstractmethod
    def operators(self) -> list[str]:
        """The keys of the operators' names."""

    @abstractmethod
    def add_sanction(self, sanction: Sanction) -> None:
        """Put a ban or mute in force, replacing one of its kind on its target."""

    @abstractmethod
    def remove_sanction(self, kind: str, target: str) -> bool:
        """Lift a ban or mute; False if none was in force."""

    @abstractmethod
    def sanctions(self, now: float, prune: bool = False) -> list[Sanction]:
        """Every ban, mute and kick record in force at ``now``; with ``prune``
        those past are forgotten too."""

    # Back-off shared by the servers of a cluster.  A store that only one
    # server uses shares nothing: its in-memory back-off is the whole truth.
    # ``keys`` are a name's and an address's (``name:...``, ``address:...``).

    def shared_waits(self, keys: list[str]) -> list[float]:
        """Seconds each key must still wait because of failures counted here."""
        return [0.0] * len(keys)

    def shared_turn(self, keys: list[str], hold: float, retry: float) -> list[float]:
        """Take the keys' turn for one password check, before it is hashed.

        All zeros: taken, by this server alone, until ``shared_release`` or for
        ``hold`` seconds at most (a server that dies mid-check cannot hold a
        name for longer).  Otherwise nothing is taken, and each key's wait:
        its back-off, or at most ``retry`` while another server checks."""
        return [0.0] * len(keys)

    def shared_release(self, keys: list[str]) -> None:  # noqa: B027 - nothing to share
        """Give back the turn taken by ``shared_turn`` (the verdict is counted)."""

    def shared_failure(self, keys: list[str], first: float, most: float) -> list[float]:
        """Count a wrong password against each key; the back-off each now starts."""
        return [0.0] * len(keys)

    def shared_success(self, key: str) -> None:  # noqa: B027 - nothing to share
        """A right password: ``key`` (a name's) starts afresh."""

    def warnings(self) -> list[str]:
        """What the operator should know about the store as opened (logged at start)."""
        return []


class StoreUnavailable(Exception):
    """The store could not be opened or used; ``str`` says why, in one line."""


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS accounts (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
)""",
    "CREATE TABLE IF NOT EXISTS operators (key TEXT PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS sanctions (
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    shown TEXT NOT NULL,
    by TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    until REAL,
    PRIMARY KEY (kind, target)
)""",
)


class SQLiteAccountStore(AccountStore):
    """One SQLite file (standard library ``sqlite3``), one connection per thread.

    The file is created readable by its owner only: it holds password
    hashes.  WAL mode lets the operator's ``python -m reactor.accounts`` change
    it while a server reads it; every lookup reads the file, so a change is
    seen at the next login.

    The file is the truth, whatever happens to it while the server runs.
    Each use checks that the path still names the file this thread has open:
    a file deleted meanwhile makes the store unavailable (rather than
    acknowledging registrations into an unlinked file that the next restart
    would not see, or creating an empty one that would open every name), and
    a file replaced (a backup restored) is reopened.  Every SQLite error
    becomes :class:`StoreUnavailable` with a one-line reason, and the
    connection that met it is replaced at the next use.
    """

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            if path != ":memory:" and not os.path.exists(path):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            db = self._db()
            with db:
                for statement in _SCHEMA:
                    db.execute(statement)
        except (OSError, sqlite3.Error) as error:
            self.close()
            reason = getattr(error, "strerror", None) or str(error)
            raise StoreUnavailable(f"cannot open the accounts file {path}: {reason}") from None

    def _identity(self) -> tuple[int, int] | None:
        """The (device, inode) the path names now; None for ``:memory:``."""
        if self.path == ":memory:":
            return None
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            raise StoreUnavailable(
                f"the accounts file {self.path} is gone (deleted while the server ran?)"
            ) from None
        return found.st_dev, found.st_ino

    def _db(self) -> sqlite3.Connection:
        identity = self._identity()
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and self._local.identity != identity:
            self._forget(db)  # replaced: the new file is the truth now
            db = None
        if db is None:
            if self._closed:
                raise StoreUnavailable("the account store is closed")
            # mode=rw: never create the file here (an empty one would
            # open every registered name); __init__ alone creates it.
            target = self.path if identity is None else (
                "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=rw")
            db = sqlite3.connect(target, timeout=self._busy_timeout, uri=identity is not None,
                                 check_same_thread=False, isolation_level=None)
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA journal_mode=WAL")
            self._local.db, self._local.identity = db, identity
            with self._lock:
                self._all.append(db)
        return db

    def _forget(self, db: sqlite3.Connection) -> None:
        self._local.db = None
        with self._lock:
            if db in self._all:
                self._all.remove(db)
        with contextlib.suppress(sqlite3.Error):
            db.close()

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; SQLite's errors as one-line StoreUnavailable."""
        db = self._db()
        try:
            yield db
        except sqlite3.Error as error:
            # A connection that found the file damaged may keep saying so
            # after a repair: the next use opens a fresh one.
            self._forget(db)
            raise StoreUnavailable(f"the accounts file {self.path}: {error}") from None

    def get(self, name: str) -> Account | None:
        with self._using() as db:
            row = db.execute(
                "SELECT name, password_hash, created, updated FROM accounts WHERE key = ?",
                (username_key(name),),
            ).fetchone()
        return None if row is None else Account(*row)

    def create(self, name: str, password_hash: str) -> bool:
        now = time.time()
        with self._using() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO accounts VALUES (?, ?, ?, ?, ?)",
                (username_key(name), name, password_hash, now, now),
            )
        return cursor.rowcount == 1

    def set_password(self, name: str, password_hash: str) -> bool:
        with self._using() as db:
            cursor = db.execute(
                "UPDATE accounts SET password_hash = ?, updated = ? WHERE key = ?",
                (password_hash, time.time(), username_key(name)),
            )
        return cursor.rowcount == 1

    def remove(self, name: str) -> bool:
        with self._using() as db:
            cursor = db.execute("DELETE FROM accounts WHERE key = ?", (username_key(name),))
            # A name registered again later is no operator until made one.
            db.execute("DELETE FROM operators WHERE key = ?", (username_key(name),))
        return cursor.rowcount == 1

    def accounts(self) -> list[Account]:
        with self._using() as db:
            rows = db.execute(
                "SELECT name, password_hash, created, updated FROM accounts ORDER BY key"
            ).fetchall()
        return [Account(*row) for row in rows]

    def set_operator(self, name: str, operator: bool) -> bool:
        key = username_key(name)
        with self._using() as db:
            if db.execute("SELECT 1 FROM accounts WHERE key = ?", (key,)).fetchone() is None:
                return False
            if operator:
                db.execute("INSERT OR IGNORE INTO operators VALUES (?)", (key,))
            else:
                db.execute("DELETE FROM operators WHERE key = ?", (key,))
        return True

    def is_operator(self, name: str) -> bool:
        with self._using() as db:
            row = db.execute(
                "SELECT 1 FROM operators JOIN accounts USING (key) WHERE key = ?",
                (username_key(name),)).fetchone()
        return row is not None

    def operators(self) -> list[str]:
        with self._using() as db:
            rows = db.execute("SELECT key FROM operators JOIN accounts USING (key)"
                              " ORDER BY key").fetchall()
        return [row[0] for row in rows]

    def add_sanction(self, sanction: Sanction) -> None:
        with self._using() as db:
            db.execute("INSERT OR REPLACE INTO sanctions VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (sanction.kind, sanction.target, sanction.shown, sanction.by,
                        sanction.reason, sanction.created, sanction.until))

    def remove_sanction(self, kind: str, target: str) -> bool:
        with self._using() as db:
            cursor = db.execute("DELETE FROM sanctions WHERE kind = ? AND target = ?",
                                (kind, target))
        return cursor.rowcount == 1

    def sanctions(self, now: float, prune: bool = False) -> list[Sanction]:
        with self._using() as db:
            if prune:  # a write: not at every login
                db.execute("DELETE FROM sanctions WHERE until <= ?", (now,))
            rows = db.execute("SELECT kind, target, shown, by, reason, created, until"
                              " FROM sanctions WHERE until IS NULL OR until > ?"
                              " ORDER BY kind, target", (now,)).fetchall()
        return [Sanction(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._all = self._all, []
        for db in connections:
            with contextlib.suppress(sqlite3.Error):
                db.close()

