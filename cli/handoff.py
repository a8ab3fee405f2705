"""The piped client's hand-off between its threads, bounded in memory.

Goals:

* Memory stays bounded whatever the server sends and whether or not stdout
  is read.  The socket reader waits while the server lines not yet written
  out pass :data:`BUDGET` bytes; then the socket is not read, and TCP slows
  the server down (backpressure), as a pipe slows ``yes`` down.  The stdin
  reader waits the same way, and commands waiting to be sent have a budget
  too.
* The main thread never blocks on the socket.  If it waited in ``sendall``
  for a server that waits for us to read (the server stops reading a client
  whose output backs up), neither side would move: so a sender thread sends,
  and the main thread takes no new input line while the commands not yet
  sent are over budget -- it keeps writing out the server's lines instead.
* One consumer: the main thread takes every item here, so the order in which
  things are handled is decided in one place, and server lines are taken
  before input lines (they free memory, and they answer earlier commands).

Each budget may be passed by one hand-off (a ``recv``'s worth of lines, one
command), so the bound is the budget plus one item, plus what the line
buffers themselves hold (at most one line each); the sender holds at most
one more budget's worth while it sends.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

# Bytes of server lines (or of stdin) waiting for the main thread, and of
# commands waiting to be sent, before the thread that produces them waits.
BUDGET = 256 * 1024

Item = TypeVar("Item")


class Closed(Exception):
    """The hand-off was closed: the session is over."""


class Handoff(Generic[Item]):
    """Items from the socket reader and the stdin reader for the main thread,
    and bytes from the main thread for the sender thread."""

    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self._changed = threading.Condition()
        self._server: deque[Item] = deque()
        self._server_bytes = 0
        self._server_sizes: deque[int] = deque()
        self._input: deque[Item] = deque()
        self._input_bytes = 0
        self._input_sizes: deque[int] = deque()
        self._outgoing = bytearray()
        self._closed = False

    # -- producers: the socket reader and the stdin reader (they may wait) -----

    def put_server(self, items: Iterable[Item], size: int) -> None:
        """Queue what one read from the server brought; wait while over budget."""
        self._put(items, size, from_server=True)

    def put_input(self, items: Iterable[Item], size: int) -> None:
        """Queue what one read from stdin brought; wait while over budget."""
        self._put(items, size, from_server=False)

    def _put(self, items: Iterable[Item], size: int, from_server: bool) -> None:
        batch = list(items)
        with self._changed:
            while not self._closed and (
                    self._server_bytes if from_server else self._input_bytes) >= self.budget:
                self._changed.wait()
            if self._closed or not batch:
                return
            # The batch's bytes are charged to its last item: freed once all is taken.
            sizes = [0] * (len(batch) - 1) + [size]
            if from_server:
                self._server.extend(batch)
                self._server_sizes.extend(sizes)
                self._server_bytes += size
            else:
                self._input.extend(batch)
                self._input_sizes.extend(sizes)
                self._input_bytes += size
            self._changed.notify_all()

    # -- the main thread: the only consumer ------------------------------------

    def take(self, timeout: float | None = None, with_input: bool = True) -> Item | None:
        """The next item, server lines first; input only while the commands
        not yet sent are under budget (and ``with_input``).  None when
        nothing came within ``timeout`` (0: do not wait)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._ready(with_input), timeout):
                return None
            if self._server:
                self._server_bytes -= self._server_sizes.popleft()
                item = self._server.popleft()
            else:
                self._input_bytes -= self._input_sizes.popleft()
                item = self._input.popleft()
            self._changed.notify_all()
            return item

    def _ready(self, with_input: bool) -> bool:
        return bool(self._server) or (
            with_input and bool(self._input) and len(self._outgoing) < self.budget)

    def send(self, data: bytes) -> None:
        """Queue bytes for the sender thread; never waits."""
        with self._changed:
            self._outgoing += data
            self._changed.notify_all()

    # -- the sender thread -------------------------------------------------------

    def outgoing(self) -> bytes:
        """Wait for bytes to send and take them all; raises :class:`Closed` at the end."""
        with self._changed:
            self._changed.wait_for(lambda: self._outgoing or self._closed)
            if not self._outgoing:
                raise Closed
            # Taking it all makes room at once: what the sender holds while it
            # waits in sendall is the second budget's worth the bound allows.
            data = bytes(self._outgoing)
            self._outgoing.clear()
            self._changed.notify_all()
            return data

    def close(self) -> None:
        """End the session: every waiting thread returns, later items are dropped."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
