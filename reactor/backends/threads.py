"""The threads backend: a thread per connection, in the original's pthread style.

The main thread accepts and starts one reader thread per client.  Every call
into the chat logic happens under one lock -- the original's whiteboard mutex
-- and this module adds no chat logic of its own.

The original's flaw was a blocking ``send()`` to a recipient while holding the
mutex: one client that stopped reading froze everyone.  Here a send under the
lock never blocks: it tries ``send(MSG_DONTWAIT)`` and queues what the kernel
would not take; a writer thread for that one connection (started the first
time it is needed) drains the queue with blocking sends, holding no shared
lock, and takes the chat lock only to report what it sent.  Deadlines (login
timeouts, close lingers, flood-control retries) are served by one timer
thread, under the chat lock.

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
import threading
import time
from collections.abc import Callable

from reactor.backends.base import Listener, Server
from reactor.chat import ChatService
from reactor.config import ServerConfig
from reactor.outbuf import Entry, Handoff
from reactor.sockets import (
    ACCEPT_RETRY_DELAY,
    RESOURCE_ERRNOS,
    TRANSIENT_ACCEPT_ERRNOS,
    configure_client,
    discard_input,
    peer_host,
)
from reactor.timers import Timer, TimerThread
from reactor.tls import TLSFailure, log_failure
from reactor.transport import Transport

log = logging.getLogger("reactor")

# Each chunk is handled under the chat lock, so its size bounds how long one
# client holds everybody else up: small, as in the select backend.
READ_SIZE = 16 * 1024
# Thousands of threads each reserving the default 8 MiB of stack address
# space is wasteful; our per-connection code needs little.
THREAD_STACK_SIZE = 512 * 1024


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

    __slots__ = ("_guard", "_held", "_waiters")

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._waiters: collections.deque[threading.Lock] = collections.deque()

    def acquire(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            baton = threading.Lock()
            baton.acquire()
            self._waiters.append(baton)
        baton.acquire()  # released by the holder's release(): the lock is ours

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().release()  # still held, by the next in line
            else:
                self._held = False

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ThreadTransport(Transport):
    def __init__(self, sock: socket.socket, host: str, server: ThreadsServer) -> None:
        super().__init__(host)
        self.sock = sock
        self.server = server
        # Guards the output queue, the writer's state and the socket's
        # shutdown and close (so that no shutdown can hit a reused descriptor).
        self._send_lock = threading.RLock()
        self._changed = threading.Condition(self._send_lock)
        self._writer: threading.Thread | None = None
        self._closing = False
        self._write_shut = False
        self._socket_closed = False
        self._linger: Timer | None = None
        # Set while the reader may read; cleared by pause_reading.
        self._may_read = threading.Event()
        self._may_read.set()

    # -- the chat logic's operations (called under the chat lock) -------------

    def write(self, data: bytes, on_handoff: Handoff | None = None) -> Entry | None:
        if self.tls is not None:
            return self._write_tls(data, on_handoff)
        failure: str | None = None
        entry: Entry | None = None
        queued = False
        with self._send_lock:
            if self._socket_closed:
                failure = "closed"
            else:
                sent = 0
                if not self.output:
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

    def withdraw(self, entry: Entry) -> bool:
        # The writer reads and consumes the queue under the send lock, with
        # sendmsg in between: without it, an entry could be sent and also
        # withdrawn ("not delivered"), and consume() would pop the wrong ones.
        with self._send_lock:
            return self.output.withdraw(entry)

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
        if wire:
            try:
                sent = self.sock.sendmsg(wire.buffers(), [], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                return due, f"connection error: {error.strerror or error}"
            due = wire.consume(sent) if sent else []
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
        with self._send_lock:
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
            if plain:
                connection.data_received(plain)
            if ended:
                connection.data_received(b"")
        return ended

    def flush(self) -> None:
        pass  # the writer thread sends whenever the socket takes more

    def close(self) -> None:
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
                    if self.wire:
                        break  # TLS's close_notify, to send
                    self._changed.wait()
                if self._socket_closed:
                    return
                had_output = bool(self.output)
                try:
                    sent = self.sock.sendmsg(self.wire.buffers(), [], socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as error:
                    sent, failure = 0, error
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
                    return  # more to send: the loop reports when it drains
            if poller.poll(1000):
                break
        with self._send_lock:
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


class ThreadsServer(Server):
    def __init__(self, config: ServerConfig, chat: ChatService) -> None:
        super().__init__(config, chat)
        self.lock = FairLock()  # the whiteboard mutex
        self.timers = TimerThread(time.monotonic)
        self._readers: dict[threading.Thread, ThreadTransport] = {}
        self._readers_changed = threading.Condition()
        threading.stack_size(THREAD_STACK_SIZE)

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
                        refusal = self._accept_one(listener)
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

    def _accept_one(self, listener: Listener) -> str | None:
        """Accept one connection; the reason if out of resources, else None."""
        try:
            sock, address = listener.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as error:
            if error.errno in TRANSIENT_ACCEPT_ERRNOS:
                return None
            if error.errno in RESOURCE_ERRNOS:
                return f"accept() failed: {error.strerror}"
            raise
        sock.setblocking(True)
        try:
            configure_client(sock, self.config)
        except OSError:
            sock.close()
            return None
        transport = ThreadTransport(sock, peer_host(address), self)
        if listener.tls:
            transport.start_tls(self.tls_context())
        # Admitted (or refused) here, in accept order, as in the select
        # backend: were it left to the reader threads, whichever got the lock
        # first would take the last slot.
        with self.lock:
            self.chat.connection_made(transport)
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
            self._finish(transport, "cannot start a thread for it")
            return "cannot start a thread for a new connection"
        return None

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
        """Tell everyone, give them ``close_linger`` to go, then cut the rest."""
        # Clients already in the listen backlog have connected as far as they
        # can tell: accept them so that they are told too, rather than reset.
        for listener in self.listeners:
            for _ in range(self.config.backlog):
                if not select.select([listener.sock], [], [], 0)[0] or self._accept_one(listener):
                    break
        with self.lock:
            self.chat.shutdown()
        deadline = time.monotonic() + self.config.close_linger
        with self._readers_changed:
            self._readers_changed.wait_for(
                lambda: not self._readers, max(0.0, deadline - time.monotonic())
            )
            stragglers = dict(self._readers)
        if stragglers:
            with self.lock:
                for transport in stragglers.values():
                    transport.abort()
            for reader in stragglers:
                reader.join(timeout=1.0)
