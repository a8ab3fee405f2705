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

A transport's states: open (reading, unless its connection paused it) ->
closing (draining its queue, then a write shutdown, then discarding input
until the peer's EOF or a linger deadline) -> closed.
"""

from __future__ import annotations

import collections
import logging
import math
import select
import selectors
import socket
import time
from collections.abc import Callable
from typing import cast

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
    TRANSIENT_ACCEPT_ERRNOS,
    KernelRoom,
    configure_client,
    discard_input,
    peer_host,
    send_cost,
)
from reactor.timers import Timer, Timers
from reactor.tls import TLSFailure, log_failure
from reactor.transport import SocketLoop, Transport
from reactor.web.http import Site
from reactor.web.transport import WebTransport, fan_out_framed

log = logging.getLogger("reactor")

# One recv per ready connection per pass, of at most this much: the bound on
# the work one client can cause per pass.  The cost is per line, not per
# byte, so it must be small: a read of asyncio's 256 KiB of short commands
# holds everybody else for the whole of its lines (Redis reads 16 KiB too).
READ_SIZE = 16 * 1024
# Connections accepted per listener readiness: enough to drain a login storm
# quickly, few enough that established clients still get their turn.
ACCEPTS_PER_PASS = 128
# Passes with at most this many ready connections send output at once.
WRITE_THROUGH_MAX_READY = 4

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


# Readiness bits as epoll reports them (and as _SelectorsPoller translates).
_IN = 1  # select.EPOLLIN
_OUT = 4  # select.EPOLLOUT
# An error or a hangup counts as both readable and writable (selectors' rule).
_READABLE = ~_OUT
_WRITABLE = ~_IN


class _EpollPoller:
    """What the loop needs of ``selectors.EpollSelector``: register, modify
    and unregister as there, and ``poll`` giving ``(fd, epoll events)``, whose
    fd the loop looks up in ``data``.

    ``selectors`` builds a key object per registration and looks each ready
    descriptor's key up through two method calls, once per pass -- with a
    sender writing a line or two at a time, once or twice per direct
    message; ``epoll.poll`` and a dict do without (bench/profile_fanout.py
    counts the difference).
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.poll = self._epoll.poll  # (timeout in s, -1 for none; max events)
        self.data: dict[int, object] = {}  # fd -> what the loop is given

    def register(self, fileobj: socket.socket, events: int, data: object = None) -> None:
        fd = fileobj.fileno()
        if fd in self.data:
            raise KeyError(f"{fileobj!r} is already registered")
        self._epoll.register(fd, _MASKS[events])
        self.data[fd] = data

    def modify(self, fileobj: socket.socket, events: int, data: object = None) -> None:
        fd = fileobj.fileno()
        if fd not in self.data:
            raise KeyError(f"{fileobj!r} is not registered")
        self._epoll.modify(fd, _MASKS[events])
        self.data[fd] = data

    def unregister(self, fileobj: socket.socket) -> None:
        fd = fileobj.fileno()
        del self.data[fd]  # KeyError if not registered, as selectors raises
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # as selectors: the descriptor is already gone

    def close(self) -> None:
        self._epoll.close()
        self.data.clear()


class _SelectorsPoller:
    """The same interface over ``selectors``, where there is no epoll."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self.data: dict[int, object] = {}
        self.modify = self._selector.modify
        self.close = self._selector.close

    def register(self, fileobj: socket.socket, events: int, data: object = None) -> None:
        self._selector.register(fileobj, events, data)
        self.data[fileobj.fileno()] = data

    def unregister(self, fileobj: socket.socket) -> None:
        self._selector.unregister(fileobj)
        del self.data[fileobj.fileno()]

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        ready = self._selector.select(None if timeout < 0 else timeout)
        return [(key.fd, (_IN if events & _READ else 0) | (_OUT if events & _WRITE else 0))
                for key, events in ready]


class _Watched:
    """A socket of the server's own in the loop (see SelectorServer.watch)."""

    __slots__ = ("on_ready", "write")

    def __init__(self, on_ready: Callable[[bool, bool], None]) -> None:
        self.on_ready = on_ready
        self.write = False


_GONE = object()
_MASKS = {_READ: _IN, _WRITE: _OUT, _READ | _WRITE: _IN | _OUT}
if hasattr(select, "epoll"):
    assert (select.EPOLLIN, select.EPOLLOUT) == (_IN, _OUT)
    _Poller: type[_EpollPoller] | type[_SelectorsPoller] = _EpollPoller
else:
    _Poller = _SelectorsPoller


class SelectorTransport(KernelRoom, Transport):
    def __init__(self, sock: socket.socket, host: str, server: SelectorServer) -> None:
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


class SelectorTLSTransport(SelectorTransport):
    """A TLS connection's transport: the plain writers, encrypting.

    Each record costs OpenSSL work, and each send a system call, so a
    connection that gets several messages per turn (a busy
    server: fan-outs back to back in one pass) is *batching*: the first
    message of a turn waits, like the rest, for the end of the pass, and
    they all go in one record and one send.  A turn with one message ends
    that, and the next first message is sent at once again.
    """

    def __init__(self, sock: socket.socket, host: str, server: SelectorServer) -> None:
        super().__init__(sock, host, server)
        # Only the select loop's thread touches these.  Set here, not as class
        # defaults: the fast paths look them up per recipient, which is cheap
        # for an instance's own attributes.
        self._batching = False
        self._sealed_turn = -1  # the turn whose first message was sent at once
        self._queued = 0  # while batching: the queue's size after the turn's first message

    def on_readable(self) -> None:
        tls = self.tls
        assert tls is not None
        if (not tls.handshake_done and not self._closing
                and not self.server.may_handshake(self.peer_host)):
            return  # a later pass: its socket stays readable (level-triggered)
        SelectorTransport.on_readable(self)

    def _may_send_now(self, handed_over: bool) -> bool:
        return (not self._batching and not self._events & _WRITE
                and SelectorTransport._may_send_now(self, handed_over))

    def _send_first(self, data: bytes, on_handoff: Handoff | None) -> Entry | None:
        """The turn's first output, encrypted straight from the caller
        (TLSWire.seal: no queue entry, piece or list) and sent at once; what
        the kernel refuses waits as ciphertext."""
        tls = self.tls
        assert tls is not None
        ciphertext = tls.seal(data)  # None during the handshake, or behind ciphertext
        if ciphertext is None:
            return self._queue_first(data, on_handoff)
        try:  # _send, written out: once per recipient of a fan-out on TLS
            sent = self.sock.send(ciphertext)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:  # the connection failed: it is aborted
            self._connection_error(error)
            if on_handoff is not None:
                on_handoff(False)
            return None
        if sent == len(ciphertext):
            self._sealed_turn = self._turn
            if on_handoff is not None:
                on_handoff(True)
            return None  # nothing owed: _settle need not visit it
        entry = tls.keep(ciphertext, sent, data, on_handoff)
        self._want_settle()
        return entry

    def _queue_first(self, data: bytes, on_handoff: Handoff | None) -> Entry | None:
        entry = self._enqueue(data, on_handoff)
        self._queued = self.output.size
        return entry

    def flush(self) -> None:
        """Fast path of _flush_wire on TLS, in its common case (the end of a
        pass; nothing waits for EVENT_WRITE): the whole queue encrypted in
        one record (TLSWire.seal_queue) and sent -- once per recipient of a
        busy pass.  Anything else is _flush_wire's."""
        output = self.output
        tls = self.tls
        assert tls is not None
        if (self._events & _WRITE or self._closing or self.socket_closed or not output.size
                or (output.entries and not self._may_offer())):
            SelectorTransport.flush(self)
            return
        # More than one message this turn: batch the next turn; one: stop.
        if self._batching:
            self._batching = output.size != self._queued
        elif self._sealed_turn == self._turn:
            self._batching = True
        ciphertext = tls.seal_queue()  # None: during the handshake, or too big
        if ciphertext is None:
            SelectorTransport.flush(self)
            return
        plain = output.size
        try:  # _send, written out: once per recipient of a busy pass on TLS
            sent = self.sock.send(ciphertext)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            tls.keep_sealed(ciphertext, 0, plain)
            self._connection_error(error)
            return
        if sent < len(ciphertext):
            tls.keep_sealed(ciphertext, sent, plain)
            self._update_events()  # EVENT_WRITE for the rest
            return
        for callback in output.consume(plain):
            callback(True)
        if self.socket_closed:
            return
        connection = self.connection
        if (not output.size and connection is not None
                and (connection.over_soft_limit_since is not None or connection.not_reading
                     or connection.output_backlog)):
            # Only when it changes something, as in _flush_plain.
            connection.output_drained()
        if output.size or self._closing:
            # What the handoffs or the drain queued, or a close: _flush_wire's.
            SelectorTransport.flush(self)


class SelectorWebTransport(WebTransport, SelectorTransport):
    """A web connection (see reactor.web.transport)."""


class SelectorWebTLSTransport(WebTransport, SelectorTLSTransport):
    """A web connection over TLS: https and wss."""


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
