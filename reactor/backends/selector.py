"""The select backend: one thread, one ``selectors`` loop, a state machine per connection.

Each pass of the loop (after CPython's selector_events and Redis's ae loop):

1. wait for readiness or the next timer;
2. read at most one ``recv`` per ready connection -- bounded work per client
   per pass, so a flooding client cannot starve the others -- and feed it to
   the chat logic;
3. run due timers (login deadlines, close lingers, flood-control retries);
4. write what each connection is owed.  In a short pass (few ready
   connections, e.g. one broadcast) the first output owed to a connection is
   sent at once, as asyncio's ``transport.write`` does, so that no recipient
   waits for the whole fan-out to be queued; everything else is queued and
   written once per connection at the end of the pass with one gathering
   ``sendmsg`` (Redis's handleClientsWithPendingWrites) -- which is what keeps
   a login storm's O(N^2) notices affordable.  Fan-outs to the same
   recipients that follow each other in a pass (one sender's lines read
   together) are joined and queued to each recipient once
   (reactor.backends.joins).  Every send goes through one
   function (``SelectorTransport._send``, or a fast path written out where
   the profiler shows a gain, each named and tested against it).  Only a
   partial write registers the socket for EVENT_WRITE, dropped again once
   its queue is empty;
5. report connections whose sockets closed this pass to the chat logic.

This module is the loop (SelectorServer); a connection's socket is its
transport's (reactor.backends.selector_transport, and on TLS
selector_tls_transport), and readiness comes from a poller
(reactor.backends.selector_pollers).
"""

from __future__ import annotations

import collections
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import cast

from reactor.backends.base import Listener, Server
from reactor.backends.joins import JoinedFanOuts
from reactor.backends.selector_pollers import _READ, _READABLE, _WRITABLE, _WRITE, _Poller
from reactor.backends.selector_tls_transport import SelectorTLSTransport, SelectorWebTLSTransport
from reactor.backends.selector_transport import SelectorTransport, SelectorWebTransport
from reactor.chat import ChatService
from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.handshakes import HandshakeTurns
from reactor.sockets import (
    ACCEPT_RETRY_DELAY,
    RESOURCE_ERRNOS,
    TRANSIENT_ACCEPT_ERRNOS,
    configure_client,
    peer_host,
)
from reactor.timers import Timer, Timers
from reactor.transport import SocketLoop, Transport
from reactor.web.http import Site
from reactor.web.transport import fan_out_framed

log = logging.getLogger("reactor")

# Connections accepted per listener readiness: enough to drain a login storm
# quickly, few enough that established clients still get their turn.
ACCEPTS_PER_PASS = 128
# Passes with at most this many ready connections send output at once.
WRITE_THROUGH_MAX_READY = 4


class _Watched:
    """A socket of the server's own in the loop (see SelectorServer.watch)."""

    __slots__ = ("on_ready", "write")

    def __init__(self, on_ready: Callable[[bool, bool], None]) -> None:
        self.on_ready = on_ready
        self.write = False


_GONE = object()


class SelectorServer(Server, JoinedFanOuts):
    def __init__(self, config: ServerConfig, chat: ChatService, web: Site | None = None) -> None:
        super().__init__(config, chat, web)
        self.selector = _Poller()
        self.timers = Timers()
        self.pending_writes: list[SelectorTransport] = []
        # Counts passes and _settle's rounds; a transport whose _turn is not
        # this one has had no output yet in this turn.
        self.turn = 0
        self.write_through = False
        # The transport whose input is being handled (see write).
        self.reading: SelectorTransport | None = None
        self.dead: list[SelectorTransport] = []
        self._listening = False
        self._accepting = self.listeners  # those _listen watches
        # TLS handshake steps in this pass (reactor.handshakes): a client
        # whose step may not run waits, its socket readable, for a later pass.
        self.handshakes: HandshakeTurns[None] = HandshakeTurns()
        # Callbacks from other threads; deque's append and popleft are atomic.
        self._soon: collections.deque[Callable[[], None]] = collections.deque()
        self._end_of_pass: list[Callable[[], None]] = []
        JoinedFanOuts.__init__(self)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.timers.call_at(time.monotonic() + delay, callback)

    def may_handshake(self, host: str) -> bool:
        """A TLS handshake step for a client at ``host`` may run in this
        pass: a few per pass, and one per address, so that established
        users' lines are served between them."""
        return self.handshakes.try_start(host)

    def more_input_waits(self) -> bool:
        """More lines of the connection being read wait in this pass: output
        that can share a send with what they cause waits for the end of the
        pass (see SelectorTransport.write)."""
        reading = self.reading
        return reading is not None and bool(reading.connection.pending_lines)  # type: ignore[union-attr]

    def send_at_once(self, data: bytes, connections: list[Connection],
                     batch: bool = False) -> list[Connection]:
        """A fan-out's first sends (see Server.send_at_once): ``write``'s two
        branches for many connections in one loop, the checks of the pass
        made once for all of them.

        Sent at once (SelectorTransport.fan_out_first) only where ``write``
        would send at once -- in a short pass, with nothing queued for the
        connection, its first output this turn, and no more lines of the
        connection being read waiting in this pass; else queued
        (SelectorTransport.enqueue_each) while below the high-water mark, which
        is all ``connection.send`` would check.  The others are returned
        (those over the mark or closed).  Web connections go through the
        same loops with the line's frame (fan_out_framed).
        """
        high_water = self.config.output_high_water
        if len(data) > high_water:
            return connections  # connection.send has limits to check
        if self._joined_to is not None and self._join(data, connections, self.turn):
            return []
        recipients = connections
        write_through = not batch and self.write_through and not self.more_input_waits()
        turn = self.turn

        def loop(data: bytes, connections: list[Connection],
                 web: list[Connection] | None) -> list[Connection]:
            if write_through:
                connections = SelectorTransport.fan_out_first(data, connections, turn, web)
            # Batching this pass (see write), or output waits: queued, for one
            # send per connection at the end of the pass.
            return SelectorTransport.enqueue_each(data, connections, turn,
                                                  high_water - len(data), web)

        rest = fan_out_framed(loop, data, connections)
        if not rest:  # the next fan-out to the same recipients may join this one
            self._joined_to, self._joined_turn = recipients, turn
        return rest

    # -- joined fan-outs (reactor.backends.joins): the turn is the pass --

    def _join_loop(self, data: bytes, connections: list[Connection],
                   web: list[Connection] | None) -> list[Connection]:
        return SelectorTransport.enqueue_each(data, connections, self.turn,
                                              self.config.output_high_water - len(data), web)

    def _join_gone(self, transport: Transport) -> bool:
        selector_transport = cast(SelectorTransport, transport)
        return selector_transport.socket_closed or selector_transport._closing

    def _join_leaving(self, transport: Transport, data: bytes) -> None:
        cast(SelectorTransport, transport)._enqueue(data, None)

    # -- other sockets of the server's own (SocketLoop): the cluster's Redis --

    def socket_loop(self) -> SocketLoop:
        return self

    def watch(self, sock: socket.socket, on_ready: Callable[[bool, bool], None],
              write: bool = False) -> None:
        watched = self.selector.data.get(sock.fileno())
        if not isinstance(watched, _Watched):
            watched = _Watched(on_ready)
            self.selector.register(sock, _READ | _WRITE if write else _READ, watched)
        elif watched.write != write:
            self.selector.modify(sock, _READ | _WRITE if write else _READ, watched)
        watched.write = write

    def unwatch(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)

    def at_end_of_pass(self, callback: Callable[[], None]) -> None:
        self._end_of_pass.append(callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        # Queued before the wakeup byte is written, so the pass that the byte
        # wakes finds it.
        self._soon.append(callback)
        self._wake()

    # -- the loop -------------------------------------------------------------

    def _serve(self) -> None:
        selector = self.selector
        selector.register(self._wakeup_reader, _READ, None)
        self._listen(True)
        shutdown_deadline: float | None = None
        failures = 0
        try:
            while True:
                try:
                    if self._stop_requested and shutdown_deadline is None:
                        shutdown_deadline = time.monotonic() + self.config.close_linger
                        # Clients already in the listen backlog have connected as
                        # far as they can tell: tell them too, rather than reset them.
                        for listener in self.listeners:
                            self._accept_batch(listener, self.config.backlog)
                        self._listen(False)
                        self._accepting = self.service_listeners()  # (see shutdown_services)
                        self._listen(True)
                        self.shutdown_services()
                    if shutdown_deadline is not None and (
                        self.chat.connection_count == 0 or time.monotonic() >= shutdown_deadline
                    ):
                        self.close_services()
                        break
                    self._pass(shutdown_deadline)
                except Exception as error:
                    failures += 1
                    self.loop_failed(error)
                    if failures > 1 and shutdown_deadline is not None:
                        break  # failing again while shutting down: stop now
        finally:
            self._settle()  # what is owed goes out if the kernel takes it
            for connection in list(self.chat.connections):
                transport = connection.transport
                if isinstance(transport, SelectorTransport) and not transport.socket_closed:
                    transport.fail_handoffs()
                    transport._close_socket()  # the server is gone: no linger
            self._settle()
            selector.close()

    def _pass(self, shutdown_deadline: float | None) -> None:
        # Output queued outside a pass (by shutdown) must not wait for select().
        if self._end_of_pass:
            self._run_end_of_pass()
        if self.pending_writes or self.dead or self.joined is not None:
            self._settle()
        self.turn += 1
        now = time.monotonic()
        timers = self.timers
        heap = timers.heap
        timeout: float | None
        if heap and heap[0][2].callback is not None:
            timeout = max(0.0, heap[0][0] - now)  # Timers.timeout, without the call
        else:
            timeout = timers.timeout(now) if heap else None
        if shutdown_deadline is not None:
            remaining = max(0.0, shutdown_deadline - now)
            timeout = remaining if timeout is None else min(timeout, remaining)
        if timeout is None:
            timeout = -1.0
        elif timeout > 0:
            # Rounded up to the millisecond, as selectors does, so that a
            # timer is not polled for in a busy loop just before it is due.
            timeout = math.ceil(timeout * 1e3) * 1e-3
        poller = self.selector
        data = poller.data
        ready = poller.poll(timeout, len(data) or 1)
        # Few ready connections: a short pass, where latency is won by sending
        # at once.  Many: batch, one send per connection per pass, as Redis does.
        self.write_through = len(ready) <= WRITE_THROUGH_MAX_READY
        if self.handshakes.busy:
            self.handshakes.end_pass()
        for fd, mask in ready:
            # Unregistered earlier in this pass (closed): skipped.
            # What was registered for fd: a transport, a listener, another
            # server's socket (_Watched), None for the wakeup pipe; _GONE is
            # checked at once.
            transport: SelectorTransport | Listener | _Watched | None = (
                data.get(fd, _GONE))  # type: ignore[assignment]
            if transport is _GONE:
                continue
            if transport is None:
                self._drain_wakeups()
                self.serve_requests()
            elif isinstance(transport, Listener):
                self._accept_batch(transport)
            elif isinstance(transport, _Watched):
                try:
                    transport.on_ready(bool(mask & _READABLE), bool(mask & _WRITABLE))
                except Exception:
                    # A bug there is its own: the clients are served on.
                    log.exception("Serving a connection to another server failed")
            else:
                try:
                    # A transport closed earlier in this pass may still be listed.
                    if mask & _READABLE and not transport.socket_closed:
                        transport.on_readable()
                    if mask & _WRITABLE and not transport.socket_closed:
                        transport.flush()
                except Exception as error:
                    self._contain(transport, error)
        now = time.monotonic()
        heap = timers.heap
        if heap and (heap[0][0] <= now or timers.due(now)):
            for callback in timers.pop_due(now):
                callback()
        soon = self._soon
        if soon:
            count = len(soon)  # not those queued meanwhile: they woke us again
            # Handed over together (a pipeline's replies and an inbox batch,
            # say): their fan-outs share one send per recipient.
            with self.chat.together(count > 1):
                for _ in range(count):
                    soon.popleft()()
        if self._end_of_pass:
            self._run_end_of_pass()
        self._settle()

    def _run_end_of_pass(self) -> None:
        end_of_pass = self._end_of_pass
        while end_of_pass:  # (what they run may queue more)
            end_of_pass.pop(0)()

    def _settle(self) -> None:
        """Write everything owed, then report the closed; repeat while either
        produces more of the other (an answer's next line, offline notices)."""
        while self.pending_writes or self.dead or self.joined is not None:
            if self.joined is not None:
                self._queue_joined()  # before the turn ends
            pending, self.pending_writes = self.pending_writes, []
            self.turn += 1
            for transport in pending:
                transport._in_pending = False
                if transport._events & _WRITE:
                    continue  # the kernel is full: EVENT_WRITE will flush it
                try:
                    if transport.tls is None and not transport._closing:
                        # The common case, without flush()'s other cases;
                        # nothing to do after a write-through the kernel took.
                        if transport.output.size:
                            transport._flush_plain()
                    elif transport.output.size or transport._closing or transport.wire:
                        # TLS: plaintext queued (the common case, tested
                        # first), or ciphertext of the handshake or a partial
                        # send.  A closing transport needs flush() to shut down.
                        transport.flush()
                except Exception as error:
                    self._contain(transport, error)
            dead, self.dead = self.dead, []
            for transport in dead:
                if transport.connection is not None:
                    transport.connection.connection_lost()
        self._joined_to = None  # (its connections are not kept past the turn)

    @staticmethod
    def _contain(transport: SelectorTransport, error: Exception) -> None:
        """A failure while serving one connection ends that connection only."""
        if transport.connection is not None:
            transport.connection.fail(error)
        if not transport.socket_closed:
            transport.abort()

    # -- accepting ------------------------------------------------------------

    def _listen(self, on: bool) -> None:
        if on == self._listening:
            return
        self._listening = on
        for listener in self._accepting:
            if on:
                self.selector.register(listener.sock, _READ, listener)
            else:
                self.selector.unregister(listener.sock)

    def _resume_accepting(self) -> None:
        if not self._stop_requested:
            self._listen(True)

    def _accept_batch(self, listener: Listener, limit: int = ACCEPTS_PER_PASS) -> None:
        for _ in range(limit):
            try:
                sock, address = listener.sock.accept()
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
                    self.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)
                    return
                raise
            self._admit(sock, peer_host(address), listener)

    def _admit(self, sock: socket.socket, host: str, listener: Listener) -> None:
        sock.setblocking(False)
        try:
            configure_client(sock, self.config)
        except OSError:
            sock.close()  # the peer is already gone
            return
        transport: SelectorTransport
        if listener.web is not None:
            web_class = SelectorWebTLSTransport if listener.tls else SelectorWebTransport
            web_transport = web_class(sock, host, self)
            web_transport.start_web(listener.web, self.config.max_line,
                                    self.config.output_hard_limit)
            transport = web_transport
        elif listener.tls:
            transport = SelectorTLSTransport(sock, host, self)
        else:
            transport = SelectorTransport(sock, host, self)
        if listener.tls:
            transport.start_tls(self.tls_context(), self.tls_handshakes())
        self.selector.register(sock, _READ, transport)
        listener.service.connection_made(transport)
