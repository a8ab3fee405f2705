"""Who may run a TLS handshake step now: a few at a time, one per address.

A handshake step may sign with the server's key, far more work than a
chat line, and a peer can make one for the price of replaying a
ClientHello.  Left unmetered, a few hundred such connections hold up every
established user (on a loop, all their steps come before the users' lines;
with a thread each, they all compete for the cores and the GIL).  So every
backend runs at most ``HANDSHAKES_AT_ONCE`` steps at a time (per pass of a
loop, or at once on threads) and at most one per address; the others wait
in line, the addresses taking turns, so that a flood from one address is
served one step at a time and a client from another address gets the next
free turn.

:class:`HandshakeTurns` keeps the count and the lines; it does not wait or
lock: the backend calls it on its chat thread, or under a lock of its own.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

# Two steps at a time: as many as a small machine has cores, and on a loop
# two signatures per pass, between which every user's line is served.
HANDSHAKES_AT_ONCE = 2

Waiter = TypeVar("Waiter")


class HandshakeTurns(Generic[Waiter]):
    """At most ``limit`` handshake steps running, one per address; the rest
    wait in a line per address, and the addresses take turns."""

    __slots__ = ("busy", "limit", "_lines")

    def __init__(self, limit: int = HANDSHAKES_AT_ONCE) -> None:
        self.limit = limit
        self.busy: set[str] = set()  # addresses with a step running
        # Per address, its waiters in arrival order; the dict's order is the
        # order of the addresses' turns (one served goes to the back).
        self._lines: dict[str, deque[Waiter]] = {}

    def __bool__(self) -> bool:
        """Someone waits for a turn."""
        return bool(self._lines)

    def try_start(self, host: str) -> bool:
        """Start a step for ``host`` now if it may run; True if started."""
        busy = self.busy
        if len(busy) >= self.limit or host in busy:
            return False
        busy.add(host)
        return True

    def wait(self, host: str, waiter: Waiter) -> None:
        """Put ``waiter`` in ``host``'s line (see :meth:`next_waiter`)."""
        line = self._lines.get(host)
        if line is None:
            line = self._lines[host] = deque()
        line.append(waiter)

    def next_waiter(self) -> Waiter | None:
        """The first waiter of the next address in turn with no step
        running, if a step may start: it is started (its address busy)."""
        busy = self.busy
        if len(busy) >= self.limit:
            return None
        lines = self._lines
        for host in lines:  # at most limit + 1 looked at: the rest are busy
            if host not in busy:
                break
        else:
            return None
        line = lines.pop(host)
        waiter = line.popleft()
        if line:
            lines[host] = line  # to the back of the turns
        busy.add(host)
        return waiter

    def finish(self, host: str) -> Waiter | None:
        """``host``'s step is done: the next waiter to start, if any."""
        self.busy.discard(host)
        return self.next_waiter()

    def end_pass(self) -> None:
        """A loop's pass is over: its steps are done, the next pass may run as many."""
        self.busy.clear()
