"""The threads backend's transport: one connection's socket, its queue and its writer thread.

The chat writes to it under the chat lock (ThreadsServer, in
reactor.backends.threads, runs the readers and ends the pass); what the
kernel does not take at once, the connection's writer thread drains.
Apart from the server because it is the code that runs once per
connection per line, read on its own when a send is profiled or changed.

Lock order, to stay free of deadlocks: the chat lock, then a transport's
``_send_lock``; never the other way round, and no callback runs under a
``_send_lock``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Protocol

from reactor.backends.fair_lock import FairLock
from reactor.backends.joins import JoiningServer
from reactor.config import ServerConfig
from reactor.outbuf import Entry, Handoff
from reactor.sockets import KernelRoom, discard_input, send_cost
from reactor.timers import Timer
from reactor.tls import TLSFailure, log_failure
from reactor.transport import Transport
from reactor.web.transport import WebTransport

log = logging.getLogger("reactor")

# What a TLS read waits for once the handshake is done: nothing.
_NO_TURN = contextlib.nullcontext()


class ThreadsLoop(JoiningServer, Protocol):
    """What a transport asks of the server that serves it (ThreadsServer),
    named here so that this module need not import the server's, which
    imports this one."""

    config: ServerConfig
    lock: FairLock  # the chat lock

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...

    def want_settle(self, transport: ThreadTransport) -> None: ...

    def handshake_turn(self, host: str) -> contextlib.AbstractContextManager[None]: ...


class ThreadTransport(KernelRoom, Transport):
    def __init__(self, sock: socket.socket, host: str, server: ThreadsLoop) -> None:
        super().__init__(host)
        self.sock = sock
        self.server = server
        # Guards the output queue, the writer's state and the socket's
        # shutdown and close (so that no shutdown can hit a reused descriptor).
        self._send_lock = threading.RLock()
        self._changed = threading.Condition(self._send_lock)
        self._writer: threading.Thread | None = None
        # On the server's pending list: output queued this pass, sent at its end.
        self._in_pending = False
        self._closing = False
        self._write_shut = False
        self._socket_closed = False
        self._linger: Timer | None = None
        # Set while the reader may read; cleared by pause_reading.
        self._may_read = threading.Event()
        self._may_read.set()
        # The writability poll (KernelRoom._has_room: under the send lock, as
        # _may_offer, or by send_now while the writer thread is idle), and
        # what send_now may still send without asking the kernel for room
        # (reactor.sockets.room_after_writable); every other send ends it.
        self._room: select.poll | None = None
        self._room_left = 0
        self._room_after_writable = -1  # not asked yet
        # A withdraw emptied the queue: the writer waits for the client to
        # read (_await_read_after_withdraw) rather than for more output.
        self._drain_watch = False

    # -- the chat logic's operations (called under the chat lock) -------------
    #
    # A direct message is offered to the kernel (or encrypted) only when the
    # socket has room for it whole, so that it stays withdrawable until then
    # (Transport._may_offer).

    def write(self, data: bytes, on_handoff: Handoff | None = None) -> Entry | None:
        joined = self.server.joined
        if joined is not None and self.connection in joined:
            self.server._queue_joined()  # joined fan-outs' lines go first
        if self.tls is not None:
            return self._write_tls(data, on_handoff)
        if self._in_pending or (on_handoff is None and self.server.lock.waiting):
            # Others wait for the lock: a busy pass, whose output to this
            # client goes in one send at its end (see ThreadsServer._end_turn).
            # A direct message (with a handoff) still goes at once, as in the
            # select backend: nothing else is likely to share its send.
            return self._queue(data, on_handoff)
        failure: str | None = None
        entry: Entry | None = None
        queued = False
        with self._send_lock:
            if self._socket_closed:
                failure = "closed"
            else:
                sent = 0
                if not self.output and (on_handoff is None or self._has_room()):
                    self._room_left = 0  # (see send_now)
                    try:
                        sent = self.sock.send(data, socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError as error:
                        failure = f"connection error: {error.strerror or error}"
                if failure is None and sent < len(data):
                    queued = True
                    entry = self.output.append(memoryview(data)[sent:] if sent else data,
                                               on_handoff)
                    if entry is not None:
                        entry.started = sent > 0
                    if self._start_writer():
                        self._changed.notify_all()
                    else:
                        failure = "cannot start a writer thread"
        # Callbacks and aborts run outside the send lock.
        if failure is None:
            if not queued and on_handoff is not None:
                on_handoff(True)
            return entry
        if queued:
            # Queued, but nobody can send it: abort() reports it not handed over.
            log.error("Cannot start a writer thread for %r; closing that connection",
                      self.connection)
        elif on_handoff is not None:
            on_handoff(False)
        if self.connection is not None and failure != "closed":
            self.connection.abort(failure)
        return None

    def send_now(self, data: bytes) -> int:
        """write()'s at-once branch for a direct message, without a handoff:
        the kernel takes it whole or it is not sent (plain TCP; TLS and web
        connections go through write).  Runs under the chat lock.

        Only when nothing is owed to the connection before it: nothing
        queued, so its writer thread is idle (it sends only what is queued,
        and everything is queued under the chat lock), nothing waiting for
        the end of the pass, no joined lines for it, not closing (the socket
        is closed only after that, so it stays open meanwhile).  What this
        does not send, write() queues behind what was.  While others wait
        for the lock, a direct message goes at once in write() too: the
        pass batches no line to this connection that could go after it.

        The room it needs is asked for (_has_room, a poll) only once what it
        sent since the socket last polled writable may have used up what the
        kernel then surely had (reactor.sockets.room_after_writable); every
        other send to the socket ends that room first."""
        if self.tls is not None or self._in_pending or self._closing or self.output.size:
            return 0
        joined = self.server.joined
        if joined is not None and self.connection in joined:
            return 0  # the joined lines go first: write() queues them
        cost = send_cost(len(data))
        left = self._room_left - cost
        if left < 0 and (left := self._room_asked(cost)) < 0:
            return 0
        self._room_left = left
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            if self.connection is not None:
                self.connection.abort(f"connection error: {error.strerror or error}")
            return -1
        if sent < len(data):
            self._room_left = 0  # short of memory: the kernel's promise did not hold
        return sent

    def _queue(self, data: bytes, on_handoff: Handoff | None) -> Entry | None:
        """Queue ``data`` for the end of the pass."""
        with self._send_lock:  # the writer thread consumes under it
            closed = self._socket_closed
            entry = None if closed else self.output.append(data, on_handoff)
        if closed:
            if on_handoff is not None:
                on_handoff(False)
            return None
        if not self._in_pending:
            self.server.want_settle(self)
        return entry

    def settle(self) -> None:
        """End of the pass (under the chat lock): offer the kernel what this
        pass queued, in one send; the writer thread takes the rest."""
        with self._send_lock:
            if self._socket_closed:
                return
            had_output = bool(self.output)
            due, failure = self._push_locked()
            drained = had_output and not self.output
        for callback in due:
            callback(True)
        connection = self.connection
        if connection is None:
            return
        if failure is not None:
            connection.abort(failure)
        elif drained and (connection.over_soft_limit_since is not None
                          or connection.not_reading or connection.output_backlog):
            connection.output_drained()  # only when it changes something

    def drop_unsent(self) -> None:
        with self._send_lock:  # the writer thread may be sending the head
            waiting = [] if self.tls is not None else self.output.drop_unsent()
        for callback in waiting:
            callback(False)

    def withdraw(self, entry: Entry) -> bool:
        # The writer reads and consumes the queue under the send lock, with
        # sendmsg in between: without it, an entry could be sent and also
        # withdrawn ("not delivered"), and consume() would pop the wrong ones.
        with self._send_lock:
            if not self.output.withdraw(entry):
                return False
            if not self.output and not self._socket_closed and self._start_writer():
                self._drain_watch = True
                self._changed.notify_all()
            return True

    def _write_tls(self, data: bytes, on_handoff: Handoff | None) -> Entry | None:
        """On TLS: queue, then encrypt and send what the kernel takes now."""
        failure: str | None = None
        entry: Entry | None = None
        due: list[Handoff] = []
        with self._send_lock:
            if self._socket_closed:
                failure = "closed"
            else:
                entry = self.output.append(data, on_handoff)
                due, failure = self._push_locked()
                if not self.output:
                    entry = None  # sent: its handoff is among the due
        for callback in due:
            callback(True)
        if failure is None:
            return entry
        if failure == "closed":
            if on_handoff is not None:
                on_handoff(False)
        elif self.connection is not None:
            self.connection.abort(failure)  # reports what is queued as not handed over
        return None

    def _push_locked(self) -> tuple[list[Handoff], str | None]:
        """Under the send lock: one non-blocking send from the wire, the writer
        thread for the rest.  Returns the handoffs due and a failure, if any."""
        due: list[Handoff] = []
        wire = self.wire
        self._room_left = 0  # (see send_now)
        while wire and self._may_offer():
            try:
                buffers = wire.buffers()
            except ssl.SSLError as error:
                # Encrypting after the reader thread fed the peer's end of
                # the session in (under this lock, but between our turns).
                return due, f"connection error: {error.reason or error}"
            try:
                sent = self.sock.sendmsg(buffers, [], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                return due, f"connection error: {error.strerror or error}"
            due += wire.consume(sent)
            if self.tls is not None or sent < sum(map(len, buffers)):
                # The kernel is full: the writer thread waits for it.  (TLS:
                # one record batch here; the writer encrypts the rest.)
                break
        self._end_output_locked()
        if self.wire:
            if not self._start_writer():
                log.error("Cannot start a writer thread for %r; closing that connection",
                          self.connection)
                return due, "cannot start a writer thread"
            self._changed.notify_all()
        return due, None

    def _end_output_locked(self) -> None:
        """Closing and nothing more owed: queue TLS's close_notify, or once
        that is sent too, shut down the write side."""
        if not self._closing or self._write_shut or self.owes_output:
            return
        if self.tls is not None and self.tls.close_notify():
            return  # sent like any output; this runs again once it has gone
        self._write_shut = True
        self._shutdown(socket.SHUT_WR)

    def received_tls(self, data: bytes) -> bool:
        """The reader thread, on TLS: decrypt ``data`` and hand on the plaintext.
        True once the peer's input has ended."""
        tls = self.tls
        connection = self.connection
        assert tls is not None and connection is not None
        failure: TLSFailure | None = None
        due: list[Handoff] = []
        send_failure: str | None = None
        plain, ended = b"", False
        # A handshake step may sign with the server's key: it waits for its
        # turn (reactor.handshakes) first, holding no other lock meanwhile.
        turn = _NO_TURN if tls.handshake_done else self.server.handshake_turn(self.peer_host)
        with turn, self._send_lock:
            if self._socket_closed:
                return True
            try:
                plain, ended = tls.receive(data)
            except TLSFailure as error:
                failure = error
                with contextlib.suppress(OSError):  # the alert, if the kernel takes it now
                    self.sock.sendmsg(tls.buffers(), [], socket.MSG_DONTWAIT)
            else:
                # Handshake messages, or output that waited for the handshake.
                due, send_failure = self._push_locked()
        with self.server.lock:
            if failure is not None:
                connection.abort(log_failure(self.peer_host, failure, tls.handshake_done))
                return False  # read on (and discard) until the peer's EOF
            for callback in due:
                callback(True)
            if send_failure is not None:
                connection.abort(send_failure)
                return False
            received = connection.data_received if self.web is None else self.web_received
            if plain:
                received(plain)
            if ended:
                received(b"")
        return ended

    def flush(self) -> None:
        pass  # the writer thread sends whenever the socket takes more

    def close(self) -> None:
        self.server.queue_joined_before(self.connection)  # its joined lines go first
        with self._send_lock:
            self._closing = True
            self._may_read.set()  # read and discard until the peer's FIN
            self._end_output_locked()
            if self.wire:
                self._start_writer()  # close_notify; if it cannot start, the linger ends it
            self._changed.notify_all()
        self._linger = self.server.call_later(self.server.config.close_linger, self._linger_expired)

    def abort(self) -> None:
        """Discard what is queued; let what the kernel took go with a FIN.

        The reader goes on reading and discarding until the peer's EOF or the
        linger (a close with unread input would make the kernel reset the
        connection and destroy what it had taken); a second abort closes at once.
        """
        self.server.queue_joined_before(self.connection)  # its joined lines go first
        with self._send_lock:
            waiting = self.output.clear()
            hard = self._closing
            self._closing = True
            self._may_read.set()
            self._changed.notify_all()
            if hard:
                # Wakes this connection's reader (recv returns) and writer.
                self._shutdown(socket.SHUT_RDWR)
            elif not self._write_shut:
                self._write_shut = True
                self._shutdown(socket.SHUT_WR)
        for callback in waiting:
            callback(False)
        if not hard:
            self._linger = self.server.call_later(self.server.config.close_linger,
                                                  self._linger_expired)

    def pause_reading(self) -> None:
        if not self._closing:
            self._may_read.clear()

    def resume_reading(self) -> None:
        self._may_read.set()

    # -- helpers --------------------------------------------------------------

    def _start_writer(self) -> bool:
        if self._writer is not None:
            return True
        writer = threading.Thread(target=self._write_for, name=f"writer-{self.peer_host}",
                                  daemon=True)
        try:
            writer.start()
        except RuntimeError:  # can't start new thread
            return False
        self._writer = writer
        return True

    def _shutdown(self, how: int) -> None:
        with self._send_lock:
            if self._socket_closed:
                return
            try:
                self.sock.shutdown(how)
            except OSError:
                pass  # already disconnected: the reader sees it too

    def _linger_expired(self) -> None:
        if self.connection is not None:
            self.connection.abort("did not close in time")

    def _write_for(self) -> None:
        """The writer thread's body, with the connection's containment around it."""
        try:
            self._drain()
        except Exception as error:
            with self.server.lock:
                if self.connection is not None:
                    self.connection.fail(error)
                else:
                    self.abort()

    def _drain(self) -> None:
        """The writer thread: waits for the socket, outside every shared lock.

        Each send is non-blocking and made under the send lock, so a message
        is either taken by the kernel or still whole in the queue -- never
        stuck inside a blocking send where it could be neither delivered nor
        taken back.  Between sends the thread waits in poll(), holding nothing.
        """
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        while True:
            failure: OSError | None = None
            with self._send_lock:
                while not self.wire and not self._socket_closed:
                    self._end_output_locked()
                    if self.wire or self._drain_watch:
                        break  # TLS's close_notify to send, or a read to wait for
                    self._changed.wait()
                if self._socket_closed:
                    return
                had_output = bool(self.output)
                sent = 0
                if self.wire and self._may_offer():  # else: wait for room, below
                    self._room_left = 0  # (see send_now)
                    try:
                        sent = self.sock.sendmsg(self.wire.buffers(), [], socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError as error:
                        failure = error
                due = self.wire.consume(sent) if sent else []
                drained = had_output and not self.output
                if drained:
                    self._changed.notify_all()
            if failure is not None:
                with self.server.lock:
                    if self.connection is not None:
                        self.connection.abort(f"connection error: {failure.strerror or failure}")
                return
            if due or drained:
                with self.server.lock:
                    for callback in due:
                        callback(True)
                    if drained and self.connection is not None:
                        self.connection.output_drained()
            if not sent:
                # Full: wait until it takes more (an abort's shutdown wakes it too).
                poller.poll(1000)
                self._await_read_after_withdraw(poller)

    def _await_read_after_withdraw(self, poller: select.poll) -> None:
        """If a withdraw emptied the queue while the socket was full, wait for
        the socket to take more -- the client has read -- and say so: no send
        will ever empty the queue, and output_drained clears "not reading"."""
        while True:
            with self._send_lock:
                if self.output or self._socket_closed:
                    self._drain_watch = False
                    return  # more to send: the loop reports when it drains
            if poller.poll(1000):
                break
        with self._send_lock:
            self._drain_watch = False
            if self.output:
                return
        with self.server.lock:
            if self.connection is not None:
                self.connection.output_drained()

    def wait_drained(self, timeout: float) -> None:
        with self._send_lock:
            self._changed.wait_for(lambda: not self.owes_output or self._socket_closed, timeout)

    def close_socket(self) -> None:
        with self._send_lock:
            if self._socket_closed:
                return
            # Unread input first: after SHUT_RD it could no longer be read,
            # and the close would reset the connection.  Then shutdown():
            # close() alone would not wake the writer waiting in poll().
            discard_input(self.sock.fileno())
            self._shutdown(socket.SHUT_RDWR)
            self._socket_closed = True
            self._changed.notify_all()
            self.sock.close()
        if self._linger is not None:
            self._linger.cancel()


class ThreadWebTransport(WebTransport, ThreadTransport):
    """A web connection, plain or TLS (see reactor.web.transport)."""
