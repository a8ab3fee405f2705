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
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Callable

from reactor.backends.base import Server
from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.outbuf import Entry, Handoff
from reactor.sockets import (
    ACCEPT_RETRY_DELAY,
    RESOURCE_ERRNOS,
    TRANSIENT_ACCEPT_ERRNOS,
    configure_client,
    peer_host,
)
from reactor.timers import Timer, TimerThread
from reactor.transport import Transport
from reactor.whiteboard import Whiteboard

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
        failure: str | None = None
        entry: Entry | None = None
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
                    entry = self.output.append(memoryview(data)[sent:] if sent else data,
                                               on_handoff)
                    entry.started = sent > 0
                    if self._start_writer():
                        self._changed.notify_all()
                    else:
                        failure = "cannot start a writer thread"
        # Callbacks and aborts run outside the send lock.
        if failure is None:
            if entry is None and on_handoff is not None:
                on_handoff(True)
            return entry
        if entry is not None:
            # Queued, but nobody can send it: abort() reports it not handed over.
            log.error("Cannot start a writer thread for %r; closing that connection",
                      self.connection)
        elif on_handoff is not None:
            on_handoff(False)
        if self.connection is not None and failure != "closed":
            self.connection.abort(failure)
        return None

    def flush(self) -> None:
        pass  # the writer thread sends whenever the socket takes more

    def close(self) -> None:
        with self._send_lock:
            self._closing = True
            self._may_read.set()  # read and discard until the peer's FIN
            if not self.output:
                self._shutdown(socket.SHUT_WR)
                self._write_shut = True
            self._changed.notify_all()
        self._linger = self.server.call_later(self.server.config.close_linger, self._linger_expired)

    def abort(self) -> None:
        with self._send_lock:
            waiting = self.output.clear()
            self._closing = True
            self._may_read.set()
            self._changed.notify_all()
            # Wakes this connection's reader (recv returns) and writer (EPIPE).
            self._shutdown(socket.SHUT_RDWR)
        for callback in waiting:
            callback(False)

    def pause_reading(self) -> None:
        if not self._closing:
            self._may_read.clear()

    def resume_reading(self) -> None:
        self._may_read.set()

    # -- helpers --------------------------------------------------------------

    def _start_writer(self) -> bool:
        if self._writer is not None:
            return True
        writer = threading.Thread(target=self._drain, name=f"writer-{self.peer_host}",
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
                while not self.output and not self._socket_closed:
                    if self._closing and not self._write_shut:
                        self._write_shut = True
                        self._shutdown(socket.SHUT_WR)
                    self._changed.wait()
                if self._socket_closed:
                    return
                try:
                    sent = self.sock.sendmsg(self.output.buffers(), [], socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as error:
                    sent, failure = 0, error
                due = self.output.consume(sent)
                drained = not self.output
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

    def wait_drained(self, timeout: float) -> None:
        with self._send_lock:
            self._changed.wait_for(lambda: not self.output or self._socket_closed, timeout)

    def close_socket(self) -> None:
        with self._send_lock:
            if self._socket_closed:
                return
            # shutdown() first: close() alone would not wake a writer blocked
            # in send() on this socket.
            self._shutdown(socket.SHUT_RDWR)
            self._socket_closed = True
            self._changed.notify_all()
            self.sock.close()
        if self._linger is not None:
            self._linger.cancel()


class ThreadsServer(Server):
    def __init__(
        self, config: ServerConfig, whiteboard: Whiteboard[Connection] | None = None
    ) -> None:
        super().__init__(config, whiteboard)
        self.lock = FairLock()  # the whiteboard mutex
        self.timers = TimerThread(time.monotonic)
        self._readers: dict[threading.Thread, ThreadTransport] = {}
        self._readers_changed = threading.Condition()
        threading.stack_size(THREAD_STACK_SIZE)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        def locked() -> None:
            with self.lock:
                callback()

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
                    if now >= accept_paused_until:
                        watched.append(self.listener)
                    timeout = None if len(watched) == 2 else accept_paused_until - now
                    readable, _, _ = select.select(watched, [], [], timeout)
                    if self._wakeup_reader in readable:
                        self._drain_wakeups()
                    if self.listener in readable:
                        refusal = self._accept_one()
                        if refusal:
                            log.error("%s; pausing new connections for %.0f s",
                                      refusal, ACCEPT_RETRY_DELAY)
                            accept_paused_until = time.monotonic() + ACCEPT_RETRY_DELAY
                except Exception as error:
                    self.loop_failed(error)
            self._shut_down()
        finally:
            if previous_wakeup_fd is not None:
                signal.set_wakeup_fd(previous_wakeup_fd)
            self.timers.stop()

    def _drain_wakeups(self) -> None:
        try:
            while self._wakeup_reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _accept_one(self) -> str | None:
        """Accept one connection; the reason if out of resources, else None."""
        try:
            sock, address = self.listener.accept()
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
                    continue  # input after bye, or while draining, is discarded
                with self.lock:
                    connection.data_received(data)
                if not data:
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
        for _ in range(self.config.backlog):
            if not select.select([self.listener], [], [], 0)[0] or self._accept_one():
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
