"""One connection's output queue, shared by every backend.

Goals:

* **No copies on the fan-out path.**  A broadcast formats its line once and
  the same ``bytes`` object is queued for every recipient; the queue keeps the
  objects as they are and hands a list of them to ``sendmsg`` (gather I/O), so
  nothing is joined or sliced except the one entry a partial send cut into.
* **Know when a message has left.**  An entry may carry a callback that runs
  once the kernel has taken the entry's last byte -- which is what lets the
  server echo ``<To Bob> ...`` only for a message it really handed to Bob's
  connection -- or with ``False`` if the entry is discarded first.
* **Take a message back.**  An entry the kernel has not started on can be
  withdrawn (a direct message that waited too long for a recipient who is not
  reading), so that "not delivered" stays true: the recipient never gets it.

Not thread-safe: the threads backend guards each queue with its connection's
send lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

# Called with True once the kernel took the whole entry, False if it never will.
Handoff = Callable[[bool], None]

# sendmsg() takes at most IOV_MAX (1024 on Linux) buffers; fewer is plenty
# to fill a socket buffer.
MAX_BUFFERS_PER_SEND = 256


class Entry:
    """A queued write that someone waits for: its bytes still to send and the callback."""

    __slots__ = ("data", "on_handoff", "started")

    def __init__(self, data: bytes | memoryview, on_handoff: Handoff) -> None:
        self.data = data
        self.on_handoff = on_handoff
        # True once some of it went out: it can no longer be withdrawn.
        self.started = False

    def __len__(self) -> int:
        return len(self.data)


# A queued write is plain bytes (a broadcast's shared line: no object is made
# per recipient, which is most of the cost of a fan-out to a busy queue) or an
# Entry when someone waits for it.
Item = bytes | memoryview | Entry


class OutputBuffer:
    __slots__ = ("_items", "entries", "progressed", "size")

    def __init__(self) -> None:
        self._items: deque[Item] = deque()
        self.size = 0  # bytes queued and not yet taken by the kernel
        # Set whenever the kernel takes bytes from the queue, cleared by
        # ChatService's budget check: whether a client with output waiting
        # reads at all.  (A flag, not a count: storing a constant allocates
        # nothing, where a growing count would, once per send.)
        self.progressed = False
        # How many of the items are Entries: with none, the queue is plain
        # bytes (nothing to withdraw) and the hot paths need not look at each item.
        self.entries = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes | memoryview, on_handoff: Handoff | None = None) -> Entry | None:
        """Queue ``data``; returns its Entry if ``on_handoff`` waits for it."""
        self.size += len(data)
        if on_handoff is None:
            self._items.append(data)
            return None
        entry = Entry(data, on_handoff)
        self._items.append(entry)
        self.entries += 1
        return entry

    def buffers(self) -> list[bytes | memoryview]:
        """The head of the queue, for one ``sendmsg`` call."""
        items = self._items
        if not self.entries and len(items) <= MAX_BUFFERS_PER_SEND:
            return list(items)  # type: ignore[arg-type]  # no Entry among them: entries == 0
        count = min(len(items), MAX_BUFFERS_PER_SEND)
        return [item.data if type(item) is Entry else item  # type: ignore[misc]
                for item in (items[i] for i in range(count))]

    def joined(self, limit: int) -> bytes | memoryview | None:
        """The whole queue as one piece of bytes, its entries marked started
        (it is about to be encrypted in one record); None if it holds more
        than ``limit`` bytes or one send's worth of buffers.

        One call where ``buffers`` and ``mark_started`` would be two and a
        list: this runs once per recipient of a busy pass on TLS.
        """
        items = self._items
        count = len(items)
        if count >= MAX_BUFFERS_PER_SEND or self.size > limit:
            return None
        if self.entries:
            self.mark_started(count)
            return b"".join(self.buffers())  # (all of it: fewer than one send's worth)
        if count == 1:
            return items[0]  # type: ignore[return-value]
        if count == 2:
            # A tuple: join() would first copy a deque into a list.
            return b"".join((items[0], items[1]))  # type: ignore[arg-type]
        return b"".join(items)  # type: ignore[arg-type]

    def consume(self, sent: int) -> list[Handoff]:
        """Drop ``sent`` bytes from the head; return the callbacks now due (with True)."""
        due: list[Handoff] = []
        items = self._items
        self.progressed = True
        if sent == self.size:
            # All of it (the common case): no item is looked at but the Entries.
            if self.entries:
                due = [item.on_handoff for item in items if type(item) is Entry]
                self.entries = 0
            items.clear()
            self.size = 0
            return due
        self.size -= sent
        while sent:
            head = items[0]
            length = len(head)
            if sent < length:
                if type(head) is Entry:
                    head.data = memoryview(head.data)[sent:]
                    head.started = True
                else:
                    items[0] = memoryview(head)[sent:]  # type: ignore[arg-type]
                break
            sent -= length
            items.popleft()
            if type(head) is Entry:
                self.entries -= 1
                due.append(head.on_handoff)
        return due

    def mark_started(self, count: int) -> None:
        """The first ``count`` items are being sent (by another thread):
        none of them may be withdrawn any more."""
        if not self.entries:
            return  # plain bytes only: nothing can be withdrawn anyway
        items = self._items
        for i in range(min(count, len(items))):
            item = items[i]
            if type(item) is Entry:
                item.started = True

    def withdraw(self, entry: Entry) -> bool:
        """Remove ``entry`` if none of it has been sent; True if it was removed."""
        if entry.started:
            return False
        try:
            self._items.remove(entry)
        except ValueError:
            return False  # already sent (or discarded)
        self.entries -= 1
        self.size -= len(entry.data)
        return True

    def drop_unsent(self, keep: int = 0) -> list[Handoff]:
        """Discard what the kernel has not started on, keeping the first
        ``keep`` bytes (handed to a lower buffer already) and the head if a
        send cut into it, so that the client's stream stays whole lines.
        Returns the callbacks that will now never run with True."""
        items = self._items
        kept: deque[Item] = deque()
        size = 0
        while items and (size < keep or (not kept and _started(items[0]))):
            item = items.popleft()
            kept.append(item)
            size += len(item)
        waiting = self.clear()
        self._items = kept
        self.size = size
        self.entries = sum(1 for item in kept if type(item) is Entry)
        return waiting

    def clear(self) -> list[Handoff]:
        """Discard everything; return the callbacks that will now never run with True."""
        waiting = [item.on_handoff for item in self._items if type(item) is Entry]
        self._items.clear()
        self.size = 0
        self.entries = 0
        return waiting


def _started(item: Item) -> bool:
    """Whether a send has cut into ``item`` (the head of a queue): a
    memoryview is what is left of a partial send; an Entry says so."""
    return item.started if type(item) is Entry else type(item) is memoryview  # type: ignore[union-attr]
