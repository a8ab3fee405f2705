"""The select backend's transport: one connection's socket, its writes and reads.

SelectorServer's loop (reactor.backends.selector) drives it: ``on_readable``
and ``flush`` when the poller reports the socket, the queued output at the
end of each pass.  Apart from the loop because it is the code that runs once
per connection per line -- the writers and their fast paths -- and is read on
its own when a send is profiled or changed; the TLS transport builds on it
(reactor.backends.selector_tls_transport).

A transport's states: open (reading, unless its connection paused it) ->
closing (draining its queue, then a write shutdown, then discarding input
until the peer's EOF or a linger deadline) -> closed.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Protocol

from reactor.backends.joins import JoiningServer
from reactor.backends.selector_pollers import _READ, _WRITE, _EpollPoller, _SelectorsPoller
from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.outbuf import Entry, Handoff
from reactor.sockets import KernelRoom, discard_input, send_cost
from reactor.timers import Timer
from reactor.tls import TLSFailure, log_failure
from reactor.transport import Transport
from reactor.web.transport import WebTransport

# One recv per ready connection per pass, of at most this much: the bound on
# the work one client can cause per pass.  The cost is per line, not per
# byte, so it must be small: a read of asyncio's 256 KiB of short commands
# holds everybody else for the whole of its lines (Redis reads 16 KiB too).
READ_SIZE = 16 * 1024


class SelectorLoop(JoiningServer, Protocol):
    """What a transport asks of the loop that serves it (SelectorServer),
    named here so that this module need not import the loop's, which
    imports this one."""

    config: ServerConfig
    selector: _EpollPoller | _SelectorsPoller
    # The loop's turn, and whether a pass writes through (see write).
    turn: int
    write_through: bool
    reading: SelectorTransport | None  # whose input is being handled
    pending_writes: list[SelectorTransport]  # visited by _settle
    dead: list[SelectorTransport]  # closed this pass: reported by _settle

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...

    def more_input_waits(self) -> bool: ...

    def may_handshake(self, host: str) -> bool: ...


class SelectorTransport(KernelRoom, Transport):
    def __init__(self, sock: socket.socket, host: str, server: SelectorLoop) -> None:
        super().__init__(host)
        self.sock = sock
        self.server = server
        self._in_pending = False  # on server.pending_writes
        # The server's turn of this connection's first output: the first
        # output of a turn may be sent at once (see write).
        self._turn = -1
        self._events = _READ  # what the selector watches for
        self._reading = True
        self._closing = False
        self._eof_received = False
        self._write_shut = False
        self._linger: Timer | None = None
        self.socket_closed = False
        self._room: select.poll | None = None  # see _has_room
        # What send_now may still send without asking the kernel for room
        # (reactor.sockets.room_after_writable), as of the turn of its last
        # send; any other output ends it (see send_now).
        self._room_left = 0
        self._room_turn = -2
        self._room_after_writable = -1  # not asked yet
        # A withdraw emptied the queue while the kernel was full: EVENT_WRITE
        # (the client read) is what tells the connection it drained.
        self._drain_watch = False

    # -- the chat logic's operations ------------------------------------------
    #
    # Every byte this transport sends goes through _send, the one send, or a
    # fast path that writes it out where it runs once per recipient of a
    # fan-out (each says so, and tests/test_selector_writes.py checks it
    # against the general path).  The writers decide what to offer and when:
    #
    # * write: the turn's first output in a short pass is offered at once
    #   (_send_first, asyncio's "try to send now"); the rest is queued for
    #   the end of the pass (_enqueue), written once per connection there;
    # * send_now: write's first branch for a direct message, without a handoff;
    # * flush: the queue (or on TLS the ciphertext made from it), until the
    #   kernel is full -- then EVENT_WRITE, dropped again once it is empty;
    # * fan_out_first / enqueue_each: write's two branches for a fan-out's
    #   recipients, in one loop each (SelectorServer.send_at_once).
    #
    # Each writer sets _turn when it writes a turn's first output, and
    # everything after it in that turn is queued, so that only a flush can
    # send it: send_now's room (see there) counts on both.
    #
    # A message someone waits for (a direct message: an Entry) can be taken
    # back only while none of it is in the kernel -- and on TLS only while it
    # is not encrypted (a record once made must be sent).  So it is offered
    # (or encrypted) only when the socket is writable (_has_room): then the
    # kernel takes it whole, and what it would refuse stays withdrawable.
    # (send_now knows, by the kernel's rule, when it need not ask.)

    def write(self, data: bytes, on_handoff: Handoff | None = None) -> Entry | None:
        if self.socket_closed:
            if on_handoff is not None:
                on_handoff(False)
            return None
        joined = self.server.joined
        if joined is not None and self.connection in joined:
            self.server._queue_joined()  # joined fan-outs' lines go first
        turn = self.server.turn
        if self._turn != turn:
            # The first output owed to this connection in this turn.
            self._turn = turn
            if self._may_send_now(on_handoff is not None):
                return self._send_first(data, on_handoff)
            if self.tls is not None:
                return self._queue_first(data, on_handoff)
        if not self._in_pending:  # _enqueue, written out: this runs once per reply
            self._in_pending = True
            self.server.pending_writes.append(self)
        return self.output.append(data, on_handoff)

    def send_now(self, data: bytes) -> int:
        """write()'s first branch, for a direct message: no handoff to make
        when the kernel takes it whole (plain TCP; TLS goes through write).

        Fast path: _may_send_now and _send written out, once per direct
        message; see test_send_now_matches_write.  The room it needs is
        asked for (_has_room, a system call) only once what it sent since
        the socket last polled writable may have used up what the kernel
        then surely had (reactor.sockets.room_after_writable); see
        test_send_now_without_asking_for_room_sends_whole_messages."""
        if self.socket_closed:
            return -1
        server = self.server
        joined = server.joined
        if joined is not None and self.connection in joined:
            server._queue_joined()  # as in write
        turn = server.turn
        if self._turn == turn or self.tls is not None:
            return 0
        # Nothing was written to it since this sent last: every other writer
        # sets _turn, and within that turn queued (then a flush ends the room).
        unchanged = self._turn == self._room_turn
        self._turn = turn  # write() queues what this does not send
        if (not server.write_through or self.output.size
                or (server.reading is self and server.more_input_waits())):
            return 0
        # Room for it whole: known (what the kernel surely holds since the
        # socket last polled writable, less what this sent since), or asked.
        cost = send_cost(len(data))
        left = (self._room_left if unchanged else 0) - cost
        if left < 0 and (left := self._room_asked(cost)) < 0:
            return 0
        self._room_left = left
        self._room_turn = turn
        try:  # _send, written out
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            self._connection_error(error)
            return -1

    @staticmethod
    def fan_out_first(data: bytes, connections: list[Connection], turn: int,
                      web: list[Connection] | None) -> list[Connection]:
        """A fan-out's line as each connection's first output of a short
        pass: sent now where nothing is queued and it is the connection's
        first output this turn (what the kernel refuses is queued); returns
        the others, untouched, for the caller to queue.  Web connections
        are set aside in ``web`` for a pass with the frame, unless it is
        None (reactor.web.transport.fan_out_framed).  The checks of the
        pass are the caller's (SelectorServer.send_at_once).

        Fast path: _send_first's plain case written out in one loop, a call
        less per recipient of every broadcast; see test_fan_out_fast_path."""
        size = len(data)
        later: list[Connection] = []
        for connection in connections:
            transport: SelectorTransport = connection.transport  # type: ignore[assignment]
            if transport.web is not None and web is not None:
                wire = transport.web
                (web if wire.upgraded and not wire.closing else later).append(connection)
                continue
            if (transport._turn == turn or transport.output.size or transport.socket_closed
                    or not connection.is_open):
                later.append(connection)
                continue
            transport._turn = turn
            try:
                if transport.tls is not None:
                    if transport._batching or transport._events & _WRITE:  # type: ignore[attr-defined]
                        transport._queue_first(data, None)  # as _may_send_now says on TLS
                    else:
                        transport._send_first(data, None)
                    continue
                try:
                    sent = transport.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    later.append(connection)  # its turn now: queued after those
                    continue
                except OSError as error:
                    transport._connection_error(error)
                    continue
                if sent != size:
                    transport._enqueue(memoryview(data)[sent:], None)  # type: ignore[arg-type]
            except Exception as error:
                connection.fail(error)
        return later

    @staticmethod
    def enqueue_each(data: bytes, connections: list[Connection], turn: int,
                     limit: int, web: list[Connection] | None) -> list[Connection]:
        """A fan-out's line queued for the end of the pass, as write queues
        it, for each connection with at most ``limit`` bytes queued; returns
        the others (closed, or over it).  Web connections are set aside in
        ``web``, as fan_out_first does.

        Fast path: write's queueing branch (_queue_first, _enqueue) written
        out in one loop, three calls less per recipient of every busy pass;
        see test_fan_out_fast_path."""
        rest: list[Connection] = []
        for connection in connections:
            transport: SelectorTransport = connection.transport  # type: ignore[assignment]
            if transport.web is not None and web is not None:
                wire = transport.web
                (web if wire.upgraded and not wire.closing else rest).append(connection)
                continue
            output = transport.output
            if transport.socket_closed or not connection.is_open or output.size > limit:
                rest.append(connection)
                continue
            first = transport._turn != turn
            transport._turn = turn
            if not transport._in_pending:
                transport._in_pending = True
                transport.server.pending_writes.append(transport)
            output.append(data)
            if first and transport.tls is not None:
                transport._queued = output.size  # type: ignore[attr-defined]
        return rest

    def flush(self) -> None:
        """Write what is queued; watch for EVENT_WRITE only while some remains."""
        if self.socket_closed:
            return
        if self.tls is None and self.output.size and not self._closing:
            self._flush_plain()
        else:
            self._flush_wire()

    # -- writing: the one send and its callers --------------------------------

    def _send(self, buffers: list[bytes | memoryview]) -> int | None:
        """The one send: the bytes the kernel took of ``buffers`` now, or
        None if the connection failed (it is then aborted)."""
        try:
            if len(buffers) == 1:
                return self.sock.send(buffers[0])
            return self.sock.sendmsg(buffers)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            self._connection_error(error)
            return None

    def _may_send_now(self, handed_over: bool) -> bool:
        """The turn's first output may be sent at once: a short pass, nothing
        queued, and no more lines of the connection being read wait in this
        pass to share its send (see _waits_for_the_pass); a message someone
        waits for only if the kernel has room for it whole."""
        return (self.server.write_through and not self.output.size
                and not self._waits_for_the_pass(handed_over)
                and (not handed_over or self._has_room()))

    def _send_first(self, data: bytes, on_handoff: Handoff | None) -> Entry | None:
        """The turn's first output, sent at once: only what the kernel
        refuses is queued (asyncio's "try to send now")."""
        sent = self._send([data])
        if sent is None:  # the connection failed: it is aborted
            if on_handoff is not None:
                on_handoff(False)
            return None
        if sent == len(data):
            if on_handoff is not None:
                on_handoff(True)
            # Nothing is owed, so _settle need not visit it: a broadcast's
            # recipients stay off pending_writes.
            return None
        if not sent:
            return self._enqueue(data, on_handoff)
        entry = self._enqueue(memoryview(data)[sent:], on_handoff)  # type: ignore[arg-type]
        if entry is not None:
            entry.started = True  # its head went out: it cannot be taken back
        return entry

    def _queue_first(self, data: bytes, on_handoff: Handoff | None) -> Entry | None:
        """The turn's first output, queued for the end of the pass."""
        return self._enqueue(data, on_handoff)

    def _enqueue(self, data: bytes, on_handoff: Handoff | None) -> Entry | None:
        """Queued, for one send per connection at the end of the pass."""
        self._want_settle()
        return self.output.append(data, on_handoff)

    def _flush_wire(self) -> None:
        """flush(), every case: from the wire (the queue, or on TLS the
        ciphertext made from it), handshakes and closing included."""
        output = self.output
        wire = self.wire  # the output itself, or on TLS the ciphertext made from it
        self._room_left = 0  # (see send_now)
        if self._drain_watch and not output.size and not wire:
            # Writable again, with a queue a withdraw emptied while the kernel
            # was full: the client has read (clears "not reading").
            self._drain_watch = False
            if self.connection is not None:
                self.connection.output_drained()
                if self.socket_closed:
                    return
        while wire and self._may_offer():
            buffers = wire.buffers()
            offered = len(buffers[0]) if len(buffers) == 1 else sum(map(len, buffers))
            had_output = output.size > 0
            sent = self._send(buffers)
            if sent is None:
                return
            if sent:
                for callback in wire.consume(sent):
                    callback(True)
            if had_output and not output.size and self.connection is not None:
                self.connection.output_drained()
            if self.socket_closed:
                return
            if sent < offered:
                break  # the kernel is full (or more than one sendmsg's worth): EVENT_WRITE
            # The kernel took everything; what the handoffs queued meanwhile (the
            # next direct message of a sender whose echo waited for this one)
            # goes out now, rather than after a pass that waits for EVENT_WRITE.
        if self._closing and not self.owes_output:
            if self.tls is not None and self.tls.close_notify():
                self._send_wire()  # our close_notify; EVENT_WRITE if it did not all go
                if self.socket_closed:
                    return
            if not self.owes_output:
                self._shut_write()
        self._update_events()

    def _flush_plain(self) -> None:
        """Fast path of _flush_wire for plain TCP, open, with something
        queued, its send written out: it runs once per recipient of a busy
        pass; see test_flush_fast_path."""
        output = self.output
        connection = self.connection
        self._room_left = 0  # (see send_now)
        while output.size:
            if output.entries and not self._has_room():
                break  # a direct message waits, withdrawable, for EVENT_WRITE
            size = output.size
            buffers = output.buffers()
            try:  # _send, written out (see above)
                if len(buffers) == 1:
                    sent = self.sock.send(buffers[0])
                else:
                    sent = self.sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._connection_error(error)
                return
            if sent:
                for callback in output.consume(sent):
                    callback(True)
            if (not output.size and connection is not None
                    and (connection.over_soft_limit_since is not None or connection.not_reading
                         or connection.output_backlog)):
                # Only when it changes something: output_drained() is a no-op otherwise.
                connection.output_drained()
            if self.socket_closed:
                return
            if sent < size and (len(buffers) == 1 or sent < sum(map(len, buffers))):
                break  # the kernel is full: EVENT_WRITE
            # The kernel took everything offered; what the handoffs queued
            # meanwhile goes out now (see _flush_wire).
        if self._closing and not self.owes_output:
            self._shut_write()  # closed by a handoff meanwhile
        if (self._events & _WRITE) != (_WRITE if output.size else 0) or self._closing:
            self._update_events()

    def _send_wire(self) -> bool:
        """One send from the wire; its due handoffs run.  False if the send failed."""
        sent = self._send(self.wire.buffers())
        if sent is None:
            return False
        if sent:
            for callback in self.wire.consume(sent):
                callback(True)
        return True

    def withdraw(self, entry: Entry) -> bool:
        if not self.output.withdraw(entry):
            return False
        if not self.output.size and not self.socket_closed:
            self._drain_watch = True
            self._update_events()
        return True

    def close(self) -> None:
        self.server.queue_joined_before(self.connection)  # its joined lines go first
        self._closing = True
        self._reading = True  # discard input until the peer's FIN
        self._update_events()
        self._want_settle()
        self._linger = self.server.call_later(self.server.config.close_linger, self._linger_expired)

    def abort(self) -> None:
        """Discard what is queued; let what the kernel took go with a FIN.

        The socket stays open, discarding input, until the peer's EOF or the
        linger: closing with unread input would make the kernel send a reset,
        which destroys what it had taken -- messages already echoed as handed
        over.  A second abort (the linger, a bug, the server stopping) closes
        at once.
        """
        self.server.queue_joined_before(self.connection)  # its joined lines go first
        self.fail_handoffs()
        if self._closing:
            self._close_socket()
            return
        self._closing = True
        self._reading = True
        self._shut_write()
        if self.socket_closed:
            return
        self._update_events()
        self._linger = self.server.call_later(self.server.config.close_linger, self._linger_expired)

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._update_events()

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._update_events()

    # -- driven by the loop ---------------------------------------------------

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # reset, keepalive timeout, ...
            self._connection_error(error)
            return
        if not data:
            # Nothing more can come: stop watching for input, or every pass
            # would find the socket readable and recv() b"" again (a busy
            # loop while a line still waits for its answer or output drains).
            self._eof_received = True
            self._update_events()
        if self._closing:
            if not data and not self.owes_output:
                self._close_socket()
            elif data and self.tls is not None and not self.tls.handshake_done:
                # Closed before the handshake completed (server full, shutting
                # down): complete it, so that the notice can be sent.
                self._received_tls(data)
            return  # input after bye, or while draining, is discarded
        assert self.connection is not None
        server = self.server
        server.reading = self
        try:
            if self.tls is not None:
                self._received_tls(data)
            elif self.web is not None:
                self.web_received(data)
            else:
                self.connection.data_received(data)
        finally:
            server.reading = None

    def _received_tls(self, data: bytes) -> None:
        tls = self.tls
        connection = self.connection
        assert tls is not None and connection is not None
        try:
            plain, ended = tls.receive(data)
        except TLSFailure as failure:
            reason = log_failure(self.peer_host, failure, tls.handshake_done)
            self._send(tls.buffers())  # the alert, if the kernel takes it now
            connection.abort(reason)
            return
        if tls:
            # Handshake messages, or output that waited for the handshake.
            self._want_settle()
        received = connection.data_received if self.web is None else self.web_received
        if plain:
            received(plain)
        if ended:
            received(b"")

    def _waits_for_the_pass(self, handed_over: bool) -> bool:
        """Output that waits for the end of the pass: more lines of the
        connection being read wait in it, and this is a reply to that
        connection or has no handoff (a fan-out), so it can share their send
        (as Redis writes once per pass).  A server that fell behind reads
        several broadcasts at once, and so catches up with one system call
        per recipient for all of them instead of one each.  A direct message
        to someone else is still sent at once: no other line of the batch is
        likely to share its send, and its echo waits for it."""
        server = self.server
        return (not handed_over or server.reading is self) and server.more_input_waits()

    def _want_settle(self) -> None:
        """Be visited by _settle at the end of this pass (to send what is queued)."""
        if not self._in_pending:
            self._in_pending = True
            self.server.pending_writes.append(self)

    def _connection_error(self, error: OSError) -> None:
        reason = f"connection error: {error.strerror or error}"
        if self.connection is not None:
            self.connection.abort(reason)
        else:
            self.abort()

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
        if self.connection is not None:
            self.connection.abort("did not close in time")
        else:
            self._close_socket()

    def _update_events(self) -> None:
        if self.socket_closed:
            return
        reading = self._reading and not self._eof_received
        events = (_READ if reading else 0) | (_WRITE if self.wire or self._drain_watch else 0)
        if events == self._events:
            return
        selector = self.server.selector
        if not events:
            selector.unregister(self.sock)
        elif not self._events:
            selector.register(self.sock, events, self)
        else:
            selector.modify(self.sock, events, self)
        self._events = events

    def _close_socket(self) -> None:
        if self.socket_closed:
            return
        self.socket_closed = True
        if self._linger is not None:
            self._linger.cancel()
        if self._events:
            try:
                self.server.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self._events = 0
        if not self._eof_received:
            discard_input(self.sock.fileno())
        self.sock.close()
        self.server.dead.append(self)


class SelectorWebTransport(WebTransport, SelectorTransport):
    """A web connection (see reactor.web.transport)."""
