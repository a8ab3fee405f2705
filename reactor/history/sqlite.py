"""History in a SQLite file beside the accounts database: it survives a restart.

One table of delivered messages and one of messages waiting for an offline
name.  A direct message is one row however many of its two parties keep it:
the row is keyed by the pair of names and marks which of the two own it
(``owners``), so that each registered party reads its own copy and
forgetting one party's copies clears its mark (the row goes when neither
keeps it) -- what two rows would give, written once.

Recording a delivered message, the hot path, only queues it: the writer
thread (:mod:`reactor.history.writer`) turns what has queued into rows and
inserts them in one transaction, which costs a fraction of a transaction
per message.  The rest (holding a message for an offline name, reading) is
a short statement on an indexed key on the chat thread; a read waits first
for the queued writes, so a user reads back what they just sent.  One lock
keeps the two threads' statements apart.  WAL with ``synchronous=NORMAL``
keeps a write from waiting for the disk (a crash may lose the last
transactions, never the file).

Retention: each conversation (a pair of names, or the broadcasts) is
trimmed to its count every ``TRIM_EVERY`` writes (so it may briefly hold up
to that many more, as Redis's ``MAXLEN ~``), expired rows are deleted when
a conversation is trimmed, and no read returns more than the count or older
than the age.  The count is the pair's, which both parties share.
"""

from __future__ import annotations

import os
import sqlite3
import threading

from protocol import EVERYONE, username_key
from reactor.config import HistoryConfig
from reactor.contracts import StoredMessage
from reactor.history.writer import WriteBehind

# Writes to one conversation between two trims of its oldest rows.
TRIM_EVERY = 64
# Seconds a read waits at most for the queued writes before it reads.
SETTLE_TIMEOUT = 5.0

# Who keeps a row, in ``owners``: the pair's first name (the lesser key),
# its second, or both; the broadcasts are everyone's.
FIRST, SECOND, BOTH = 1, 2, 3

# As record() queues it: the owner's name (None: both parties), sender,
# recipient, text, time.
Queued = tuple[str | None, str, str, str, int]
Row = tuple[str, int, int, str, str, str]  # pair, owners, time, sender, recipient, text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kept (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair TEXT NOT NULL,
    owners INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS kept_by_pair ON kept (pair, id);
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

_INSERT = ("INSERT INTO kept (pair, owners, time_ms, sender, recipient, text)"
           " VALUES (?, ?, ?, ?, ?, ?)")


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
        _adopt_one_row_per_owner(self._db)
        self._lock = threading.Lock()
        self._writes: dict[str, int] = {}
        self._writer: WriteBehind[Queued] = WriteBehind(self._write, f"History file {path}")

    def record(self, owner: str, sender: str, to: str, text: str, time_ms: int) -> None:
        self._writer.put((owner, sender, to, text, time_ms))

    def record_pair(self, sender: str, to: str, text: str, time_ms: int) -> None:
        self._writer.put((None, sender, to, text, time_ms))

    def _write(self, queued: list[Queued]) -> None:
        rows = [_row(*item) for item in queued]
        with self._lock, self._transaction():
            self._db.executemany(_INSERT, rows)
            latest: dict[str, int] = {}
            writes = self._writes
            for pair, _, time_ms, *_ in rows:
                latest[pair] = time_ms
                writes[pair] = writes.get(pair, 0) + 1
            # At most one trim per conversation per batch: a trim costs
            # about as much as a hundred inserts.
            for pair, time_ms in latest.items():
                if writes[pair] >= TRIM_EVERY:
                    self._trim(pair, time_ms)
                    writes[pair] = 0
            if len(writes) > self.config.max_conversations:
                writes.clear()  # only counts towards the next trims: nothing lost

    def page(self, owner: str, peer: str, before: str | None, count: int,
             now_ms: int) -> list[StoredMessage]:
        if before is not None and "-" in before:
            return []  # an id this store never gave (a cluster's a-b)
        if peer == EVERYONE:
            pair, mine, kept = EVERYONE, BOTH, self.config.broadcast_count
        else:
            pair, mine = _pair_of(username_key(owner), username_key(peer))
            kept = self.config.direct_count
        oldest = now_ms - int(self.config.max_age * 1000)
        self._writer.settled(SETTLE_TIMEOUT)
        # The retention count is applied to the newest rows, as a trim would.
        with self._lock:
            rows = self._db.execute(
                "SELECT id, time_ms, sender, recipient, text FROM ("
                "  SELECT * FROM kept WHERE pair = ? AND owners & ? ORDER BY id DESC LIMIT ?"
                ") WHERE id < ? AND time_ms >= ? ORDER BY id DESC LIMIT ?",
                (pair, mine, kept, _upper_bound(before), oldest, count),
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

    def acknowledge(self, to: str, *message_ids: str) -> None:
        key = username_key(to)
        ids = [(min(int(message_id), 2**63 - 1), key) for message_id in message_ids
               if message_id.isdigit()]
        with self._lock, self._transaction():
            self._db.executemany("DELETE FROM waiting WHERE id = ? AND recipient_key = ?", ids)

    def forget_conversations(self, owner: str) -> None:
        self._writer.settled(SETTLE_TIMEOUT)
        with self._lock, self._transaction():
            self._forget_conversations(username_key(owner))

    def forget(self, name: str) -> None:
        key = username_key(name)
        self._writer.settled(SETTLE_TIMEOUT)
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM waiting WHERE recipient_key = ? OR sender_key = ?",
                             (key, key))
            self._forget_conversations(key)

    def _forget_conversations(self, key: str) -> None:
        # The owner's mark goes from each of its pairs, as first or second
        # name; a row nobody keeps any more goes with it.
        first = "substr(pair, 1, instr(pair, char(10)) - 1)"
        second = "substr(pair, instr(pair, char(10)) + 1)"
        self._db.execute(f"UPDATE kept SET owners = owners & ~{FIRST}"
                         f" WHERE owners & {FIRST} AND instr(pair, char(10)) AND {first} = ?",
                         (key,))
        self._db.execute(f"UPDATE kept SET owners = owners & ~{SECOND}"
                         f" WHERE owners & {SECOND} AND instr(pair, char(10)) AND {second} = ?",
                         (key,))
        self._db.execute("DELETE FROM kept WHERE owners = 0")

    def close(self) -> None:
        self._writer.close(SETTLE_TIMEOUT)
        with self._lock:
            self._db.close()

    def _trim(self, pair: str, now_ms: int) -> None:
        kept = self.config.broadcast_count if pair == EVERYONE else self.config.direct_count
        oldest = now_ms - int(self.config.max_age * 1000)
        self._db.execute(
            "DELETE FROM kept WHERE pair = ? AND (time_ms < ? OR id <= ("
            "  SELECT id FROM kept WHERE pair = ? ORDER BY id DESC LIMIT 1 OFFSET ?"
            "))", (pair, oldest, pair, kept))

    def _transaction(self) -> sqlite3.Connection:
        # With isolation_level=None, "with connection" does not begin one.
        self._db.execute("BEGIN")
        return self._db


def _pair_of(owner_key: str, peer_key: str) -> tuple[str, int]:
    """The pair of two name keys, and which of its names ``owner_key`` is."""
    if owner_key <= peer_key:
        return f"{owner_key}\n{peer_key}", FIRST
    return f"{peer_key}\n{owner_key}", SECOND


def _row(owner: str | None, sender: str, to: str, text: str, time_ms: int) -> Row:
    """A queued record as a row (on the writer thread: off the chat's)."""
    if to == EVERYONE:
        return EVERYONE, BOTH, time_ms, sender, to, text
    sender_key, to_key = username_key(sender), username_key(to)
    if owner is None:  # both parties keep it
        pair, _ = _pair_of(sender_key, to_key)
        return pair, BOTH if sender_key != to_key else FIRST, time_ms, sender, to, text
    owner_key = username_key(owner)
    pair, mine = _pair_of(owner_key, to_key if owner_key == sender_key else sender_key)
    return pair, mine, time_ms, sender, to, text


def _adopt_one_row_per_owner(db: sqlite3.Connection) -> None:
    """Move the rows of a file written a row per owner (a ``messages`` table
    keyed ``owner\\npeer``) into ``kept``, once, keeping their order."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
                  ).fetchone() is None:
        return
    db.execute("BEGIN")
    old = db.execute("SELECT conversation, time_ms, sender, recipient, text FROM messages"
                     " ORDER BY id").fetchall()
    rows = []
    for conversation, time_ms, sender, to, text in old:
        owner, _, peer = conversation.partition("\n")
        pair, mine = (EVERYONE, BOTH) if not peer else _pair_of(owner, peer)
        rows.append((pair, mine, time_ms, sender, to, text))
    db.executemany(_INSERT, rows)
    db.execute("DROP TABLE messages")
    db.execute("COMMIT")


def _upper_bound(before: str | None) -> int:
    if before is None:
        return 2**63 - 1
    return min(int(before), 2**63 - 1)  # an id past SQLite's integers: every row

