"""The threads backend: a thread per connection, in the original's pthread style.

The main thread accepts and starts one reader thread per client.  Every call
into the chat logic happens under one lock -- the original's whiteboard mutex
-- and this module adds no chat logic of its own.

The original's flaw was a blocking ``send()`` to a recipient while holding the
mutex: one client that stopped reading froze everyone.  Here a send under the
lock never blocks: it tries ``send(MSG_DONTWAIT)`` and queues what the kernel
would not take; a writer thread for that one connection (started the first
time it is needed) drains the queue with blocking sends, holding no shared
lock.  A queue past the output limit makes the client a slow consumer, and it
is cut off.  Deadlines (login timeouts, close lingers) are served by one timer
thread, which wakes a blocked reader by shutting its socket down.

Lock order, to stay free of deadlocks: the chat lock, then a session's
``_send_lock``; never the other way round.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import threading
import time

from reactor.backends.base import Server
from reactor.config import ServerConfig
from reactor.session import Phase, Session
from reactor.sockets import (
    ACCEPT_RETRY_DELAY,
    RESOURCE_ERRNOS,
    TRANSIENT_ACCEPT_ERRNOS,
    configure_client,
    peer_host,
)
from reactor.timers import TimerThread

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


class ThreadSession(Session):
    def __init__(self, sock: socket.socket, host: str, server: ThreadsServer) -> None:
        config = server.config
        super().__init__(host, config.max_line, config.output_limit)
        self.sock = sock
        self.server = server
        # Guards the queue, the writer's state and the socket's shutdown and
        # close (so that no shutdown can ever hit a reused descriptor).
        self._send_lock = threading.RLock()
        self._drained = threading.Condition(self._send_lock)
        # Session._queued counts these and also the bytes the writer is
        # sending right now, so that a new send never overtakes them.
        self._chunks: list[bytes] = []
        self._writer: threading.Thread | None = None
        self._shut_after_drain = False
        self._socket_closed = False

    # -- Session transport operations (called under the chat lock) ------------

    def _write(self, data: bytes) -> None:
        with self._send_lock:
            if self._socket_closed:
                return
            if not self._queued:
                try:
                    sent = self.sock.send(data, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as error:
                    self.abort(f"connection error: {error.strerror or error}")
                    return
                if sent == len(data):
                    return
                data = data[sent:]
            self._chunks.append(data)
            self._queued += len(data)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._drain, name=f"writer-{self.peer_host}", daemon=True
                )
                self._writer.start()
            else:
                self._drained.notify_all()

    def _begin_close(self) -> None:
        with self._send_lock:
            if self._queued:
                self._shut_after_drain = True
            else:
                self._shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + self.server.config.close_linger
        self.server.timers.call_at(deadline, self._linger_expired)

    def _abort(self) -> None:
        with self._send_lock:
            self._chunks.clear()
            self._queued = 0
            self._drained.notify_all()
            # Wakes this connection's reader (recv returns) and writer (EPIPE).
            self._shutdown(socket.SHUT_RDWR)

    # -- helpers --------------------------------------------------------------

    def _shutdown(self, how: int) -> None:
        with self._send_lock:
            if self._socket_closed:
                return
            try:
                self.sock.shutdown(how)
            except OSError:
                pass  # already disconnected: the reader sees it too

    def _linger_expired(self) -> None:
        if self.phase is Phase.CLOSING:
            self._shutdown(socket.SHUT_RDWR)

    def _drain(self) -> None:
        """The writer thread: blocking sends, outside every shared lock."""
        while True:
            with self._send_lock:
                while not self._chunks and not self._socket_closed:
                    if self._shut_after_drain:
                        self._shut_after_drain = False
                        self._shutdown(socket.SHUT_WR)
                    self._drained.wait()
                if self._socket_closed:
                    return
                data = b"".join(self._chunks)
                self._chunks.clear()
            try:
                self.sock.sendall(data)
            except OSError as error:
                with self.server.lock:
                    self.abort(f"connection error: {error.strerror or error}")
                return
            with self._send_lock:
                self._queued = max(0, self._queued - len(data))
                if not self._queued:
                    self._drained.notify_all()

    def wait_drained(self, timeout: float) -> None:
        with self._send_lock:
            self._drained.wait_for(lambda: not self._queued or self._socket_closed, timeout)

    def close_socket(self) -> None:
        with self._send_lock:
            if self._socket_closed:
                return
            # shutdown() first: close() alone would not wake a writer blocked
            # in send() on this socket.
            self._shutdown(socket.SHUT_RDWR)
            self._socket_closed = True
            self._drained.notify_all()
            self.sock.close()


class ThreadsServer(Server):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.lock = FairLock()  # the whiteboard mutex
        self.timers = TimerThread(time.monotonic)
        self._readers: dict[threading.Thread, ThreadSession] = {}
        self._readers_changed = threading.Condition()
        threading.stack_size(THREAD_STACK_SIZE)

    def _serve(self) -> None:
        accept_paused_until = 0.0
        try:
            while not self._stop_requested:
                now = time.monotonic()
                watched: list[socket.socket] = [self._wakeup_reader]
                if now >= accept_paused_until:
                    watched.append(self.listener)
                timeout = None if len(watched) == 2 else accept_paused_until - now
                readable, _, _ = select.select(watched, [], [], timeout)
                if self.listener in readable and not self._accept_one():
                    log.error("accept() is out of descriptors; pausing new connections for 1 s")
                    accept_paused_until = time.monotonic() + ACCEPT_RETRY_DELAY
            self._shut_down()
        finally:
            self.timers.stop()

    def _accept_one(self) -> bool:
        """Accept one connection; False if out of resources."""
        try:
            sock, address = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as error:
            if error.errno in TRANSIENT_ACCEPT_ERRNOS:
                return True
            if error.errno in RESOURCE_ERRNOS:
                return False
            raise
        sock.setblocking(True)
        try:
            configure_client(sock, self.config)
        except OSError:
            sock.close()
            return True
        session = ThreadSession(sock, peer_host(address), self)
        # Admitted (or refused) here, in accept order, as in the select
        # backend: were it left to the reader threads, whichever got the lock
        # first would take the last slot, and an earlier client could be told
        # the server is full while a later one gets in.
        with self.lock:
            if self.chat.connection_made(session):
                deadline = time.monotonic() + self.config.login_timeout
                self.timers.call_at(deadline, lambda: self._login_deadline(session))
        reader = threading.Thread(
            target=self._serve_client, args=(session,), name=f"client-{address}", daemon=True
        )
        with self._readers_changed:
            self._readers[reader] = session
        try:
            reader.start()
        except RuntimeError:  # can't start new thread: treat like EMFILE
            with self._readers_changed:
                del self._readers[reader]
            session.close_socket()
            with self.lock:
                self.chat.connection_lost(session)
            return False
        return True

    def _serve_client(self, session: ThreadSession) -> None:
        """A reader thread: the life of one connection, once admitted or refused."""
        try:
            while True:
                try:
                    data = session.sock.recv(READ_SIZE)
                except OSError as error:
                    with self.lock:
                        session.abort(f"connection error: {error.strerror or error}")
                    break
                if not data:
                    with self.lock:
                        # The peer is done sending: answer what it sent, then close.
                        session.close("connection closed by peer")
                    break
                if session.phase is Phase.CLOSING:
                    continue  # input after bye, or while draining, is discarded
                with self.lock:
                    self.chat.data_received(session, data)
            session.wait_drained(self.config.close_linger)
            session.close_socket()
            with self.lock:
                self.chat.connection_lost(session)
        finally:
            with self._readers_changed:
                self._readers.pop(threading.current_thread(), None)
                self._readers_changed.notify_all()

    def _login_deadline(self, session: ThreadSession) -> None:
        with self.lock:
            self.chat.login_timed_out(session)

    def _shut_down(self) -> None:
        """Tell everyone, give them ``close_linger`` to go, then cut the rest."""
        # Clients already in the listen backlog have connected as far as they
        # can tell: accept them so that they are told too, rather than reset.
        for _ in range(self.config.backlog):
            if not select.select([self.listener], [], [], 0)[0] or not self._accept_one():
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
                for session in stragglers.values():
                    session.abort("server stopped")
            for reader in stragglers:
                reader.join(timeout=1.0)
