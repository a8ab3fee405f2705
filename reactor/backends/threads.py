"""The threads backend: a thread per connection, in the original's pthread style.

The main thread accepts and starts one reader thread per client; what a
client sent with its connection (its login, typically) the acceptor serves
in its own turn, before the reader exists.  Every call into the chat logic
happens under one lock -- the original's whiteboard mutex -- and this module
adds no chat logic of its own.

The original's flaw was a blocking ``send()`` to a recipient while holding the
mutex: one client that stopped reading froze everyone.  Here a send under the
lock never blocks: it tries ``send(MSG_DONTWAIT)`` and queues what the kernel
would not take; a writer thread for that one connection (started the first
time it is needed) drains the queue with blocking sends, holding no shared
lock, and takes the chat lock only to report what it sent.  Deadlines (login
timeouts, close lingers, flood-control retries) are served by one timer
thread, under the chat lock.

While other threads wait for the chat lock, output is queued rather than
sent, and the holder that ends the *pass* -- once every thread that waited at
its start has had its turn, as the select backend's pass serves every
connection ready at its start -- sends it, one send per client.  A storm of
logins, each announced to everyone, then costs each client one system call
per pass rather than one per login (see ``ThreadsServer._end_turn``).

Lock order, to stay free of deadlocks: the chat lock, then a transport's
``_send_lock``; never the other way round, and no callback runs under a
``_send_lock``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
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
from reactor.timers import Timer, TimerThread
from reactor.tls import TLSFailure, log_failure
from reactor.transport import Transport
from reactor.web.http import Site
from reactor.web.transport import WebTransport, fan_out_framed

log = logging.getLogger("reactor")

# Each chunk is handled under the chat lock, so its size bounds how long one
# client holds everybody else up: small, as in the select backend.
READ_SIZE = 16 * 1024
# Thousands of threads each reserving the default 8 MiB of stack address
# space is wasteful; our per-connection code needs little.
THREAD_STACK_SIZE = 512 * 1024
# Connections accepted and admitted in one turn of the chat lock.
ACCEPTS_PER_TURN = 128
# Seconds for the readers cut at the end of a shutdown to finish, all told.
STRAGGLERS_JOIN_TIMEOUT = 1.0
# What a TLS read waits for once the handshake is done: nothing.
_NO_TURN = contextlib.nullcontext()


class FairLock:
    """A mutex that is handed to its waiters in arrival order.

    ``threading.Lock`` lets the releasing thread take it straight back, and a
    reader thread whose client floods does exactly that: release, ``recv()``
    (more is already there), acquire.  Measured with two clients flooding
    ``users``: a third client's round trips had a median of 0.05 ms but a
    tail of 0.5-1.3 s.  Here ``release`` hands ownership to the longest
    waiter, so every client waits at most one turn of each of the others
    (the same tail: 0.12 s).  Uncontended, it costs one extra mutex.
    """

    __slots__ = ("_before_release", "_guard", "_held", "_waiters", "turns")

    def __init__(self, before_release: Callable[[], None] | None = None) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._waiters: collections.deque[threading.Lock] = collections.deque()
        # Run by the holder as it leaves (``with`` only): the end of its turn.
        self._before_release = before_release
        self.turns = 0  # how many times the lock has been taken

    @property
    def waiting(self) -> int:
        """Threads queued for the lock (read without the guard: a hint)."""
        return len(self._waiters)

    def acquire(self, first: bool = False) -> None:
        """Wait for the lock; ``first``: ahead of every thread waiting."""
        with self._guard:
            if not self._held:
                self._held = True
                self.turns += 1
                return
            baton = threading.Lock()
            baton.acquire()
            if first:
                self._waiters.appendleft(baton)
            else:
                self._waiters.append(baton)
        baton.acquire()  # released by the holder's release(): the lock is ours

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self.turns += 1
                self._waiters.popleft().release()  # still held, by the next in line
            else:
                self._held = False

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    @contextlib.contextmanager
    def first(self) -> Iterator[None]:
        """``with lock:``, ahead of every thread waiting."""
        self.acquire(first=True)
        try:
            yield
        finally:
            self.__exit__()

    def __exit__(self, *exc: object) -> None:
        try:
            if self._before_release is not None:
                self._before_release()
        finally:
            self.release()


class ThreadTransport(KernelRoom, Transport):
    def __init__(self, sock: socket.socket, host: str, server: ThreadsServer) -> None:
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


class ThreadsServer(Server, JoinedFanOuts):
    def __init__(self, config: ServerConfig, chat: ChatService, web: Site | None = None) -> None:
        super().__init__(config, chat, web)
        self.lock = FairLock(self._end_turn)  # the whiteboard mutex
        # Transports with output queued in this pass (see _end_turn), and
        # the lock's turn count at which the pass is over.
        self._pending: list[ThreadTransport] = []
        self._pass_end = 0
        JoinedFanOuts.__init__(self)  # a turn: one hold of the chat lock
        self.timers = TimerThread(time.monotonic)
        self._readers: dict[threading.Thread, ThreadTransport] = {}
        self._readers_changed = threading.Condition()
        # TLS handshake steps running, and the readers waiting for a turn,
        # each on a lock of its own that the step before it releases.
        self._handshakes: HandshakeTurns[threading.Lock] = HandshakeTurns()
        self._handshakes_guard = threading.Lock()
        threading.stack_size(THREAD_STACK_SIZE)

    @contextlib.contextmanager
    def handshake_turn(self, host: str) -> Iterator[None]:
        """Wait for a turn to run a TLS handshake step (reactor.handshakes):
        a few readers at once and one per address, so that a flood of
        handshakes leaves the cores and the GIL to established users.  The
        waiting readers sleep; each finished step wakes the next in turn."""
        with self._handshakes_guard:
            baton: threading.Lock | None = None
            if not self._handshakes.try_start(host):
                baton = threading.Lock()
                baton.acquire()
                self._handshakes.wait(host, baton)
        if baton is not None:
            baton.acquire()  # released by the step before ours: the turn is ours
        try:
            yield
        finally:
            with self._handshakes_guard:
                following = self._handshakes.finish(host)
            if following is not None:
                following.release()

    # -- one send per client per pass -------------------------------------------

    def want_settle(self, transport: ThreadTransport) -> None:
        """Under the chat lock: ``transport`` has output queued for the end of the pass."""
        if not self._pending:
            # The pass: a turn for each thread waiting now, as the select
            # backend's pass serves each connection ready at its start.
            self._pass_end = self.lock.turns + self.lock.waiting
        transport._in_pending = True
        self._pending.append(transport)

    def _end_turn(self) -> None:
        """The lock's holder is leaving.  At the end of a pass -- nobody
        waits, or every thread that waited at its start has had its turn --
        it sends what the pass queued, one send per client.

        While others wait, a login's notice to each user online is queued,
        not sent: a storm of logins then costs each user one system call
        per pass instead of one per login, as in the select backend.  The
        holder sends under the chat lock, as a fan-out always has; a send
        that would block is left to the client's writer thread.
        """
        if self._joined_to is not None:
            self._end_joins()  # (fan-outs join within one turn)
        if not self._pending:
            return
        lock = self.lock
        if lock.waiting and lock.turns < self._pass_end:
            return  # others of this pass still to come: their output shares the sends
        while self._pending:  # (what the handoffs queue goes out too)
            pending, self._pending = self._pending, []
            for transport in pending:
                transport._in_pending = False
                try:
                    transport.settle()
                except Exception as error:
                    if transport.connection is not None:
                        transport.connection.fail(error)
                    else:
                        transport.abort()

    def send_at_once(self, data: bytes, connections: list[Connection],
                     batch: bool = False) -> list[Connection]:
        """A fan-out (see Server.send_at_once): queued in one loop, at half
        the Python work of ``connection.send`` (whose limit checks a queue
        below the high-water mark passes anyway), and sent at the end of
        the pass -- at the end of this turn if nobody waits, which costs
        the sends that writing through would.  Returns the others (TLS,
        closed, over the mark).  Web connections take it too, with the
        line's frame (reactor.web.transport.fan_out_framed).  Fan-outs of
        one turn to the same recipients are joined (reactor.backends.joins)."""
        turn = self.lock.turns
        if self._joined_to is not None and self._join(data, connections, turn):
            return []
        rest = fan_out_framed(self._queue_each, data, connections)
        if not rest:  # the next fan-out to the same recipients may join this one
            self._joined_to, self._joined_turn = connections, turn
        return rest

    def _queue_each(self, data: bytes, connections: list[Connection],
                    web: list[Connection] | None) -> list[Connection]:
        """send_at_once's loop (see FanOutLoop in reactor.web.transport),
        and the joined fan-outs' (JoinedFanOuts._join_loop)."""
        size = len(data)
        high_water = self.config.output_high_water
        rest: list[Connection] = []
        for connection in connections:
            transport: ThreadTransport = connection.transport  # type: ignore[assignment]
            if transport.web is not None and web is not None:
                wire = transport.web
                (web if wire.upgraded and not wire.closing else rest).append(connection)
                continue
            output = transport.output
            if (transport.tls is not None or transport._socket_closed or not connection.is_open
                    or output.size + size > high_water):
                rest.append(connection)
                continue
            if transport._writer is None:
                # No writer thread yet: only the chat lock's holder touches
                # a plain transport's queue (the writer is started under it).
                output.append(data)
            else:
                with transport._send_lock:
                    output.append(data)
            if not transport._in_pending:
                self.want_settle(transport)
        return rest

    _join_loop = _queue_each

    def _join_gone(self, transport: Transport) -> bool:
        thread_transport = cast(ThreadTransport, transport)
        return thread_transport._socket_closed or thread_transport._closing

    def _join_leaving(self, transport: Transport, data: bytes) -> None:
        thread_transport = cast(ThreadTransport, transport)
        with thread_transport._send_lock:
            thread_transport.output.append(data)
        if not thread_transport._in_pending:
            self.want_settle(thread_transport)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        def locked() -> None:
            try:
                with self.lock:
                    callback()
            except Exception as error:
                # A connection's timers contain their own failures; what gets
                # here is the server's (housekeeping): never let it kill the
                # timer thread, which would leave the server without timers.
                self.loop_failed(error)
                self._wake()

        return self.timers.call_at(time.monotonic() + delay, locked)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        # The calling thread (a worker) runs it itself, under the chat lock:
        # the lock is the threads backend's chat thread.
        with self.lock:
            callback()

    def _serve(self) -> None:
        accept_paused_until = 0.0
        # A signal may be delivered to any thread -- with a thread per
        # client, most likely not to this one, blocked in select() -- and
        # Python runs its handler here only when this thread next runs.  So
        # every signal also writes a byte to the wakeup socket.
        previous_wakeup_fd: int | None = None
        if threading.current_thread() is threading.main_thread():
            previous_wakeup_fd = signal.set_wakeup_fd(self._wakeup_writer.fileno(),
                                                      warn_on_full_buffer=False)
        try:
            while not self._stop_requested:
                try:
                    now = time.monotonic()
                    watched: list[socket.socket] = [self._wakeup_reader]
                    accepting = now >= accept_paused_until
                    if accepting:
                        watched += [listener.sock for listener in self.listeners]
                    timeout = None if accepting else accept_paused_until - now
                    readable, _, _ = select.select(watched, [], [], timeout)
                    if self._wakeup_reader in readable:
                        self._drain_wakeups()
                        self.serve_requests()
                    for listener in self.listeners:
                        if listener.sock not in readable:
                            continue
                        refusal = self._accept_batch(listener, ACCEPTS_PER_TURN)
                        if refusal:
                            log.error("%s; pausing new connections for %.0f s",
                                      refusal, ACCEPT_RETRY_DELAY)
                            accept_paused_until = time.monotonic() + ACCEPT_RETRY_DELAY
                            break
                except Exception as error:
                    self.loop_failed(error)
            self._shut_down()
        finally:
            if previous_wakeup_fd is not None:
                signal.set_wakeup_fd(previous_wakeup_fd)
            self.timers.stop()

    def _accept_batch(self, listener: Listener, limit: int) -> str | None:
        """Accept what waits (up to ``limit``), admit it in one turn of the
        chat lock and serve what it sent in a second; the reason if out of
        resources, else None.

        Turns for the batch, not per connection: in a login storm every
        turn waits behind the logins queued for the lock.
        """
        accepted: list[tuple[socket.socket, object]] = []
        refusal: str | None = None
        for _ in range(limit):
            try:
                sock, address = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                if error.errno in TRANSIENT_ACCEPT_ERRNOS:
                    continue
                if error.errno in RESOURCE_ERRNOS:
                    refusal = f"accept() failed: {error.strerror}"
                    break
                for sock, _address in accepted:
                    sock.close()
                raise
            accepted.append((sock, address))
        transports: list[tuple[ThreadTransport, object]] = []
        for sock, address in accepted:
            sock.setblocking(True)
            try:
                configure_client(sock, self.config)
            except OSError:
                sock.close()
                continue
            if listener.web is not None:
                web_transport = ThreadWebTransport(sock, peer_host(address), self)
                web_transport.start_web(listener.web, self.config.max_line,
                                        self.config.output_hard_limit)
                transport: ThreadTransport = web_transport
            else:
                transport = ThreadTransport(sock, peer_host(address), self)
            if listener.tls:
                transport.start_tls(self.tls_context(), self.tls_handshakes())
            transports.append((transport, address))
        if not transports:
            return refusal
        # Admitted (or refused) here, in accept order, as in the select
        # backend: were it left to the reader threads, whichever got the lock
        # first would take the last slot.  Ahead of the readers waiting: a
        # short turn, and in a storm every login waits for it.
        with self.lock.first():
            for transport, _address in transports:
                listener.service.connection_made(transport)
        # What they sent with their connections, in a turn behind the readers
        # waiting: an earlier client's reader holding its first line keeps
        # its place, so logins are still announced in the order they came.
        with self.lock:
            for transport, _address in transports:
                self._serve_arrived(transport)
        for index, (transport, address) in enumerate(transports):
            reader = threading.Thread(
                target=self._serve_client, args=(transport,), name=f"client-{address}", daemon=True
            )
            with self._readers_changed:
                self._readers[reader] = transport
            try:
                reader.start()
            except RuntimeError:  # can't start new thread
                with self._readers_changed:
                    del self._readers[reader]
                for unserved, _address in transports[index:]:
                    self._finish(unserved, "cannot start a thread for it")
                return "cannot start a thread for a new connection"
        return refusal

    @staticmethod
    def _serve_arrived(transport: ThreadTransport) -> None:
        """In the acceptor's turn: what a new client sent with its connection
        (in a storm, its login), served before its reader thread exists.

        As the select backend's pass serves every connection ready at its
        start, the logins accepted together are handled in one turn and
        announced in one send per user, instead of each waiting for its new
        reader thread to start, wake on its data and queue for the lock.
        """
        if transport.tls is not None or transport._closing:
            return  # a TLS handshake is the reader's; a refused client is closing
        connection = transport.connection
        assert connection is not None
        try:
            data = transport.sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return  # nothing yet: the reader waits for it
        except OSError as error:
            connection.abort(f"connection error: {error.strerror or error}")
            return  # (the reader then reads to the end and finishes)
        if data:  # (an end of input is the reader's: it sees it again)
            try:
                if transport.web is not None:
                    transport.web_received(data)
                else:
                    connection.data_received(data)
            except Exception as error:  # that connection's, as in its reader
                connection.fail(error)

    def _serve_services_until(self, deadline: float) -> None:
        """While the chat's users go (by ``deadline``), the other services'
        listeners (the admin endpoint) still accept (see shutdown_services).
        A reader that ends wakes this thread (see _serve_client)."""
        listeners = self.service_listeners()
        watched = [self._wakeup_reader] + [listener.sock for listener in listeners]
        while True:
            if self.chat.connection_count == 0:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            readable, _, _ = select.select(watched, [], [], remaining)
            if self._wakeup_reader in readable:
                self._drain_wakeups()
            for listener in listeners:
                if listener.sock in readable and self._accept_batch(listener, ACCEPTS_PER_TURN):
                    return  # out of resources: the users' readers are waited for below

    def _serve_client(self, transport: ThreadTransport) -> None:
        """A reader thread: the life of one connection, once admitted or refused."""
        connection = transport.connection
        assert connection is not None
        reason = "connection closed"
        try:
            while True:
                transport._may_read.wait()
                try:
                    data = transport.sock.recv(READ_SIZE)
                except OSError as error:
                    reason = f"connection error: {error.strerror or error}"
                    break
                if transport._closing:
                    if not data:
                        break
                    if transport.tls is not None and not transport.tls.handshake_done:
                        # Closed before the handshake completed (server full,
                        # shutting down): complete it, so the notice can be sent.
                        transport.received_tls(data)
                    continue  # input after bye, or while draining, is discarded
                if transport.tls is not None:
                    ended = transport.received_tls(data)
                else:
                    with self.lock:
                        if transport.web is not None:
                            transport.web_received(data)
                        else:
                            connection.data_received(data)
                    ended = not data
                if ended:
                    # The peer is done sending: the connection answers what
                    # it sent, then closes; wait for that, then for the drain.
                    with transport._send_lock:
                        transport._changed.wait_for(lambda: transport._closing)
                    break
        except Exception as error:
            with self.lock:
                connection.fail(error)
        finally:
            self._finish(transport, reason)
            with self._readers_changed:
                self._readers.pop(threading.current_thread(), None)
                self._readers_changed.notify_all()
            if self._stop_requested:
                self._wake()  # (see _serve_services_until)

    def _finish(self, transport: ThreadTransport, reason: str) -> None:
        """Close the socket (after a drain, if it is closing) and report it lost."""
        connection = transport.connection
        if not transport._closing:
            with self.lock:
                if connection is not None:
                    connection.abort(reason)
        transport.wait_drained(self.config.close_linger)
        transport.close_socket()
        with self.lock:
            if connection is not None:
                connection.connection_lost()

    def _shut_down(self) -> None:
        """Tell everyone, give them ``close_linger`` to go, then cut the rest.

        What is queued for them and not yet started is dropped (the chat's
        shutdown does it), so the notice does not wait behind a backlog.
        """
        with self.lock:
            self.shutdown_services()
        deadline = time.monotonic() + self.config.close_linger
        # Clients already in the listen backlog have connected as far as they
        # can tell: accept them so that they are told too, rather than reset.
        # Accepted after the chat's shutdown, they are told at once, and
        # their logins cost nothing.
        for listener in self.listeners:
            while select.select([listener.sock], [], [], 0)[0]:
                if self._accept_batch(listener, ACCEPTS_PER_TURN):
                    break
                if time.monotonic() >= deadline:
                    break
        self._serve_services_until(deadline)
        with self.lock:
            self.close_services()
        with self._readers_changed:
            self._readers_changed.wait_for(
                lambda: not self._readers, max(0.0, deadline - time.monotonic())
            )
            stragglers = dict(self._readers)
        if stragglers:
            with self.lock:
                for transport in stragglers.values():
                    transport.abort()
            # One bound for them all: each needs the lock once more to go.
            joined_by = time.monotonic() + STRAGGLERS_JOIN_TIMEOUT
            for reader in stragglers:
                reader.join(timeout=max(0.0, joined_by - time.monotonic()))
