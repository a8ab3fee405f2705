"""Accepting in batches, on an event loop whose own accept takes one connection per turn.

asyncio's loop accepts up to the listen backlog each time a listener is
ready; libuv's (uvloop) accepts one connection per iteration of the loop,
so that other listeners get their turn.  In a login storm that one matters:
each login is then read, and announced, in an iteration of its own, and the
iteration's settle (reactor.backends.aio) writes to every user online once
per login instead of once for all the logins read together.

So on such a loop the server accepts by itself, as asyncio's loop does, and
hands each socket to the loop (``connect_accepted_socket``), whose
transport then serves it as one from ``create_server`` would.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from reactor.sockets import ACCEPT_RETRY_DELAY, RESOURCE_ERRNOS, TRANSIENT_ACCEPT_ERRNOS

log = logging.getLogger("reactor")

#: The loops of reactor.backends.EVENT_LOOPS that accept one connection per
#: iteration (libuv's rule); on the others ``create_server`` accepts in batches.
ONE_ACCEPT_PER_ITERATION = frozenset({"uvloop"})


class BatchAcceptor:
    """Accepts up to ``batch`` connections from ``sock`` each time it is
    ready and hands each, with a protocol from ``protocol_factory``, to the
    loop; what ``create_server`` gives on the other loops (``close()`` stops
    it and closes the listening socket)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol], batch: int) -> None:
        self._loop = loop
        self._sock = sock
        self._protocol_factory = protocol_factory
        self._batch = batch
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        # The admissions under way: the loop keeps only weak references to tasks.
        self._admitting: set[asyncio.Task[None]] = set()
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self._batch):
            try:
                sock, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in TRANSIENT_ACCEPT_ERRNOS:
                    continue  # that one died in the backlog
                if error.errno in RESOURCE_ERRNOS:
                    log.error("accept() failed: %s; pausing new connections for %.0f s",
                              error.strerror, ACCEPT_RETRY_DELAY)
                    self._loop.remove_reader(self._sock.fileno())
                    self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                    return
                raise
            sock.setblocking(False)
            task = self._loop.create_task(self._admit(sock))
            self._admitting.add(task)
            task.add_done_callback(self._admitting.discard)

    async def _admit(self, sock: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, sock)
        except Exception:
            # Closed before it was made (its protocol was told, if it was):
            # nothing to serve, and not the loop's failure.
            sock.close()

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
