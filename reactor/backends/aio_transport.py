"""The asyncio backend's transport: an asyncio Protocol per connection, our queue in front.

AsyncioServer (reactor.backends.aio) builds one per accepted connection and
ends each iteration of the loop with one batch per client.  Apart from the
server because it is the code that runs once per connection per line, read
on its own when a send is profiled or changed.

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
import os
import select
import ssl
from collections.abc import Callable
from typing import Any, Protocol, cast

from reactor.backends.base import Listener
from reactor.backends.joins import JoiningServer
from reactor.config import ServerConfig
from reactor.outbuf import Entry, Handoff
from reactor.sockets import configure_client, discard_input, peer_host
from reactor.tls import HandshakeCounts, TLSFailure, log_failure
from reactor.transport import TimerHandle, Transport
from reactor.web.transport import WebTransport

# At most this much is read per readiness, as in the other backends: the
# bound on the work one flooding client causes per turn.  (asyncio's own
# transport reads up to 256 KiB, so we hand it the buffer: BufferedProtocol.)
READ_SIZE = 16 * 1024


class AsyncioLoop(JoiningServer, Protocol):
    """What a transport asks of the server that serves it (AsyncioServer),
    named here so that this module need not import the server's, which
    imports this one."""

    config: ServerConfig
    loop: asyncio.AbstractEventLoop

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...

    def want_settle(self, transport: AsyncioTransport) -> None: ...

    def may_handshake(self, host: str) -> bool: ...

    def handshake_later(self, transport: AsyncioTransport) -> None: ...

    def tls_context(self) -> ssl.SSLContext: ...

    def tls_handshakes(self) -> HandshakeCounts: ...


class AsyncioTransport(Transport, asyncio.BufferedProtocol):
    def __init__(self, server: AsyncioLoop, listener: Listener) -> None:
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

    def __init__(self, server: AsyncioLoop, listener: Listener) -> None:
        super().__init__(server, listener)
        assert listener.web is not None
        self.start_web(listener.web, server.config.max_line, server.config.output_hard_limit)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.web.peer_host = self.peer_host  # known only now
