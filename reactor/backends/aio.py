"""The asyncio backend: the standard library's event loop, with asyncio Protocols.

The same chat logic on the event loop most Python servers use, and on uvloop
(libuv's loop in C) with ``--loop uvloop`` when it is installed.  asyncio's
transport already does what the select backend does by hand -- try the send
first, buffer the rest, watch for writability only while something is
pending -- so this file is mostly adaptation.

One thing asyncio's transport cannot do is say when the kernel has taken a
given message, nor give a message back.  So the connection's own
:class:`~reactor.outbuf.OutputBuffer` stays in front of it: a batch is handed
to asyncio only when asyncio's buffer is empty, and asyncio's flow-control
callback with a low-water mark of 0 (``resume_writing``) says when that batch
has gone.  Everything still in our queue can be withdrawn, as in the other
backends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import Any, cast

from reactor.backends import EVENT_LOOPS
from reactor.backends.base import Listener, Server
from reactor.backends.joins import JoinedFanOuts
from reactor.chat import ChatService
from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.handshakes import HandshakeTurns
from reactor.outbuf import Entry, Handoff
from reactor.sockets import (
    ACCEPT_RETRY_DELAY,
    RESOURCE_ERRNOS,
    configure_client,
    discard_input,
    peer_host,
)
from reactor.tls import TLSFailure, log_failure
from reactor.transport import SocketLoop, TimerHandle, Transport
from reactor.web.http import Site
from reactor.web.transport import WebTransport, fan_out_framed

log = logging.getLogger("reactor")

# At most this much is read per readiness, as in the other backends: the
# bound on the work one flooding client causes per turn.  (asyncio's own
# transport reads up to 256 KiB, so we hand it the buffer: BufferedProtocol.)
READ_SIZE = 16 * 1024


class AsyncioTransport(Transport, asyncio.BufferedProtocol):
    def __init__(self, server: AsyncioServer, listener: Listener) -> None:
        Transport.__init__(self, "unknown")
        self.server = server
        self._listener = listener
        self._speaks_tls = listener.tls
        self._transport: asyncio.Transport | None = None
        self.sock: Any = None  # asyncio's socket-like view, for options
        self._in_flight = 0  # bytes handed to asyncio, not yet known to be sent
        # Wrote through, or queued, in this iteration of the loop: on the
        # server's pending list, whose settle sends the rest in one batch.
        self._burst = False
        self._closing = False
        self._closed = False
        self._eof_received = False
        self._linger: TimerHandle | None = None
        self._read_buffer = memoryview(bytearray(READ_SIZE))
        # A TLS handshake step's input, waiting for its turn (reading paused).
        self._held: bytearray | None = None
        self._room: select.poll | None = None  # see _has_room
        self._room_fd: int | None = None  # see _watch_room

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: uvloop's transports do not derive from
        # asyncio.Transport, and asserting it killed every uvloop connection.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.peer_host = peer_host(transport.get_extra_info("peername"))
        sock = self.sock = transport.get_extra_info("socket")
        try:
            if sock is not None:
                configure_client(sock, self.server.config)  # type: ignore[arg-type]
        except OSError:
            pass  # the peer is already gone; connection_lost follows
        # pause_writing() as soon as anything is buffered, resume_writing()
        # once all of it is sent: our handoff signal.
        transport.set_write_buffer_limits(high=0, low=0)
        if self._speaks_tls:
            # Our own TLS over the plain transport (reactor.tls), not
            # asyncio's: its get_write_buffer_size() leaves out the
            # ciphertext still in the socket transport, so "empty" would not
            # mean "taken by the kernel", and the handshake is then part of
            # the login, under the login timeout, as in the other backends.
            self.start_tls(self.server.tls_context(), self.server.tls_handshakes())
        self._listener.service.connection_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.connection is None:
            return
        if self._closing and (self.tls is None or self.tls.handshake_done):
            return  # input after bye, or while draining, is discarded
        if self.tls is not None:
            # (While closing: only to complete the handshake, so that a notice
            # such as "server full" can be sent; the chat ignores the input.)
            self._received_tls(data)
        elif self.web is not None:
            self.web_received(data)
        else:
            self.connection.data_received(data)

    def _received_tls(self, data: bytes) -> None:
        tls = self.tls
        assert tls is not None
        if not tls.handshake_done:
            # A step may sign with the server's key: it waits for its turn
            # (reactor.handshakes), its input held and its reading paused.
            if self._held is not None:
                self._held += data
                return
            if not self.server.may_handshake(self.peer_host):
                self._held = bytearray(data)
                if self._transport is not None:
                    self._transport.pause_reading()
                self.server.handshake_later(self)
                return
        self._decrypt(data)

    def take_handshake_turn(self) -> None:
        """The server's handshake pass: the held step runs now."""
        data, self._held = self._held, None
        if data is None or self._closed:
            return
        try:
            self.resume_reading()
            self._decrypt(bytes(data))
        except Exception as error:  # a bare loop callback: contain it here
            self._contain(error)

    def _decrypt(self, data: bytes) -> None:
        tls = self.tls
        connection = self.connection
        assert tls is not None and connection is not None
        try:
            plain, ended = tls.receive(data)
        except TLSFailure as failure:
            reason = log_failure(self.peer_host, failure, tls.handshake_done)
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(tls.take_all())  # the alert, tried at once
            connection.abort(reason)
            return
        if tls and not self._in_flight and not self._burst:
            self._push()  # handshake messages, or output that waited for it
        received = connection.data_received if self.web is None else self.web_received
        if plain:
            received(plain)
        if ended:
            received(b"")

    def eof_received(self) -> bool:
        self._eof_received = True
        if self._closing:
            if not self.output:
                self._close_now()
        elif self.web is not None:
            self.web_received(b"")
        elif self.connection is not None:
            self.connection.data_received(b"")
        return True  # keep the write side open: we close when we are done

    def pause_writing(self) -> None:
        pass  # everything handed over is counted in _in_flight already

    def resume_writing(self) -> None:
        try:
            self._handed_over()
        except Exception as error:
            self._contain(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._unwatch_room()  # before asyncio closes the socket: the duplicate goes first
        if self._linger is not None:
            self._linger.cancel()
        if self.connection is not None:
            self.connection.connection_lost()

    # -- the chat logic's operations --------------------------------------------

    def write(self, data: bytes, on_handoff: Handoff | None = None) -> Entry | None:
        joined = self.server.joined
        if joined is not None and self.connection in joined:
            self.server._queue_joined()  # joined fan-outs' lines go first
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            if on_handoff is not None:
                on_handoff(False)
            return None
        if self.tls is not None:
            entry = self.output.append(data, on_handoff)
            if not self._in_flight and not self._burst:
                self.server.want_settle(self)
                if self._may_offer():  # else the settle waits for room
                    self._send_batch()
            return entry if self.output else None  # empty: it went, its handoff ran
        if self.output or self._burst or (on_handoff is not None and not self._has_room()):
            # Waits its turn (and can still be withdrawn); what this loop
            # iteration writes after its first line goes out in one batch, and
            # a direct message waits for room (see _may_offer).
            if not self._burst and not self._in_flight:
                self.server.want_settle(self)
            return self.output.append(data, on_handoff)
        self.server.want_settle(self)
        transport.write(data)  # asyncio tries the send at once
        if not transport.get_write_buffer_size():
            if on_handoff is not None:
                # Closing now: the send failed and asyncio discarded it.
                on_handoff(not transport.is_closing())
            return None
        entry = self.output.append(data, on_handoff)
        if entry is not None:
            entry.started = True
        self._in_flight = len(data)
        return entry

    def flush(self) -> None:
        pass  # asyncio sends whenever the socket takes more

    def close(self) -> None:
        self.server.queue_joined_before(self.connection)  # its joined lines go first
        self._closing = True
        self.resume_reading()  # read and discard until the peer's FIN
        self._linger = self.server.call_later(self.server.config.close_linger, self._expired)
        if not self.owes_output:
            self._shut_write()

    def abort(self) -> None:
        self.server.queue_joined_before(self.connection)  # its joined lines go first
        self._account()  # what the kernel took before the cut was delivered
        self.fail_handoffs()
        self._in_flight = 0
        self._unwatch_room()
        if self._transport is not None and not self._closed:
            if self.sock is not None:
                discard_input(self.sock.fileno())
            self._transport.abort()

    def drop_unsent(self) -> None:
        if self.tls is None:
            # What asyncio holds already (the head of our queue) goes; the rest is dropped.
            for callback in self.output.drop_unsent(self._in_flight):
                callback(False)

    def pause_reading(self) -> None:
        if self._transport is not None and not self._closing and not self._closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._held is not None:
            return  # a handshake step waits for its turn: that resumes it
        if self._transport is not None and not self._closed and not self._transport.is_reading():
            self._transport.resume_reading()

    # -- helpers ------------------------------------------------------------------

    def _account(self) -> None:
        """Report what asyncio has sent of the batch so far."""
        transport = self._transport
        if not self._in_flight or transport is None:
            return
        buffered = transport.get_write_buffer_size()
        if not buffered:
            # Emptied without resume_writing(): a failed send made asyncio
            # discard it, so none of it is known to have left.
            return
        sent = self._in_flight - buffered
        if sent > 0:
            self._in_flight -= sent
            for callback in self.wire.consume(sent):
                callback(True)

    def _handed_over(self) -> None:
        """asyncio's buffer is empty: what we handed it has been sent."""
        if self._in_flight:
            for callback in self.wire.consume(self._in_flight):
                callback(True)
        self._in_flight = 0
        self._push()

    def end_burst(self) -> None:
        """The server's settle: what this iteration queued goes in one batch."""
        self._burst = False
        if not self._in_flight:
            try:
                self._push()
            except Exception as error:  # a bare loop callback: contain it here
                self._contain(error)

    def _push(self) -> None:
        """Hand everything queued to asyncio, whose buffer is empty."""
        while self.wire and not self._in_flight:
            if not self._may_offer() and self._watch_room():
                return  # _room_ready() comes back when there is room
            if not self._send_batch():
                return  # resume_writing() comes back when it is gone
        if not self.owes_output:
            if self.connection is not None:
                self.connection.output_drained()
            if self._closing:
                self._shut_write()

    def _send_batch(self) -> bool:
        """Hand asyncio one batch from the wire; True if the kernel took it all."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        wire = self.wire
        buffers = wire.buffers()
        if wire is self.output:
            self.output.mark_started(len(buffers))  # (TLS marks what it encrypts)
        self._in_flight = sum(len(b) for b in buffers)
        # One write() of the joined batch, which is what writelines() does on
        # 3.11: on 3.12.0-3.12.8 and 3.13.0-3.13.1 the selector transport's
        # own writelines() never pauses the protocol (CPython gh-127655), so
        # resume_writing() would never come and this connection's output
        # would stop for good.
        transport.write(buffers[0] if len(buffers) == 1 else b"".join(buffers))
        if transport.get_write_buffer_size():
            return False
        if transport.is_closing():
            # The send failed and asyncio discarded the batch as it closed
            # the transport: none of it is known to have left.
            self._in_flight = 0
            return False
        sent, self._in_flight = self._in_flight, 0
        for callback in wire.consume(sent):
            callback(True)
        return True

    # -- room for a direct message ----------------------------------------------
    #
    # A direct message is handed to asyncio (or encrypted) only when the
    # socket has room for it whole, so that it stays withdrawable until then
    # (Transport._may_offer).

    def _has_room(self) -> bool:
        """The socket is writable now (see Transport._may_offer)."""
        room = self._room
        if room is None:
            if self.sock is None:
                return True  # no socket to ask: asyncio's transport decides
            room = self._room = select.poll()
            room.register(self.sock.fileno(), select.POLLOUT)
        return bool(room.poll(0))

    def _watch_room(self) -> bool:
        """Be called back (_room_ready) when the socket has room; False if
        it cannot be watched (then the batch goes to asyncio as it is).

        asyncio watches a transport's socket for writing only while its own
        buffer holds something, and refuses ``add_writer`` on that socket's
        descriptor; so a duplicate of the descriptor is watched instead,
        only while a direct message waits for room (or a queue that a
        withdraw emptied waits for the client to read)."""
        if self._room_fd is not None:
            return True
        if self._closed or self.sock is None:
            return False
        try:
            self._room_fd = os.dup(self.sock.fileno())
        except OSError:
            return False  # out of descriptors: no worse than before the check
        self.server.loop.add_writer(self._room_fd, self._room_ready)
        return True

    def _unwatch_room(self) -> None:
        fd, self._room_fd = self._room_fd, None
        if fd is not None:
            self.server.loop.remove_writer(fd)
            os.close(fd)

    def _room_ready(self) -> None:
        self._unwatch_room()
        try:
            if not self._in_flight:
                self._push()  # and if nothing is owed, the client read: output_drained
        except Exception as error:  # a bare loop callback: contain it here
            self._contain(error)

    def _shut_write(self) -> None:
        transport = self._transport
        if transport is None or self._closed or transport.is_closing():
            return
        if self.tls is not None and self.tls.close_notify():
            transport.write(self.tls.take_all())  # sent before the FIN or the close
        if self._eof_received or not transport.can_write_eof():
            self._close_now()
            return
        try:
            transport.write_eof()
        except OSError:  # the peer is already gone (ENOTCONN): asyncio does not catch it
            self._close_now()

    def _close_now(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _expired(self) -> None:
        if self.connection is not None:
            self.connection.abort("did not close in time")

    def _contain(self, error: Exception) -> None:
        if self.connection is not None:
            self.connection.fail(error)
        self.abort()


class AsyncioWebTransport(WebTransport, AsyncioTransport):
    """A web connection, plain or TLS (see reactor.web.transport)."""

    def __init__(self, server: AsyncioServer, listener: Listener) -> None:
        super().__init__(server, listener)
        assert listener.web is not None
        self.start_web(listener.web, server.config.max_line, server.config.output_hard_limit)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.web.peer_host = self.peer_host  # known only now


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
        servers = [
            await loop.create_server(
                self._transport_factory(listener),
                # Else asyncio listens again with its own backlog of 100: a
                # storm of connections overflows it, and their SYNs wait out
                # retransmission timeouts.
                sock=listener.sock, backlog=self.config.backlog,
            )
            for listener in self.listeners
        ]
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
