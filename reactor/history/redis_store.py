"""History in Redis streams, shared by every node of a cluster (``--cluster URL --history on``).

Keys (``P`` is ``{chat}:``, one hash tag, so one slot on Redis Cluster):

``P h:all``                 STREAM of the broadcasts
``P h:dm:<owner>:<peer>``   STREAM: ``owner``'s copy of its direct conversation
                            with ``peer`` (name keys; ``:`` is in no username)
``P w:<name>``              STREAM of the messages waiting for ``name``
``P h:kept``                a marker, set when a node opens the store

Each entry holds the sender (``s``), the recipient (``t``), the text (``x``),
the time it was sent (``m``, ms: a waiting message keeps its own when it
reaches history) and the sender's key (``k``, to forget a removed account's
waiting messages).  The stream entry id (``ms-seq``) is the message id: Redis
gives one order per conversation across all nodes, and ``XREVRANGE`` pages
back from an id exclusively (``(id``).

Retention: ``XADD ... MAXLEN ~ N`` trims whole macro nodes, so a stream
may hold a little more than its count (about a hundred entries); a read
leaves those out, as it leaves out entries older than the age (by their
time, the chat's clock); a stream untouched for the age expires as a whole
(``PEXPIRE``).

**Off the chat thread, where it can be.**  Recording a delivered message or
a broadcast is the hot path: :meth:`RedisHistory.record` only queues the
write (:mod:`reactor.history.writer`), and the writer thread sends what has
queued in one pipeline.  The rest -- holding a message for an offline name (the
sender must hear whether it was stored), reading a page or a login's
waiting messages, acknowledging a login's backlog -- is one round trip on the chat
thread, with a short timeout; reads wait first for this node's queued
writes, so that a user reads back what they just sent.

**Waiting messages are not lost in silence.**  A Redis that restarts empty
has lost them: the marker is then gone, and the next login that reads its
waiting messages logs it (and sets the marker again); a node that starts
on a Redis without the marker says so too.
"""

from __future__ import annotations

import logging
from typing import Any

from protocol import EVERYONE, username_key
from reactor.config import HistoryConfig
from reactor.contracts import HistoryUnavailable, StoredMessage
from reactor.history import peer_of
from reactor.history.writer import WriteBehind
from reactor.redis.keys import PREFIX
from reactor.redis.url import redis_client, without_password

log = logging.getLogger("reactor")

BROADCASTS = PREFIX + "h:all"
DIRECT = PREFIX + "h:dm:"
WAITING = PREFIX + "w:"
KEPT = PREFIX + "h:kept"
TIMEOUT = 2.0  # seconds a call may take before the store counts as unavailable
LOST = ("history and waiting messages kept in Redis were lost (a restart without"
        " persistence?): whatever waited for offline users before is gone")

# KEYS: the waiting stream.  ARGV: the cap, then the entry's fields.  The cap
# is checked and the message added in one step, so two nodes holding
# messages for one name at once never pass it.
_HOLD = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', 's', ARGV[2], 't', ARGV[3], 'x', ARGV[4],
                  'm', ARGV[5], 'k', ARGV[6])
"""

# KEYS: a conversation.  ARGV: the newest id to read ('+' or '(id'), the
# count, the retention count.  Returns the page, newest first, and the id of
# the newest entry past the retention count (false if none is), which the
# approximate trim may still keep.
_PAGE = """
local page = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', ARGV[2])
local over = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[3])
local cut = false
if over > 0 then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)
  cut = old[#old][1]
end
return {page, cut}
"""

Write = tuple[str, int, tuple[str, str, str, int]]  # key, kept count, (sender, to, text, time)


class RedisHistory:
    """A :class:`~reactor.contracts.MessageStore` in Redis streams (see the module)."""

    def __init__(self, url: str, config: HistoryConfig, client: Any = None) -> None:
        self.config = config
        self.url = url
        self._redis = client if client is not None else redis_client(
            url, TIMEOUT, "--history", decode_responses=True)
        self._hold = self._redis.register_script(_HOLD)
        self._page = self._redis.register_script(_PAGE)
        self._age_ms = int(config.max_age * 1000)
        self._writer: WriteBehind[Write] = WriteBehind(
            self._write, f"History store {without_password(url)}")
        try:
            if self._redis.set(KEPT, "1", nx=True):
                log.warning("History store %s: none kept before (new, or Redis lost it)",
                            without_password(url))
        except Exception as error:  # a Redis that is down now may come back
            log.warning("History store %s not reachable yet: %s", without_password(url), error)

    # -- writes, off the chat thread ------------------------------------------------

    def record(self, owner: str, sender: str, to: str, text: str, time_ms: int) -> None:
        if to == EVERYONE:
            key, kept = BROADCASTS, self.config.broadcast_count
        else:
            key, kept = _direct_key(owner, peer_of(owner, sender, to)), self.config.direct_count
        self._writer.put((key, kept, (sender, to, text, time_ms)))

    def record_pair(self, sender: str, to: str, text: str, time_ms: int) -> None:
        # A stream per owner: forgetting one owner deletes its streams whole.
        self.record(sender, sender, to, text, time_ms)
        if username_key(sender) != username_key(to):
            self.record(to, sender, to, text, time_ms)

    def _write(self, batch: list[Write]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key, kept, (sender, to, text, time_ms) in batch:
            pipe.xadd(key, {"s": sender, "t": to, "x": text, "m": time_ms},
                      maxlen=kept, approximate=True)
        for key in {key for key, _, _ in batch}:  # once per stream written
            pipe.pexpire(key, self._age_ms)
        pipe.execute()

    def _settled(self) -> None:
        """Wait (briefly) until what this node queued so far is in Redis."""
        self._writer.settled(TIMEOUT)

    # -- the rest, on the chat thread ---------------------------------------------------

    def page(self, owner: str, peer: str, before: str | None, count: int,
             now_ms: int) -> list[StoredMessage]:
        if peer == EVERYONE:
            key, kept = BROADCASTS, self.config.broadcast_count
        else:
            key, kept = _direct_key(owner, peer), self.config.direct_count
        newest = _exclusive(before)
        if newest is None:
            return []  # before the first id there can be
        self._settled()
        entries, cut = self._call(self._page, keys=[key], args=[newest, count, kept])
        oldest_ms = now_ms - self._age_ms
        floor = (-1, -1) if cut is None else _order(cut)
        page = [_message(entry) for entry in reversed(entries) if _order(entry[0]) > floor]
        return [message for message in page if message.time_ms >= oldest_ms]

    def hold(self, sender: str, to: str, text: str, time_ms: int) -> StoredMessage | None:
        message_id = self._call(
            self._hold, keys=[WAITING + username_key(to)],
            args=[self.config.waiting_max, sender, to, text, time_ms, username_key(sender)])
        return None if message_id is None else StoredMessage(message_id, time_ms, sender, to,
                                                             text)

    def waiting(self, to: str) -> list[StoredMessage]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xrange(WAITING + username_key(to), count=self.config.waiting_max)
        pipe.set(KEPT, "1", get=True)
        entries, kept = self._call(pipe.execute)
        if kept is None:
            log.error("%s", LOST)
        return [_message(entry) for entry in entries]

    def acknowledge(self, to: str, *message_ids: str) -> None:
        if message_ids:  # one XDEL for a login's whole backlog
            self._call(self._redis.xdel, WAITING + username_key(to), *message_ids)

    def forget_conversations(self, owner: str) -> None:
        self._settled()
        doomed = self._keys(f"{DIRECT}{username_key(owner)}:*")
        if doomed:
            self._call(self._redis.delete, *doomed)

    def forget(self, name: str) -> None:
        key = username_key(name)
        self.forget_conversations(name)
        self._call(self._redis.delete, WAITING + key)
        for stream in self._keys(f"{WAITING}*"):
            entries = self._call(self._redis.xrange, stream)
            ids = [entry_id for entry_id, fields in entries if fields.get("k") == key]
            if ids:
                self._call(self._redis.xdel, stream, *ids)

    def close(self) -> None:
        self._writer.close(TIMEOUT + 1)
        self._redis.close()

    def _keys(self, pattern: str) -> list[str]:
        return self._call(lambda: list(self._redis.scan_iter(match=pattern, count=500)))

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as error:
            raise HistoryUnavailable(f"history store unreachable: {error}") from error


def _direct_key(owner: str, peer: str) -> str:
    return f"{DIRECT}{username_key(owner)}:{username_key(peer)}"


def _message(entry: tuple[str, dict[str, str] | list[str]]) -> StoredMessage:
    entry_id, fields = entry
    if isinstance(fields, list):  # as a script returns them: name, value, name, value...
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return StoredMessage(entry_id, int(fields["m"]), fields["s"], fields["t"], fields["x"])


MAX_ID_PART = 2**64 - 1


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _exclusive(before: str | None) -> str | None:
    """The XREVRANGE end for ids older than ``before`` (as ``history`` gives
    it: digits, or digits-digits); None if nothing can be older."""
    if before is None:
        return "+"
    ms, seq = _order(before)
    if ms > MAX_ID_PART:
        return "+"  # past every id there can be
    if seq > MAX_ID_PART:
        seq = MAX_ID_PART
    if (ms, seq) == (0, 0):
        return None
    return f"({ms}-{seq}"
