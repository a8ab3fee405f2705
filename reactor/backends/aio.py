"""The asyncio backend: the standard library's event loop, with asyncio Protocols.

The same chat logic on the event loop most Python servers use, and on uvloop
(libuv's loop in C) with ``--loop uvloop`` when it is installed.  asyncio's
transport already does what the select backend does by hand -- try the send
first, buffer the rest, watch for writability only while something is
pending -- so this backend is mostly adaptation.

This module is the loop's side (AsyncioServer): the listeners, the end of
each iteration, the shutdown; a connection's is its transport's
(reactor.backends.aio_transport), which also says how our queue stays in
front of asyncio's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from reactor.backends import EVENT_LOOPS
from reactor.backends.aio_accept import ONE_ACCEPT_PER_ITERATION, BatchAcceptor
from reactor.backends.aio_transport import AsyncioTransport, AsyncioWebTransport
from reactor.backends.base import Listener, Server
from reactor.backends.joins import JoinedFanOuts
from reactor.chat import ChatService
from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.handshakes import HandshakeTurns
from reactor.sockets import ACCEPT_RETRY_DELAY, RESOURCE_ERRNOS
from reactor.transport import SocketLoop, TimerHandle, Transport
from reactor.web.http import Site
from reactor.web.transport import fan_out_framed

log = logging.getLogger("reactor")


class AsyncioServer(Server, JoinedFanOuts):
    def __init__(
        self,
        config: ServerConfig,
        chat: ChatService,
        loop: str = "asyncio",
        web: Site | None = None,
    ) -> None:
        if loop not in EVENT_LOOPS:
            raise ValueError(f"unknown loop {loop!r}; choose from {', '.join(EVENT_LOOPS)}")
        super().__init__(config, chat, web)
        if loop == "uvloop":
            try:
                import uvloop
            except ImportError:
                self.listener.close()
                raise ValueError("--loop uvloop needs the uvloop package"
                                 " (pip install uvloop)") from None
            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._exception)
        # A login storm's connections are accepted, then logged in, together
        # (reactor.backends.aio_accept).
        self._accept_in_batches = loop in ONE_ACCEPT_PER_ITERATION
        self._accept_error_logged = float("-inf")
        # Transports that wrote or queued in this iteration of the loop, and
        # whether the settle that sends their output is scheduled.
        self._pending: list[AsyncioTransport] = []
        self._settle_due = False
        # Fan-outs joined (reactor.backends.joins): a turn is an iteration
        # of the loop, ended by the settle (one read of each ready client).
        JoinedFanOuts.__init__(self)
        # TLS handshake steps in this iteration, and those waiting for a turn.
        self._handshakes: HandshakeTurns[AsyncioTransport] = HandshakeTurns()
        self._handshake_pass_due = False

    # -- TLS handshakes: a few per iteration of the loop, one per address ---------

    def may_handshake(self, host: str) -> bool:
        """A TLS handshake step for a client at ``host`` may run in this
        iteration: a few per iteration, one per address, so that established
        users' lines are served between them (reactor.handshakes)."""
        if not self._handshakes.try_start(host):
            return False
        self._want_handshake_pass()
        return True

    def handshake_later(self, transport: AsyncioTransport) -> None:
        """``transport``'s handshake step waits for a turn in a later iteration."""
        self._handshakes.wait(transport.peer_host, transport)
        self._want_handshake_pass()

    def _want_handshake_pass(self) -> None:
        if not self._handshake_pass_due:
            self._handshake_pass_due = True
            self.loop.call_soon(self._handshake_pass)

    def _handshake_pass(self) -> None:
        """The next iteration: its turns go first to the steps that waited,
        the addresses taking turns; what is left, to those that arrive in it."""
        self._handshake_pass_due = False
        turns = self._handshakes
        turns.end_pass()
        while (transport := turns.next_waiter()) is not None:
            if transport._closed:
                turns.busy.discard(transport.peer_host)  # its turn goes to the next
                continue
            transport.take_handshake_turn()
        if turns or turns.busy:
            self._want_handshake_pass()

    # -- one batch per client per iteration of the loop ---------------------------

    def want_settle(self, transport: AsyncioTransport) -> None:
        """``transport`` has written in this iteration: what follows is queued
        and sent in one batch by one callback for all of them, rather than
        one callback per client (a login storm's notices reach thousands of
        clients per iteration)."""
        transport._burst = True
        if not self._settle_due:
            self._settle_due = True
            self.loop.call_soon(self._settle)
        self._pending.append(transport)

    def _settle(self) -> None:
        if self._joined_to is not None:
            self._end_joins()  # the turn's joined lines go first
        self._settle_due = False
        pending, self._pending = self._pending, []
        for transport in pending:
            transport.end_burst()

    def send_at_once(self, data: bytes, connections: list[Connection],
                     batch: bool = False) -> list[Connection]:
        """A fan-out (see Server.send_at_once): queued in one loop and sent
        by the settle at the end of this iteration, one batch per client for
        everything the iteration queued; at half the Python work of
        ``connection.send``, whose limit checks a queue below the high-water
        mark passes anyway.  Returns the others (TLS, closed, over the mark).
        Web connections take it too, with the line's frame
        (reactor.web.transport.fan_out_framed).  Fan-outs of one turn to the
        same recipients are joined (reactor.backends.joins)."""
        # (One turn number: each turn ends in the settle, with _end_joins.)
        if self._joined_to is not None and self._join(data, connections, 0):
            return []
        rest = fan_out_framed(self._queue_each, data, connections)
        if not rest:  # the next fan-out to the same recipients may join this one
            self._joined_to, self._joined_turn = connections, 0
            if not self._settle_due:
                # Its recipients may all wait for asyncio's buffer to empty,
                # with no settle to come: one ends the join (see _settle).
                self._settle_due = True
                self.loop.call_soon(self._settle)
        return rest

    def _queue_each(self, data: bytes, connections: list[Connection],
                    web: list[Connection] | None) -> list[Connection]:
        """send_at_once's loop (see FanOutLoop in reactor.web.transport),
        and the joined fan-outs' (JoinedFanOuts._join_loop)."""
        size = len(data)
        high_water = self.config.output_high_water
        rest: list[Connection] = []
        for connection in connections:
            transport: AsyncioTransport = connection.transport  # type: ignore[assignment]
            if transport.web is not None and web is not None:
                wire = transport.web
                (web if wire.upgraded and not wire.closing else rest).append(connection)
                continue
            output = transport.output
            if (transport.tls is not None or transport._closed or not connection.is_open
                    or output.size + size > high_water):
                rest.append(connection)
                continue
            output.append(data)
            if not transport._burst and not transport._in_flight:
                self.want_settle(transport)
        return rest

    _join_loop = _queue_each

    def _join_gone(self, transport: Transport) -> bool:
        aio_transport = cast(AsyncioTransport, transport)
        return (aio_transport._closed or aio_transport._closing
                or aio_transport._transport is None or aio_transport._transport.is_closing())

    def _join_leaving(self, transport: Transport, data: bytes) -> None:
        aio_transport = cast(AsyncioTransport, transport)
        aio_transport.output.append(data)
        if not aio_transport._burst and not aio_transport._in_flight:
            self.want_settle(aio_transport)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.loop.call_later(delay, callback)

    # -- other sockets of the server's own (SocketLoop): the cluster's Redis --

    def socket_loop(self) -> SocketLoop:
        return self

    def watch(self, sock: socket.socket, on_ready: Callable[[bool, bool], None],
              write: bool = False) -> None:
        def ready(readable: bool, writable: bool) -> None:
            try:
                on_ready(readable, writable)
            except Exception:
                # A bug there is its own: the clients are served on.
                log.exception("Serving a connection to another server failed")

        fd = sock.fileno()
        self.loop.add_reader(fd, ready, True, False)
        if write:
            self.loop.add_writer(fd, ready, False, True)
        else:
            self.loop.remove_writer(fd)

    def unwatch(self, sock: socket.socket) -> None:
        self.loop.remove_reader(sock.fileno())
        self.loop.remove_writer(sock.fileno())

    def at_end_of_pass(self, callback: Callable[[], None]) -> None:
        # Run after the callbacks already ready in this iteration of the loop;
        # once the loop is closed, nothing runs (the link's close() sends
        # what is left).
        if not self.loop.is_closed():
            self.loop.call_soon(callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop is closed: the server has stopped

    def _serve(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        loop = self.loop
        stop = loop.create_future()

        def woken() -> None:
            self._drain_wakeups()
            self.serve_requests()
            if self._stop_requested and not stop.done():
                stop.set_result(None)

        loop.add_reader(self._wakeup_reader.fileno(), woken)
        servers = [await self._start_accepting(listener) for listener in self.listeners]
        if self._stop_requested and not stop.done():  # (woken while the listeners started)
            stop.set_result(None)
        try:
            await stop
        finally:
            loop.remove_reader(self._wakeup_reader.fileno())
        # Clients already in the listen backlog have connected as far as they
        # can tell: let the loop accept them so that they are told too.
        await self._accept_backlog()
        # The other services' listeners (the admin endpoint) still accept
        # while the chat's users go (see shutdown_services).
        services = self.service_listeners()
        for listener, server in zip(self.listeners, servers, strict=True):
            if listener not in services:
                server.close()
        self.shutdown_services()
        deadline = loop.time() + self.config.close_linger
        while self.chat.connection_count and loop.time() < deadline:
            await asyncio.sleep(0.01)  # a poll, within the linger, of our own state
        for server in servers:
            server.close()
        self.close_services()
        for connection in list(self.chat.connections):
            connection.transport.abort()
        await asyncio.sleep(0)  # let the aborts' connection_lost callbacks run

    async def _start_accepting(self, listener: Listener) -> asyncio.AbstractServer | BatchAcceptor:
        factory = self._transport_factory(listener)
        if self._accept_in_batches:
            return BatchAcceptor(self.loop, listener.sock, factory, self.config.backlog)
        return await self.loop.create_server(
            factory,
            # Else asyncio listens again with its own backlog of 100: a storm
            # of connections overflows it, and their SYNs wait out
            # retransmission timeouts.
            sock=listener.sock, backlog=self.config.backlog,
        )

    def _transport_factory(self, listener: Listener) -> Callable[[], AsyncioTransport]:
        if listener.web is None:
            return lambda: AsyncioTransport(self, listener)
        return lambda: AsyncioWebTransport(self, listener)

    async def _accept_backlog(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    def _exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        protocol = context.get("protocol")
        if isinstance(protocol, AsyncioTransport) and protocol.connection is not None:
            protocol.connection.fail(error or RuntimeError(context.get("message")))
            return
        if isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS:
            # asyncio's accept loop ran out of descriptors and retries by
            # itself -- reporting it once per accept attempt of its batch of
            # up to 100, so say it once per retry period.
            now = loop.time()
            if now - self._accept_error_logged >= ACCEPT_RETRY_DELAY:
                self._accept_error_logged = now
                log.error("accept() failed: %s; pausing new connections for %.0f s",
                          error.strerror, ACCEPT_RETRY_DELAY)
            return
        if isinstance(error, (ConnectionError, socket.timeout)):
            log.debug("asyncio: %s", context.get("message"))
            return
        self.loop_failed(error or RuntimeError(str(context.get("message"))))
        self._wake()
