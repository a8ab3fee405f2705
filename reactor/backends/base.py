"""What both backends share: the chat service, the listener and a stop switch."""

from __future__ import annotations

import logging
import socket
from abc import ABC, abstractmethod

from reactor.chat import ChatService
from reactor.config import ServerConfig
from reactor.sockets import open_listener

log = logging.getLogger("reactor")


class Server(ABC):
    """A chat server on one listening socket.

    ``serve_forever`` runs until ``stop`` is called (from any thread or a
    signal handler), then tells every client the server is shutting down,
    closes all connections within about ``config.close_linger`` seconds, and
    returns.  The listening socket is bound in ``__init__``, so a port clash
    surfaces as an OSError before anything runs.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.chat = ChatService(config)
        self.listener = open_listener(config)
        self.listener.setblocking(False)
        # Writing a byte here wakes the serving thread from select()/recv().
        self._wakeup_reader, self._wakeup_writer = socket.socketpair()
        self._wakeup_reader.setblocking(False)
        self._wakeup_writer.setblocking(False)
        self._stop_requested = False

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def stop(self) -> None:
        """Ask the server to shut down.  Safe from any thread and from signal handlers."""
        self._stop_requested = True
        try:
            self._wakeup_writer.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken, or already closed

    def serve_forever(self) -> None:
        # Always shown, whatever --log-level: scripts and tests wait for this
        # line to learn the port (with --port 0) and that the server is up.
        log.log(max(logging.INFO, log.getEffectiveLevel()), "Listening on port %d...", self.port)
        try:
            self._serve()
        finally:
            self.listener.close()
            self._wakeup_reader.close()
            self._wakeup_writer.close()
        log.info("Server stopped.")

    @abstractmethod
    def _serve(self) -> None: ...
