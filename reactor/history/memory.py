"""History in this process's memory: a bounded ring buffer per conversation (ergo's design).

Every structure has a bound whatever clients do: each conversation's buffer
its retention count, the number of direct conversations
``max_conversations`` (the least recently written is dropped first), each
waiting list ``waiting_max``.  The age limit is applied when a conversation
is read or written: entries are in time order, so expired ones are at the
left of the buffer and leave it in O(expired).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import count

from protocol import EVERYONE, username_key
from reactor.config import HistoryConfig
from reactor.contracts import StoredMessage
from reactor.history import conversation_key, peer_of


class MemoryHistory:
    """A :class:`~reactor.contracts.MessageStore` in memory; lost when the process ends."""

    def __init__(self, config: HistoryConfig) -> None:
        self.config = config
        self._ids = count(1)
        self._broadcasts: deque[StoredMessage] = deque(maxlen=config.broadcast_count)
        self._direct: OrderedDict[str, deque[StoredMessage]] = OrderedDict()
        self._waiting: dict[str, deque[StoredMessage]] = {}

    def record(self, owner: str, sender: str, to: str, text: str, time_ms: int) -> None:
        message = StoredMessage(str(next(self._ids)), time_ms, sender, to, text)
        if to == EVERYONE:
            self._broadcasts.append(message)
            self._expire(self._broadcasts, time_ms)
            return
        key = conversation_key(owner, peer_of(owner, sender, to))
        kept = self._direct.get(key)
        if kept is None:
            kept = self._direct[key] = deque(maxlen=self.config.direct_count)
            while len(self._direct) > self.config.max_conversations:
                self._direct.popitem(last=False)
        else:
            self._direct.move_to_end(key)
        kept.append(message)
        self._expire(kept, time_ms)

    def record_pair(self, sender: str, to: str, text: str, time_ms: int) -> None:
        self.record(sender, sender, to, text, time_ms)
        if username_key(sender) != username_key(to):
            self.record(to, sender, to, text, time_ms)

    def page(self, owner: str, peer: str, before: str | None, count: int,
             now_ms: int) -> list[StoredMessage]:
        key = conversation_key(owner, peer)
        kept = self._broadcasts if key == EVERYONE else self._direct.get(key)
        if not kept or (before is not None and "-" in before):
            return []  # nothing, or an id this store never gave (a cluster's a-b)
        self._expire(kept, now_ms)
        limit = None if before is None else int(before)
        page: list[StoredMessage] = []
        for message in reversed(kept):  # newest first: a page is near the end
            if limit is not None and int(message.id) >= limit:
                continue
            page.append(message)
            if len(page) == count:
                break
        page.reverse()
        return page

    def hold(self, sender: str, to: str, text: str, time_ms: int) -> StoredMessage | None:
        waiting = self._waiting.setdefault(username_key(to), deque())
        if len(waiting) >= self.config.waiting_max:
            return None
        message = StoredMessage(str(next(self._ids)), time_ms, sender, to, text)
        waiting.append(message)
        return message

    def waiting(self, to: str) -> list[StoredMessage]:
        return list(self._waiting.get(username_key(to), ()))

    def acknowledge(self, to: str, *message_ids: str) -> None:
        key = username_key(to)
        waiting = self._waiting.get(key)
        if not waiting:
            return
        for message_id in message_ids:
            if waiting and waiting[0].id == message_id:  # oldest first: nearly always the head
                waiting.popleft()
                continue
            for message in waiting:
                if message.id == message_id:
                    waiting.remove(message)
                    break
        if not waiting:
            del self._waiting[key]

    def forget_conversations(self, owner: str) -> None:
        key = username_key(owner)
        for conversation in [k for k in self._direct if k.partition("\n")[0] == key]:
            del self._direct[conversation]

    def forget(self, name: str) -> None:
        key = username_key(name)
        self._waiting.pop(key, None)
        self.forget_conversations(name)
        for waiting in self._waiting.values():
            kept = [m for m in waiting if username_key(m.sender) != key]
            if len(kept) != len(waiting):
                waiting.clear()
                waiting.extend(kept)

    def close(self) -> None:
        pass

    def _expire(self, kept: deque[StoredMessage], now_ms: int) -> None:
        oldest = now_ms - int(self.config.max_age * 1000)
        while kept and kept[0].time_ms < oldest:
            kept.popleft()

