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

This module is the acceptor, the reader threads and the end of the pass
(ThreadsServer); a connection's queue and writer thread are its
transport's (reactor.backends.threads_transport, which states the lock
order), and the chat lock is reactor.backends.fair_lock's FairLock.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

from reactor.backends.base import Listener, Server
from reactor.backends.fair_lock import FairLock
from reactor.backends.joins import JoinedFanOuts
from reactor.backends.threads_transport import ThreadTransport, ThreadWebTransport
from reactor.chat import ChatService
from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.handshakes import HandshakeTurns
from reactor.sockets import (
    ACCEPT_RETRY_DELAY,
    RESOURCE_ERRNOS,
    TRANSIENT_ACCEPT_ERRNOS,
    configure_client,
    peer_host,
)
from reactor.timers import Timer, TimerThread
from reactor.transport import Transport
from reactor.web.http import Site
from reactor.web.transport import fan_out_framed

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
