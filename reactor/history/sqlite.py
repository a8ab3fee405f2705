"""History in a SQLite file beside the accounts database: it survives a restart.

One table of delivered messages (a row per message, keyed by conversation)
and one of messages waiting for an offline name.  Recording a delivered
message, the hot path, only queues it: the writer thread
(:mod:`reactor.history.writer`) inserts what has queued in one transaction,
which costs a fraction of a transaction per message.  The rest (holding a
message for an offline name, reading) is a short statement on an indexed key
on the chat thread; a read waits first for the queued writes, so a user
reads back what they just sent.  One lock keeps the two threads' statements
apart.  WAL with ``synchronous=NORMAL`` keeps a write from waiting for the
disk (a crash may lose the last transactions, never the file).

Retention: each conversation is trimmed to its count every ``TRIM_EVERY``
writes (so it may briefly hold up to that many more, as Redis's ``MAXLEN
~``), expired rows are deleted when a conversation is written, and no read
returns more than the count or older than the age.
"""

from __future__ import annotations

import os
import sqlite3
import threading

from protocol import EVERYONE, username_key
from reactor.config import HistoryConfig
from reactor.contracts import StoredMessage
from reactor.history import conversation_key, peer_of
from reactor.history.writer import WriteBehind

# Writes to one conversation between two trims of its oldest rows.
TRIM_EVERY = 64
# Seconds a read waits at most for the queued writes before it reads.
SETTLE_TIMEOUT = 5.0

Row = tuple[str, int, str, str, str]  # conversation, time, sender, recipient, text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation, id);
CREATE TABLE IF NOT EXISTS waiting (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_key TEXT NOT NULL,
    sender_key TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS waiting_by_recipient ON waiting (recipient_key, id);
"""


def history_path(accounts_path: str) -> str:
    """The history file beside an accounts database: ``chat.db`` -> ``chat.history.db``."""
    root, extension = os.path.splitext(accounts_path)
    return f"{root}.history{extension or '.db'}"


class SQLiteHistory:
    """A :class:`~reactor.contracts.MessageStore` in a SQLite file."""

    def __init__(self, path: str, config: HistoryConfig) -> None:
        self.config = config
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._writes: dict[str, int] = {}
        self._writer: WriteBehind[Row] = WriteBehind(self._write, f"History file {path}")

    def record(self, owner: str, sender: str, to: str, text: str, time_ms: int) -> None:
        key = conversation_key(owner, peer_of(owner, sender, to))
        self._writer.put((key, time_ms, sender, to, text))

    def _write(self, rows: list[Row]) -> None:
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO messages (conversation, time_ms, sender, recipient, text)"
                " VALUES (?, ?, ?, ?, ?)", rows)
            latest: dict[str, int] = {}
            for key, time_ms, *_ in rows:
                latest[key] = time_ms
                self._writes[key] = self._writes.get(key, 0) + 1
            # At most one trim per conversation per batch: a trim costs
            # about as much as a hundred inserts.
            for key, time_ms in latest.items():
                if self._writes[key] >= TRIM_EVERY:
                    self._trim(key, time_ms)
                    self._writes[key] = 0
            if len(self._writes) > self.config.max_conversations:
                self._writes.clear()  # only counts towards the next trims: nothing lost

    def page(self, owner: str, peer: str, before: str | None, count: int,
             now_ms: int) -> list[StoredMessage]:
        if before is not None and "-" in before:
            return []  # an id this store never gave (a cluster's a-b)
        key = conversation_key(owner, peer)
        kept = self.config.broadcast_count if key == EVERYONE else self.config.direct_count
        oldest = now_ms - int(self.config.max_age * 1000)
        self._writer.settled(SETTLE_TIMEOUT)
        # The retention count is applied to the newest rows, as a trim would.
        with self._lock:
            rows = self._db.execute(
                "SELECT id, time_ms, sender, recipient, text FROM ("
                "  SELECT * FROM messages WHERE conversation = ? ORDER BY id DESC LIMIT ?"
                ") WHERE id < ? AND time_ms >= ? ORDER BY id DESC LIMIT ?",
                (key, kept, _upper_bound(before), oldest, count),
            ).fetchall()
        return [StoredMessage(str(row[0]), *row[1:]) for row in reversed(rows)]

    def hold(self, sender: str, to: str, text: str, time_ms: int) -> StoredMessage | None:
        to_key = username_key(to)
        with self._lock:
            (waiting,) = self._db.execute(
                "SELECT count(*) FROM waiting WHERE recipient_key = ?", (to_key,)).fetchone()
            if waiting >= self.config.waiting_max:
                return None
            cursor = self._db.execute(
                "INSERT INTO waiting (recipient_key, sender_key, time_ms, sender, recipient, text)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (to_key, username_key(sender), time_ms, sender, to, text))
        return StoredMessage(str(cursor.lastrowid), time_ms, sender, to, text)

    def waiting(self, to: str) -> list[StoredMessage]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, time_ms, sender, recipient, text FROM waiting"
                " WHERE recipient_key = ? ORDER BY id", (username_key(to),)).fetchall()
        return [StoredMessage(str(row[0]), *row[1:]) for row in rows]

    def acknowledge(self, to: str, message_id: str) -> None:
        if message_id.isdigit():
            with self._lock:
                self._db.execute("DELETE FROM waiting WHERE id = ? AND recipient_key = ?",
                                 (min(int(message_id), 2**63 - 1), username_key(to)))

    def forget_conversations(self, owner: str) -> None:
        self._writer.settled(SETTLE_TIMEOUT)
        with self._lock:
            self._forget_conversations(username_key(owner))

    def forget(self, name: str) -> None:
        key = username_key(name)
        self._writer.settled(SETTLE_TIMEOUT)
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM waiting WHERE recipient_key = ? OR sender_key = ?",
                             (key, key))
            self._forget_conversations(key)

    def _forget_conversations(self, key: str) -> None:
        self._db.execute("DELETE FROM messages WHERE conversation LIKE ? ESCAPE '!'",
                         (_like(key) + "\n%",))

    def close(self) -> None:
        self._writer.close(SETTLE_TIMEOUT)
        with self._lock:
            self._db.close()

    def _trim(self, key: str, now_ms: int) -> None:
        kept = self.config.broadcast_count if key == EVERYONE else self.config.direct_count
        oldest = now_ms - int(self.config.max_age * 1000)
        self._db.execute(
            "DELETE FROM messages WHERE conversation = ? AND (time_ms < ? OR id <= ("
            "  SELECT id FROM messages WHERE conversation = ? ORDER BY id DESC LIMIT 1 OFFSET ?"
            "))", (key, oldest, key, kept))

    def _transaction(self) -> sqlite3.Connection:
        # With isolation_level=None, "with connection" does not begin one.
        self._db.execute("BEGIN")
        return self._db


def _upper_bound(before: str | None) -> int:
    if before is None:
        return 2**63 - 1
    return min(int(before), 2**63 - 1)  # an id past SQLite's integers: every row


def _like(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
