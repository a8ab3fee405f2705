"""The backend contract: what every I/O backend must do, and may assume.

A backend moves bytes between sockets and the chat logic; it decides nothing
about the chat.  To add one, subclass :class:`Server` and
:class:`~reactor.transport.Transport` in one new file under
``reactor/backends/`` and add one line to the registry in
``reactor/backends/__init__.py``; the command line, the tests and the
benchmark all read the registry.  Its constructor takes ``(config, chat)``
(and options of its own as keywords): the chat is built for it by
:mod:`reactor.app`.

**A backend must:**

1. Bind the listeners in ``__init__`` (``Server.__init__`` does), so that a
   busy port is an ``OSError`` before anything runs.  There may be several
   (``self.listeners``): a plain one and a TLS one side by side, or one
   that speaks TLS only, and the admin endpoint's (:meth:`Server.listen_for`);
   accept from every one of them.
2. For every accepted socket, create a transport; if its listener is
   ``tls``, call ``transport.start_tls(self.tls_context())`` -- the
   context at accept time, so that a reload affects new connections only --
   and if it has ``web`` (the web port), make the transport the backend's
   web class (:class:`reactor.web.transport.WebTransport` in front of its
   own) and call ``transport.start_web(listener.web, config.max_line,
   config.output_hard_limit)``;
   then call ``listener.service.connection_made(transport)`` (the chat's,
   or the admin endpoint's), in accept order;
   admission (server full, per-address limit, shutdown) is the chat's
   decision.  The TLS handshake is part of the login: it runs under the
   login timeout, inside the transport, and the chat logic never knows.
3. Hand every chunk read to ``transport.connection.data_received(data)``,
   and end of input as ``data_received(b"")``; a read error is
   ``connection.abort("connection error: ...")``.  While the connection has
   asked to ``pause_reading``, read nothing (its input waits in TCP).
4. Implement the transport's operations without ever blocking the chat:
   ``write`` takes the bytes at once; queued bytes go out as the socket
   allows, and the handoff callbacks that ``OutputBuffer.consume`` returns
   run on the chat thread, after the bytes were taken.  When the queue
   becomes empty, call ``connection.output_drained()``.  Send from
   ``transport.wire`` (``buffers()``/``consume()``), which is the output
   queue itself or, on TLS, a :class:`~reactor.tls.TLSWire` that encrypts
   from it: then a handoff means the message's *ciphertext* was taken.
   On TLS, hand what the socket read to ``transport.tls.receive`` and
   pass on the plaintext; a :class:`~reactor.tls.TLSFailure` (a plaintext
   client, garbage instead of a ClientHello) is one log line from
   :func:`~reactor.tls.log_failure` and an abort, never a traceback; send
   what the wire holds after a read (handshake messages).  On a web
   transport (``transport.web``), hand what was read (after TLS) to
   ``transport.web_received`` instead of the connection; ``send_at_once``
   reaches it through :func:`reactor.web.transport.fan_out_framed`, which
   hands its loops the line's WebSocket frame, never the bare line.
5. ``close()``: drain the queue (on TLS, then send ``close_notify``
   from ``tls.close_notify()``), shut down the write side, keep reading and
   discarding until the peer's EOF or ``config.close_linger`` seconds, then
   close.  ``abort()``: run ``transport.fail_handoffs()`` and close now.
6. Once a socket is closed, for whatever reason, call
   ``connection.connection_lost()`` exactly once.
7. Run every call into the chat logic on one thread at a time -- one loop
   thread, or under one lock -- including timer callbacks
   (:meth:`Server.call_later`), handoff callbacks and callbacks handed in
   from other threads (:meth:`Server.call_soon_threadsafe`).
8. Contain failures: an exception raised while serving one connection
   (its read, its write, its timers) goes to ``connection.fail(error)``,
   which logs it and aborts that connection only.  An exception in the
   backend's own loop is logged, and the server shuts down cleanly with the
   shutdown notice and ``serve_forever()`` returning 1.
9. On :meth:`Server.stop` (from any thread or a signal handler): accept what
   is already in the listen backlogs, stop listening, call
   ``self.shutdown_services()`` (the chat's shutdown), wait up to
   ``config.close_linger`` seconds for connections to close, abort the
   rest, and return from ``serve_forever``.
10. When woken (the wakeup socket), call :meth:`Server.serve_requests` on
   the serving thread: it does a requested reload (SIGHUP).
11. Offer :meth:`Server.call_soon_threadsafe`: from any other thread (a
   worker that hashed a password, a store's reply), run a callback on the
   chat thread (or under the chat lock) soon, in the order of the calls.
   The select backend queues it and writes to its wakeup socket, asyncio
   uses the loop's own ``call_soon_threadsafe`` -- the caller returns at
   once -- and the threads backend runs it on the calling thread under the
   chat lock (so it must never be called with that lock held).  Callbacks
   that come after the server stopped may be dropped.  (When the loop has
   ended, :meth:`Server.serve_forever` calls ``self.chat.close()``, which
   waits for the workers.)

**A backend may** (an optimisation, nothing depends on it) offer
:meth:`Server.send_at_once`: the first sends of a fan-out in one tight loop,
for the connections with nothing queued, where the kernel takes the line
whole; the rest go through ``connection.send`` as ever.

**A backend may assume** that the chat logic never blocks, never calls the
transport from another thread, calls ``close``/``abort`` at most once each
and nothing but ``abort`` after ``close``, and answers every connection it
admits with ``connection_lost`` bookkeeping of its own.
"""

from __future__ import annotations

import logging
import socket
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from reactor import notify
from reactor.chat import ChatService
from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.contracts import SocketLoop, TimerHandle
from reactor.sockets import open_listener
from reactor.tls import HandshakeCounts, TLSCertificate
from reactor.transport import Transport
from reactor.web.http import Site

log = logging.getLogger("reactor")


class Service(Protocol):
    """What a listener's connections are handed to: the chat, or the admin endpoint."""

    def connection_made(self, transport: Transport) -> object: ...

    def shutdown(self) -> None:
        """The server is stopping: tell its connections, start closing them."""

    def close(self) -> None:
        """The server has stopped serving: close what is still open."""


class Listener:
    """One listening socket, whether it speaks TLS, whom its connections are
    for, and what it serves the web (the page and its WebSocket) if it is
    the web port."""

    __slots__ = ("service", "sock", "tls", "web")

    def __init__(self, sock: socket.socket, tls: bool, service: Service,
                 web: Site | None = None) -> None:
        self.sock = sock
        self.tls = tls
        self.service = service
        self.web = web

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


class Server(ABC):
    """A chat server on its listening sockets (plain, TLS, or both).

    ``serve_forever`` runs until ``stop`` is called, then tells every client
    the server is shutting down, closes all connections within about
    ``config.close_linger`` seconds, and returns its exit status (0, or 1 if
    the loop itself failed).
    """


    def __init__(self, config: ServerConfig, chat: ChatService, web: Site | None = None) -> None:
        """Bind the listeners for ``chat``, built by the composition root
        (:func:`reactor.app.make_server`), and for ``web`` on
        ``config.web_port`` if given; if binding fails, the caller closes
        the chat."""
        self.config = config
        # Certificate problems are found before any socket is bound.
        self.certificate: TLSCertificate | None = None
        if config.tls_cert is not None or config.tls_key is not None:
            if config.tls_cert is None or config.tls_key is None:
                raise ValueError("TLS needs both a certificate and a key")
            self.certificate = TLSCertificate(
                config.tls_cert, config.tls_key, config.tls_key_password_file
            )
        elif config.tls_port is not None:
            raise ValueError("a TLS port needs a certificate and a key")
        self.chat = chat
        self.listeners: list[Listener] = []
        try:
            main_is_tls = self.certificate is not None and config.tls_port is None
            self.listeners.append(Listener(open_listener(config), main_is_tls, chat))
            if config.tls_port is not None:
                tls_config = replace(config, port=config.tls_port)
                try:
                    self.listeners.append(Listener(open_listener(tls_config), True, chat))
                except OSError as error:
                    error.port = config.tls_port  # type: ignore[attr-defined]  # for the message
                    raise
            if web is not None and config.web_port is not None:
                web_config = replace(config, host=config.web_host or config.host,
                                     port=config.web_port)
                try:
                    # TLS with the same certificate: https and wss.
                    self.listeners.append(Listener(open_listener(web_config),
                                                   self.certificate is not None, chat, web))
                except OSError as error:
                    error.port = config.web_port  # type: ignore[attr-defined]
                    error.host = web_config.host  # type: ignore[attr-defined]
                    raise
        except BaseException:
            for listener in self.listeners:
                listener.sock.close()
            raise
        for listener in self.listeners:
            listener.sock.setblocking(False)
        self.listener = self.listeners[0].sock  # the main port
        # Writing a byte here wakes the serving thread from select()/recv().
        self._wakeup_reader, self._wakeup_writer = socket.socketpair()
        self._wakeup_reader.setblocking(False)
        self._wakeup_writer.setblocking(False)
        self._stop_requested = False
        self._reload_requested = False
        self.exit_status = 0

    @property
    def port(self) -> int:
        """The main port (TLS if there is no separate TLS port)."""
        return self.listeners[0].port

    @property
    def tls_port(self) -> int | None:
        """The port that speaks TLS, if any."""
        for listener in self.listeners:
            if listener.tls and listener.web is None:
                return listener.port
        return None

    @property
    def web_port(self) -> int | None:
        """The port that serves the page and its WebSocket, if any."""
        for listener in self.listeners:
            if listener.web is not None:
                return listener.port
        return None

    def listen_for(self, service: Service, sock: socket.socket) -> None:
        """Also accept on ``sock`` (a bound, listening socket; plain TCP),
        for ``service``: the admin endpoint's connections, served by this
        backend like the chat's, on the same loop or threads.  Before
        :meth:`serve_forever`, which closes it."""
        sock.setblocking(False)
        self.listeners.append(Listener(sock, False, service))

    @property
    def admin_port(self) -> int | None:
        """The port of the admin endpoint, if it is served."""
        for listener in self.listeners:
            if listener.service is not self.chat:
                return listener.port
        return None

    def shutdown_services(self) -> None:
        """Stopping: the chat tells its users; the other services (the admin
        endpoint) are told too, and are still served while the chat's users
        go (:meth:`service_listeners`): a probe then hears "not ready"."""
        self.chat.shutdown()
        for service in self._other_services():
            service.shutdown()

    def service_listeners(self) -> list[Listener]:
        """The listeners still accepting while the chat's users go: the
        other services' (the admin endpoint), not the chat's."""
        return [listener for listener in self.listeners if listener.service is not self.chat]

    def close_services(self) -> None:
        """The users are gone (or cut): the other services close what they
        still have open."""
        for service in self._other_services():
            service.close()

    def _other_services(self) -> list[Service]:
        return list({id(listener.service): listener.service for listener in self.listeners
                     if listener.service is not self.chat}.values())

    def tls_context(self) -> ssl.SSLContext:
        """The context for a TLS connection accepted now."""
        assert self.certificate is not None
        return self.certificate.context

    def tls_handshakes(self) -> HandshakeCounts:
        """Where a TLS connection accepted now counts its handshake."""
        assert self.certificate is not None
        return self.certificate.handshakes

    def reload(self) -> None:
        """Reload the TLS certificate (SIGHUP).  Safe from signal handlers:
        the serving thread does the work (:meth:`serve_requests`)."""
        if self.certificate is None:
            log.log(max(logging.INFO, log.getEffectiveLevel()), "Nothing to reload")
            return
        self._reload_requested = True
        self._wake()

    def serve_requests(self) -> None:
        """On the serving thread, once woken: do what a signal asked for."""
        if self._reload_requested:
            self._reload_requested = False
            if self.certificate is not None:
                self.certificate.reload()

    def stop(self) -> None:
        """Ask the server to shut down.  Safe from any thread and from signal handlers."""
        self._stop_requested = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wakeup_writer.send(b"\0")
        except OSError:
            pass  # already woken (buffer full), or already closed

    def _drain_wakeups(self) -> None:
        """Empty the wakeup socket (the serving thread, after select() says so)."""
        try:
            while self._wakeup_reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def serve_forever(self) -> int:
        # Always shown, whatever --log-level: scripts and tests wait for this
        # line to learn the port (with --port 0) and that the server is up.
        level = max(logging.INFO, log.getEffectiveLevel())
        for listener in self.listeners:
            if listener.web is not None:
                log.log(level, "Serving the web page on port %d (%s)...", listener.port,
                        "https" if listener.tls else "http")
            elif listener.service is not self.chat:
                log.log(level, "Admin endpoint on port %d (/metrics, /healthz, /readyz)",
                        listener.port)
            elif listener.tls:
                log.log(level, "Listening on port %d (TLS)...", listener.port)
            else:
                log.log(level, "Listening on port %d...", listener.port)
        self.chat.attach(self.call_later, self.call_soon_threadsafe, self.send_at_once,
                         self.socket_loop())
        notify.ready()  # to systemd (Type=notify), if it started us
        try:
            self._serve()
        finally:
            self.chat.close()
            for listener in self.listeners:
                listener.sock.close()
            self._wakeup_reader.close()
            self._wakeup_writer.close()
        log.info("Server stopped.")
        return self.exit_status

    def loop_failed(self, error: BaseException) -> None:
        """The backend's own loop raised: log it and shut down cleanly, status 1."""
        log.critical("Internal error in the %s backend's loop; shutting down",
                     type(self).__name__, exc_info=error)
        self.exit_status = 1
        self._stop_requested = True

    #: ``send_at_once(data, connections, batch)``: hand ``data`` to the kernel
    #: now for those of ``connections`` (a fan-out's recipients, in order)
    #: that have nothing queued and whose socket takes all of it; return the
    #: others, in order, which the chat then sends to with ``connection.send``.
    #: A connection whose socket took part of ``data`` gets the rest queued.
    #: ``batch``: more work handed over together follows in this pass
    #: (``ChatService.together``), so the backend may queue this one for one
    #: send per connection with what follows.  Failures are contained per connection
    #: (item 8).  None: no fast path.
    send_at_once: Callable[[bytes, list[Connection], bool], list[Connection]] | None = None

    def socket_loop(self) -> SocketLoop | None:
        """The backend's event loop, lent to the server's own other sockets
        (the cluster's Redis connections); None without one (threads)."""
        return None

    @abstractmethod
    def _serve(self) -> None: ...

    @abstractmethod
    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the chat thread (or under the chat lock) after ``delay``."""

    @abstractmethod
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback`` on the chat thread (or under the
        chat lock) soon.  Never waits for the chat thread (item 10 above)."""
