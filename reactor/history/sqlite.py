"""History in a SQLite file beside the accounts database: it survives a restart.

One table of delivered messages and one of messages waiting for an offline
name.  A direct message is one row however many of its two parties keep it:
the row belongs to the pair of names (a number from the ``pairs`` table; 0
is the broadcasts) and marks which of the two own it (``owners``), so that
each registered party reads its own copy and forgetting one party's copies
clears its mark (the row goes when neither keeps it, the pair when it has no
rows) -- what two rows would give, written once.  The rows are stored in
the order they are read, by pair then id (``WITHOUT ROWID``): one b-tree to
write, no index beside it.  Ids come from a counter kept in the file, so
none is given twice, even after every row was deleted.

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

import functools
import os
import sqlite3
import threading
from collections import Counter
from typing import cast

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
BROADCASTS = 0  # the pair number of the broadcasts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    first TEXT NOT NULL,
    second TEXT NOT NULL,
    UNIQUE (first, second)
);
CREATE INDEX IF NOT EXISTS pairs_by_second ON pairs (second);
CREATE TABLE IF NOT EXISTS kept (
    pair INTEGER NOT NULL,
    id INTEGER NOT NULL,
    owners INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (pair, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
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

# Rows in one INSERT at most (7 values each, under SQLite's oldest limit of
# 999 variables).  One statement of many rows, rather than a statement run
# once per row, binds in one call and lets the chat thread have the
# interpreter once per statement, not once per row.
ROWS_PER_INSERT = 128
# A batch's rows past its full statements go in at most two more, of a
# multiple of ROUNDING rows and of fewer than ROUNDING: so few row counts
# that every INSERT stays in sqlite3's statement cache, where one of each
# count that batches happen to have would not (compiling a statement of
# many rows costs more than running it).
ROUNDING = 16
COLUMNS = 7


@functools.cache  # only the row counts _chunks() gives: a few dozen
def _insert(rows: int) -> str:
    """The INSERT of ``rows`` rows (prepared once per count: sqlite3 caches statements)."""
    return ("INSERT INTO kept (id, pair, owners, time_ms, sender, recipient, text) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows))


def _chunks(rows: int) -> list[int]:
    """``rows`` as the row counts of successive INSERTs (see ROUNDING)."""
    full, rest = divmod(rows, ROWS_PER_INSERT)
    counts = [ROWS_PER_INSERT] * full
    rounded = rest - rest % ROUNDING
    counts += [count for count in (rounded, rest - rounded) if count]
    return counts


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
        # What the writer knows (under the lock): the last id given, and
        # which pair and owner marks a queued record's names make.
        self._last_id = self._stored_last_id()
        # Another connection's commits change it (the operator's tool removing
        # an account): then what the writer knows is read again.
        self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        self._pairs: dict[tuple[str | None, str, str], tuple[int, int]] = {}
        self._writes: dict[int, int] = {}
        _adopt_one_row_per_owner(self)
        self._writer: WriteBehind[Queued] = WriteBehind(self._write, f"History file {path}")

    def _stored_last_id(self) -> int:
        """The last message id the file has given."""
        return int(self._db.execute(
            "SELECT max(coalesce((SELECT value FROM counters WHERE name = 'kept'), 0),"
            " coalesce((SELECT max(id) FROM kept), 0))").fetchone()[0])

    def record(self, owner: str, sender: str, to: str, text: str, time_ms: int) -> None:
        self._writer.put((owner, sender, to, text, time_ms))

    def record_pair(self, sender: str, to: str, text: str, time_ms: int) -> None:
        self._writer.put((None, sender, to, text, time_ms))

    def _write(self, queued: list[Queued]) -> None:
        with self._lock:
            try:
                with self._transaction():
                    self._insert(queued)
            except Exception:
                # Rolled back: a pair made in it is not in the file.
                self._pairs.clear()
                raise

    def _insert(self, queued: list[Queued]) -> None:
        """Queued records as rows, a few statements of many rows (in a
        transaction, under the lock); each conversation written is trimmed
        once it had ``TRIM_EVERY`` writes."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self._pairs.clear()
            self._last_id = max(self._last_id, self._stored_last_id())
        pairs = self._pairs
        values: list[object] = []  # the rows' values one after the other
        add = values.extend
        next_id = self._last_id
        for owner, sender, to, text, time_ms in queued:
            known = pairs.get((owner, sender, to)) or self._owned_pair(owner, sender, to)
            next_id += 1
            add((next_id, *known, time_ms, sender, to, text))
        start = 0
        for rows in _chunks(len(queued)):
            end = start + rows * COLUMNS
            self._db.execute(_insert(rows), values[start:end])
            start = end
        self._db.execute("INSERT OR REPLACE INTO counters VALUES ('kept', ?)", (next_id,))
        self._last_id = next_id
        writes, now_ms = self._writes, queued[-1][4]
        for pair, written in Counter(cast("list[int]", values[1::COLUMNS])).items():
            # At most one trim per conversation per batch: a trim costs
            # as much as a few dozen inserts.
            writes[pair] = writes.get(pair, 0) + written
            if writes[pair] >= TRIM_EVERY:
                self._trim(pair, now_ms)
                writes[pair] = 0
        if len(writes) > self.config.max_conversations:
            writes.clear()  # only counts towards the next trims: nothing lost

    def _owned_pair(self, owner: str | None, sender: str, to: str) -> tuple[int, int]:
        """The pair of a record's names and its owner marks, remembered (bounded)."""
        if to == EVERYONE:
            found = BROADCASTS, BOTH
        else:
            sender_key, to_key = username_key(sender), username_key(to)
            if owner is None:  # both parties keep it
                first, second, mine = _in_order(sender_key, to_key)
                found = (self._pair_made(first, second),
                         BOTH if sender_key != to_key else FIRST)
            else:
                owner_key = username_key(owner)
                first, second, mine = _in_order(
                    owner_key, to_key if owner_key == sender_key else sender_key)
                found = self._pair_made(first, second), mine
        if len(self._pairs) >= self.config.max_conversations:
            self._pairs.clear()
        self._pairs[owner, sender, to] = found
        return found

    def _pair_id(self, first: str, second: str) -> int | None:
        row = self._db.execute("SELECT id FROM pairs WHERE first = ? AND second = ?",
                               (first, second)).fetchone()
        return None if row is None else int(row[0])

    def _pair_made(self, first: str, second: str) -> int:
        """The pair's number, made if it has none yet."""
        found = self._pair_id(first, second)
        if found is not None:
            return found
        cursor = self._db.execute("INSERT INTO pairs (first, second) VALUES (?, ?)",
                                  (first, second))
        return int(cursor.lastrowid or 0)

    def page(self, owner: str, peer: str, before: str | None, count: int,
             now_ms: int) -> list[StoredMessage]:
        if before is not None and "-" in before:
            return []  # an id this store never gave (a cluster's a-b)
        oldest = now_ms - int(self.config.max_age * 1000)
        self._writer.settled(SETTLE_TIMEOUT)
        with self._lock:
            if peer == EVERYONE:
                pair, mine, kept = BROADCASTS, BOTH, self.config.broadcast_count
            else:
                first, second, mine = _in_order(username_key(owner), username_key(peer))
                found, kept = self._pair_id(first, second), self.config.direct_count
                if found is None:
                    return []
                pair = found
            # The retention count is applied to the newest rows, as a trim would.
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
        # name; a row nobody keeps any more goes, and a pair left empty.
        db = self._db
        db.execute(f"UPDATE kept SET owners = owners & ~{FIRST}"
                   " WHERE pair IN (SELECT id FROM pairs WHERE first = ?)", (key,))
        db.execute(f"UPDATE kept SET owners = owners & ~{SECOND}"
                   " WHERE pair IN (SELECT id FROM pairs WHERE second = ?)", (key,))
        mine = "SELECT id FROM pairs WHERE first = ? OR second = ?"
        db.execute(f"DELETE FROM kept WHERE owners = 0 AND pair IN ({mine})", (key, key))
        db.execute(f"DELETE FROM pairs WHERE id IN ({mine})"
                   " AND NOT EXISTS (SELECT 1 FROM kept WHERE kept.pair = pairs.id)", (key, key))
        self._pairs.clear()  # a pair deleted may be made anew with another number

    def close(self) -> None:
        self._writer.close(SETTLE_TIMEOUT)
        with self._lock:
            self._db.close()

    def _trim(self, pair: int, now_ms: int) -> None:
        kept = self.config.broadcast_count if pair == BROADCASTS else self.config.direct_count
        db = self._db
        db.execute("DELETE FROM kept WHERE pair = ? AND id <= ("
                   "  SELECT id FROM kept WHERE pair = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                   (pair, pair, kept))
        # Rows come in time order, but for a waiting message kept with the
        # time it was sent: the whole conversation is looked through only
        # when its oldest row has expired (reads leave out any expired row).
        oldest = now_ms - int(self.config.max_age * 1000)
        first = db.execute("SELECT time_ms FROM kept WHERE pair = ? ORDER BY id LIMIT 1",
                           (pair,)).fetchone()
        if first is not None and first[0] < oldest:
            db.execute("DELETE FROM kept WHERE pair = ? AND time_ms < ?", (pair, oldest))

    def _transaction(self) -> sqlite3.Connection:
        # With isolation_level=None, "with connection" does not begin one.
        # IMMEDIATE: the write lock is taken (waiting out another writer, such
        # as an operator's account removal) before anything is read; a
        # deferred transaction that read first fails at once with "database
        # is locked" when another connection wrote meanwhile.
        self._db.execute("BEGIN IMMEDIATE")
        return self._db


def _in_order(owner_key: str, peer_key: str) -> tuple[str, str, int]:
    """Two name keys as their pair keeps them, and which of the two ``owner_key`` is."""
    if owner_key <= peer_key:
        return owner_key, peer_key, FIRST
    return peer_key, owner_key, SECOND


def _adopt_one_row_per_owner(store: SQLiteHistory) -> None:
    """Move the rows of a file written a row per owner (a ``messages`` table
    keyed ``owner``, newline, ``peer``) into ``kept``, once, keeping their order."""
    db = store._db
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
                  ).fetchone() is None:
        return
    with store._lock, store._transaction():
        old = db.execute("SELECT conversation, time_ms, sender, recipient, text FROM messages"
                         " ORDER BY id").fetchall()
        # The owner's own spelling was not kept: its key stands for it.
        store._insert([(conversation.partition("\n")[0], sender, to, text, time_ms)
                       for conversation, time_ms, sender, to, text in old])
        db.execute("DROP TABLE messages")


def _upper_bound(before: str | None) -> int:
    if before is None:
        return 2**63 - 1
    return min(int(before), 2**63 - 1)  # an id past SQLite's integers: every row

