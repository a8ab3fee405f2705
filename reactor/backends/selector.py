"""The select backend: one thread, one ``selectors`` loop, a state machine per connection.

Each pass of the loop (after CPython's selector_events and Redis's ae loop):

1. wait for readiness or the next timer;
2. read at most one ``recv`` per ready connection -- bounded work per client
   per pass, so a flooding client cannot starve the others -- and feed it to
   the chat logic;
3. run due timers (login timeouts, close lingers, accept retries);
4. write what each connection is owed.  In a short pass (few ready
   connections, e.g. one broadcast) the first output owed to a connection is
   sent at once, as asyncio's ``transport.write`` does, so that no recipient
   waits for the whole fan-out to be queued; everything else is queued and
   written once per connection at the end of the pass, coalesced into one
   ``send`` (Redis's handleClientsWithPendingWrites) -- which is what keeps a
   login storm's O(N^2) notices affordable.  Only a partial write registers
   the socket for EVENT_WRITE, dropped again once its queue is empty;
5. report connections that died this pass to the chat logic.  Deaths are
   deferred to here so that a fan-out never sees the whiteboard change under
   it.

A connection's transport states: open (reading) -> closing (draining its
queue, then a write shutdown, then discarding input until the peer's EOF or a
linger deadline) -> closed.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time

from reactor.backends.base import Server
from reactor.config import ServerConfig
from reactor.session import Phase, Session
from reactor.sockets import (
    ACCEPT_RETRY_DELAY,
    RESOURCE_ERRNOS,
    TRANSIENT_ACCEPT_ERRNOS,
    configure_client,
    peer_host,
)
from reactor.timers import Timers

log = logging.getLogger("reactor")

# One recv per ready connection per pass, of at most this much: the bound on
# the work one client can cause per pass.  The cost is per line, not per
# byte, so it must be small: 16 KiB of 6-byte commands is ~2,700 lines, about
# 20 ms of Python; the 256 KiB that asyncio reads held everybody else for
# ~0.2 s per flooding client per pass (Redis reads 16 KiB too).
READ_SIZE = 16 * 1024
# Connections accepted per listener readiness: enough to drain a login storm
# quickly, few enough that established clients still get their turn.
ACCEPTS_PER_PASS = 128
# Passes with at most this many ready connections send output at once.
WRITE_THROUGH_MAX_READY = 4


class SelectorSession(Session):
    def __init__(self, sock: socket.socket, host: str, server: SelectorServer) -> None:
        config = server.config
        super().__init__(host, config.max_line, config.output_limit)
        self.sock = sock
        self.server = server
        # Output owed to the client: a list of bytes so that a fan-out's one
        # shared bytes object is never copied until it must be joined.
        self._chunks: list[bytes] = []
        self._queued = 0
        self._in_pending = False
        self._write_registered = False
        self._eof_received = False
        self._write_shut = False
        self.socket_closed = False

    # -- Session transport operations ---------------------------------------

    def _write(self, data: bytes) -> None:
        if not self._in_pending:
            # The first output owed to this connection in this pass.
            self._in_pending = True
            self.server.pending_writes.append(self)
            if self.server.write_through and not self._queued:
                # asyncio's "try to send now": in a short pass the recipients
                # of a fan-out should not wait for the whole fan-out to be
                # queued.  Only what the kernel refuses is kept.
                sent = self._send_now(data)
                if sent is None or sent == len(data):
                    return
                data = data[sent:]
        # Anything more this pass is coalesced into one send by _settle().
        self._chunks.append(data)
        self._queued += len(data)

    def _begin_close(self) -> None:
        # Output still queued is written by the end of this pass; the write
        # shutdown follows from flush() once the queue is empty.
        if not self._in_pending:
            self._in_pending = True
            self.server.pending_writes.append(self)
        self.server.timers.call_at(
            time.monotonic() + self.server.config.close_linger, self._linger_expired
        )

    def _abort(self) -> None:
        self._chunks.clear()
        self._queued = 0
        self._close_socket()

    # -- driven by the loop ---------------------------------------------------

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # reset, keepalive timeout, ...
            self.abort(f"connection error: {error.strerror or error}")
            return
        if not data:
            self._eof_received = True
            if self.phase is Phase.CLOSING:
                if not self._queued:
                    self._close_socket()
            else:
                # The peer is done sending; answer what it sent, then close.
                self.close("connection closed by peer")
            return
        if self.phase is Phase.CLOSING:
            return  # input after bye, or while draining, is discarded
        self.server.chat.data_received(self, data)

    def on_writable(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Write what is queued; register for EVENT_WRITE only while some remains."""
        if self.socket_closed:
            return
        if self._queued:
            chunks = self._chunks
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            sent = self._send_now(data)
            if sent is None:
                return
            if sent == len(data):
                chunks.clear()
                self._queued = 0
            else:
                self._chunks = [data[sent:]]
                self._queued = len(data) - sent
        self._set_write_interest(self._queued > 0)
        if self.phase is Phase.CLOSING and not self._queued:
            self._shut_write()

    def _send_now(self, data: bytes) -> int | None:
        """One non-blocking send: the bytes the kernel took, or None if the
        connection failed (it is then aborted)."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            self.abort(f"connection error: {error.strerror or error}")
            return None

    def _shut_write(self) -> None:
        if self._write_shut:
            return
        self._write_shut = True
        try:
            # FIN after the queued bytes; keep reading so that the client's
            # unread input does not turn our close into a reset that could
            # destroy the last lines we sent (e.g. its own offline notice).
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_socket()
            return
        if self._eof_received:
            self._close_socket()

    def _linger_expired(self) -> None:
        if self.phase is Phase.CLOSING:
            self._close_socket()

    def _set_write_interest(self, wanted: bool) -> None:
        if wanted == self._write_registered:
            return
        self._write_registered = wanted
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
        self.server.selector.modify(self.sock, events, self)

    def _close_socket(self) -> None:
        if self.socket_closed:
            return
        self.socket_closed = True
        self.phase = Phase.CLOSING
        try:
            self.server.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self.server.dead.append(self)


class SelectorServer(Server):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.selector = selectors.DefaultSelector()
        self.timers = Timers()
        self.pending_writes: list[SelectorSession] = []
        self.write_through = False
        self.dead: list[SelectorSession] = []
        self._listening = False

    # -- the loop -------------------------------------------------------------

    def _serve(self) -> None:
        selector = self.selector
        selector.register(self._wakeup_reader, selectors.EVENT_READ, None)
        self._listen(True)
        shutdown_deadline: float | None = None
        try:
            while True:
                if self._stop_requested and shutdown_deadline is None:
                    shutdown_deadline = time.monotonic() + self.config.close_linger
                    # Clients already in the listen backlog have connected as
                    # far as they can tell: tell them too, rather than reset them.
                    self._accept_batch(self.config.backlog)
                    self._listen(False)
                    self.chat.shutdown()
                if shutdown_deadline is not None and (
                    self.chat.connection_count == 0 or time.monotonic() >= shutdown_deadline
                ):
                    break
                self._pass(shutdown_deadline)
        finally:
            self._settle()  # what is owed goes out if the kernel takes it
            for key in list(selector.get_map().values()):
                if isinstance(key.data, SelectorSession):
                    key.data.abort("server stopped")
            self._settle()
            selector.close()

    def _pass(self, shutdown_deadline: float | None) -> None:
        # Output queued outside a pass (by shutdown) must not wait for select().
        self._settle()
        now = time.monotonic()
        timeout = self.timers.timeout(now)
        if shutdown_deadline is not None:
            remaining = max(0.0, shutdown_deadline - now)
            timeout = remaining if timeout is None else min(timeout, remaining)
        ready = self.selector.select(timeout)
        # Few ready connections: a short pass, where latency is won by sending
        # at once.  Many: batch, one send per connection per pass, as Redis does
        # -- that is what keeps a login storm's O(N^2) notices affordable.
        self.write_through = len(ready) <= WRITE_THROUGH_MAX_READY
        for key, mask in ready:
            session = key.data
            if session is None:
                self._drain_wakeups()
            elif session is self:
                self._accept_batch()
            else:
                # A session closed earlier in this pass may still be listed.
                if mask & selectors.EVENT_READ and not session.socket_closed:
                    session.on_readable()
                if mask & selectors.EVENT_WRITE and not session.socket_closed:
                    session.on_writable()
        for callback in self.timers.pop_due(time.monotonic()):
            callback()
        self._settle()

    def _settle(self) -> None:
        """Write everything owed, then report the dead; repeat while either
        produces more of the other (a death's offline notices, a failed write)."""
        while self.pending_writes or self.dead:
            pending, self.pending_writes = self.pending_writes, []
            for session in pending:
                session._in_pending = False
                # Nothing to do for the common case, a write-through that the
                # kernel took whole; a closing session needs flush() to shut down.
                if not session._write_registered and (session._queued or not session.is_open):
                    session.flush()
            dead, self.dead = self.dead, []
            for session in dead:
                self.chat.connection_lost(session)

    def _drain_wakeups(self) -> None:
        try:
            while self._wakeup_reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- accepting ------------------------------------------------------------

    def _listen(self, on: bool) -> None:
        if on == self._listening:
            return
        self._listening = on
        if on:
            self.selector.register(self.listener, selectors.EVENT_READ, self)
        else:
            self.selector.unregister(self.listener)

    def _resume_accepting(self) -> None:
        if not self._stop_requested:
            self._listen(True)

    def _accept_batch(self, limit: int = ACCEPTS_PER_PASS) -> None:
        for _ in range(limit):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in TRANSIENT_ACCEPT_ERRNOS:
                    continue
                if error.errno in RESOURCE_ERRNOS:
                    log.error(
                        "accept() failed: %s; pausing new connections for %.0f s",
                        error.strerror, ACCEPT_RETRY_DELAY,
                    )
                    self._listen(False)
                    self.timers.call_at(
                        time.monotonic() + ACCEPT_RETRY_DELAY, self._resume_accepting
                    )
                    return
                raise
            self._admit(sock, peer_host(address))

    def _admit(self, sock: socket.socket, host: str) -> None:
        sock.setblocking(False)
        try:
            configure_client(sock, self.config)
        except OSError:
            sock.close()  # the peer is already gone
            return
        session = SelectorSession(sock, host, self)
        self.selector.register(sock, selectors.EVENT_READ, session)
        if self.chat.connection_made(session):
            deadline = time.monotonic() + self.config.login_timeout
            self.timers.call_at(deadline, lambda: self.chat.login_timed_out(session))
