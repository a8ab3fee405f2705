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
import socket
from collections.abc import Callable
from typing import Any

from reactor.backends import EVENT_LOOPS
from reactor.backends.base import Server
from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.outbuf import Entry, Handoff
from reactor.sockets import RESOURCE_ERRNOS, configure_client, peer_host
from reactor.transport import TimerHandle, Transport
from reactor.whiteboard import Whiteboard

log = logging.getLogger("reactor")



class AsyncioTransport(Transport, asyncio.Protocol):
    def __init__(self, server: AsyncioServer) -> None:
        Transport.__init__(self, "unknown")
        self.server = server
        self._transport: asyncio.Transport | None = None
        self.sock: Any = None  # asyncio's socket-like view, for options
        self._in_flight = 0  # bytes handed to asyncio, not yet known to be sent
        self._burst = False  # wrote through this loop iteration already
        self._closing = False
        self._closed = False
        self._eof_received = False
        self._linger: TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
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
        self.server.chat.connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self._closing or self.connection is None:
            return  # input after bye, or while draining, is discarded
        self.connection.data_received(data)

    def eof_received(self) -> bool:
        self._eof_received = True
        if self._closing:
            if not self.output:
                self._close_now()
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
        if self._linger is not None:
            self._linger.cancel()
        if self.connection is not None:
            self.connection.connection_lost()

    # -- the chat logic's operations --------------------------------------------

    def write(self, data: bytes, on_handoff: Handoff | None = None) -> Entry | None:
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            if on_handoff is not None:
                on_handoff(False)
            return None
        if self.output or self._burst:
            # Waits its turn (and can still be withdrawn); what this loop
            # iteration writes after its first line goes out in one batch.
            return self.output.append(data, on_handoff)
        self._burst = True
        self.server.loop.call_soon(self._end_burst)
        transport.write(data)  # asyncio tries the send at once
        if not transport.get_write_buffer_size():
            if on_handoff is not None:
                on_handoff(True)
            return None
        entry = self.output.append(data, on_handoff)
        entry.started = True
        self._in_flight = len(data)
        return entry

    def flush(self) -> None:
        pass  # asyncio sends whenever the socket takes more

    def close(self) -> None:
        self._closing = True
        self.resume_reading()  # read and discard until the peer's FIN
        self._linger = self.server.call_later(self.server.config.close_linger, self._expired)
        if not self.output:
            self._shut_write()

    def abort(self) -> None:
        self._account()  # what the kernel took before the cut was delivered
        self.fail_handoffs()
        self._in_flight = 0
        if self._transport is not None and not self._closed:
            self._transport.abort()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._closing and not self._closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._closed and not self._transport.is_reading():
            self._transport.resume_reading()

    # -- helpers ------------------------------------------------------------------

    def _account(self) -> None:
        """Report what asyncio has sent of the batch so far."""
        transport = self._transport
        if not self._in_flight or transport is None:
            return
        sent = self._in_flight - transport.get_write_buffer_size()
        if sent > 0:
            self._in_flight -= sent
            for callback in self.output.consume(sent):
                callback(True)

    def _handed_over(self) -> None:
        """asyncio's buffer is empty: what we handed it has been sent."""
        for callback in self.output.consume(self._in_flight):
            callback(True)
        self._in_flight = 0
        self._push()

    def _end_burst(self) -> None:
        self._burst = False
        if not self._in_flight:
            self._push()

    def _push(self) -> None:
        """Hand everything queued to asyncio, whose buffer is empty."""
        output = self.output
        transport = self._transport
        while output and not self._in_flight and transport and not transport.is_closing():
            buffers = output.buffers()
            output.mark_started(len(buffers))
            self._in_flight = sum(len(b) for b in buffers)
            transport.writelines(buffers)
            if transport.get_write_buffer_size():
                return  # resume_writing() comes back when it is gone
            for callback in output.consume(self._in_flight):
                callback(True)
            self._in_flight = 0
        if not output:
            if self.connection is not None:
                self.connection.output_drained()
            if self._closing:
                self._shut_write()

    def _shut_write(self) -> None:
        transport = self._transport
        if transport is None or self._closed or transport.is_closing():
            return
        if self._eof_received or not transport.can_write_eof():
            self._close_now()
        else:
            transport.write_eof()

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


class AsyncioServer(Server):
    def __init__(
        self,
        config: ServerConfig,
        whiteboard: Whiteboard[Connection] | None = None,
        loop: str = "asyncio",
    ) -> None:
        if loop not in EVENT_LOOPS:
            raise ValueError(f"unknown loop {loop!r}; choose from {', '.join(EVENT_LOOPS)}")
        super().__init__(config, whiteboard)
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
        self._accept_pause_logged = float("-inf")

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.loop.call_later(delay, callback)

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
            try:
                while self._wakeup_reader.recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
            if self._stop_requested and not stop.done():
                stop.set_result(None)

        loop.add_reader(self._wakeup_reader.fileno(), woken)
        server = await loop.create_server(lambda: AsyncioTransport(self), sock=self.listener)
        if self._stop_requested:
            stop.set_result(None)
        try:
            await stop
        finally:
            loop.remove_reader(self._wakeup_reader.fileno())
        # Clients already in the listen backlog have connected as far as they
        # can tell: let the loop accept them so that they are told too.
        await self._accept_backlog()
        server.close()
        self.chat.shutdown()
        deadline = loop.time() + self.config.close_linger
        while self.chat.connection_count and loop.time() < deadline:
            await asyncio.sleep(0.01)  # a poll, within the linger, of our own state
        for connection in list(self.chat.connections):
            connection.transport.abort()
        await asyncio.sleep(0)  # let the aborts' connection_lost callbacks run

    async def _accept_backlog(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    def _exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS \
                and context.get("socket") is not None and "accept" in str(context.get("message")):
            # Out of descriptors: asyncio stops accepting for a while by
            # itself -- after trying the rest of its accept batch, each try
            # reported here, so say it once per pause.
            now = self.loop.time()
            if now >= self._accept_pause_logged + asyncio.constants.ACCEPT_RETRY_DELAY:
                self._accept_pause_logged = now
                log.error("accept() failed: %s; pausing new connections for %.0f s",
                          error.strerror, asyncio.constants.ACCEPT_RETRY_DELAY)
            return
        protocol = context.get("protocol")
        if isinstance(protocol, AsyncioTransport) and protocol.connection is not None:
            protocol.connection.fail(error or RuntimeError(context.get("message")))
            return
        if isinstance(error, (ConnectionError, socket.timeout)):
            log.debug("asyncio: %s", context.get("message"))
            return
        self.loop_failed(error or RuntimeError(str(context.get("message"))))
        self._wake()
