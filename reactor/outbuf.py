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
    """One queued write: its bytes still to send and who waits for it."""

    __slots__ = ("data", "on_handoff", "started")

    def __init__(self, data: bytes, on_handoff: Handoff | None) -> None:
        self.data: bytes | memoryview = data
        self.on_handoff = on_handoff
        # True once some of it went out: it can no longer be withdrawn.
        self.started = False


class OutputBuffer:
    __slots__ = ("_entries", "size")

    def __init__(self) -> None:
        self._entries: deque[Entry] = deque()
        self.size = 0  # bytes queued and not yet taken by the kernel

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes | memoryview, on_handoff: Handoff | None = None) -> Entry:
        entry = Entry(data, on_handoff)  # type: ignore[arg-type]
        self._entries.append(entry)
        self.size += len(data)
        return entry

    def buffers(self) -> list[bytes | memoryview]:
        """The head of the queue, for one ``sendmsg`` call."""
        entries = self._entries
        if len(entries) == 1:
            return [entries[0].data]
        return [entries[i].data for i in range(min(len(entries), MAX_BUFFERS_PER_SEND))]

    def consume(self, sent: int) -> list[Handoff]:
        """Drop ``sent`` bytes from the head; return the callbacks now due (with True)."""
        due: list[Handoff] = []
        self.size -= sent
        entries = self._entries
        while sent:
            head = entries[0]
            length = len(head.data)
            if sent < length:
                head.data = memoryview(head.data)[sent:]
                head.started = True
                break
            sent -= length
            entries.popleft()
            if head.on_handoff is not None:
                due.append(head.on_handoff)
        return due

    def mark_started(self, count: int) -> None:
        """The first ``count`` entries are being sent (by another thread):
        none of them may be withdrawn any more."""
        entries = self._entries
        for i in range(min(count, len(entries))):
            entries[i].started = True

    def withdraw(self, entry: Entry) -> bool:
        """Remove ``entry`` if none of it has been sent; True if it was removed."""
        if entry.started:
            return False
        try:
            self._entries.remove(entry)
        except ValueError:
            return False  # already sent (or discarded)
        self.size -= len(entry.data)
        return True

    def clear(self) -> list[Handoff]:
        """Discard everything; return the callbacks that will now never run with True."""
        waiting = [e.on_handoff for e in self._entries if e.on_handoff is not None]
        self._entries.clear()
        self.size = 0
        return waiting
