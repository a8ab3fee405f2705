"""What the chat logic knows of one connection, whatever the backend.

A backend subclasses :class:`Session` and supplies the three transport
operations (``_write``, ``_begin_close``, ``_abort``); everything else -- the
login state, the receive buffer, the output limit policy -- is here once.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod

from protocol import LineBuffer


class Phase(enum.Enum):
    LOGIN = "awaiting username"
    CHATTING = "chatting"
    CLOSING = "closing"  # no more input is processed; queued output drains
    CLOSED = "closed"


class Session(ABC):
    """One client connection as the chat logic sees it.

    ``send`` never blocks: a backend either writes at once or queues.  When a
    client's queue would pass ``output_limit`` the client is a slow consumer
    and is aborted, so that nobody else ever waits for it.
    """

    def __init__(self, peer_host: str, max_line: int, output_limit: int) -> None:
        self.peer_host = peer_host
        # True while LOGIN or CHATTING.  A plain attribute, kept in step by the
        # phase setter, because every delivery of every fan-out reads it.
        self.is_open = True
        self._phase = Phase.LOGIN
        self.username: str | None = None
        self.buffer = LineBuffer(max_line)
        self.output_limit = output_limit
        # Bytes queued and not yet handed to the kernel; the backend keeps it.
        self._queued = 0
        # Why the connection ended, for the log; set by the first close/abort.
        self.close_reason: str | None = None

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, phase: Phase) -> None:
        self._phase = phase
        self.is_open = phase is Phase.LOGIN or phase is Phase.CHATTING

    def send(self, data: bytes) -> None:
        """Queue ``data`` for this client (a no-op once it is closing)."""
        if not self.is_open:
            return
        if self._queued + len(data) > self.output_limit:
            self.abort(f"slow consumer: more than {self.output_limit} bytes of output queued")
            return
        self._write(data)

    def close(self, reason: str) -> None:
        """Stop reading, let queued output drain, then close the connection."""
        if not self.is_open:
            return
        self.phase = Phase.CLOSING
        self.close_reason = reason
        self._begin_close()

    def abort(self, reason: str) -> None:
        """Drop the connection now, discarding queued output."""
        if self.phase is Phase.CLOSED:
            return
        if self.close_reason is None or self.phase is not Phase.CLOSING:
            self.close_reason = reason
        self.phase = Phase.CLOSING
        self._abort()

    def pending_output(self) -> int:
        """Bytes queued and not yet handed to the kernel."""
        return self._queued

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abstractmethod
    def _begin_close(self) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...

    def __repr__(self) -> str:
        who = self.username or "(no name yet)"
        return f"<{type(self).__name__} {who} from {self.peer_host} {self.phase.name}>"
