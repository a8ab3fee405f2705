"""The backend contract for one connection: what the chat logic may ask of it.

A backend supplies one :class:`Transport` per accepted socket.  The chat logic
(:class:`~reactor.connection.Connection` and
:class:`~reactor.chat.ChatService`) calls only the methods below, always on the
backend's chat thread -- the select loop, the asyncio loop, or any thread that
holds the threads backend's chat lock -- and never expects one to block.

What the backend promises in return is stated on
:class:`~reactor.backends.base.Server`, the other half of the contract.
"""

from __future__ import annotations

import ssl
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from reactor.contracts import ConnectionEvents, SocketLoop, TimerHandle
from reactor.outbuf import Entry, Handoff, OutputBuffer
from reactor.tls import HandshakeCounts, TLSWire

if TYPE_CHECKING:
    from reactor.web.wire import WebWire

__all__ = ["SocketLoop", "TimerHandle", "Transport"]


class Transport(ABC):
    """One client's byte pipe, as the chat logic sees it.

    ``output`` is the connection's :class:`~reactor.outbuf.OutputBuffer`; the
    backend moves bytes out of it and runs the handoff callbacks that
    ``consume`` returns, on the chat thread.

    ``wire`` is what the backend sends from: ``output`` itself, or on a TLS
    connection (:meth:`start_tls`) a :class:`~reactor.tls.TLSWire` that
    encrypts from ``output``.  Both offer ``buffers()`` for one send,
    ``consume(sent)`` for what the kernel took (returning the handoffs now
    due), and truth while something can be sent.

    ``web`` is the connection's :class:`~reactor.web.wire.WebWire` on a web
    listener's transport (:class:`reactor.web.transport.WebTransport`, which
    frames what is written), None elsewhere: the backend hands such a
    transport's input to ``web_received`` instead of the connection, and
    its fan-out fast paths give it the line's frame, not the line
    (:func:`reactor.web.transport.fan_out_framed`).
    """

    web: WebWire | None = None

    def __init__(self, peer_host: str) -> None:
        self.peer_host = peer_host
        self.output = OutputBuffer()
        self.tls: TLSWire | None = None
        # (Set on the instance too: the fan-out fast paths look it up per
        # recipient, which is cheap for an instance's own attributes.)
        self.web = None
        self.wire: OutputBuffer | TLSWire = self.output
        # True if the bytes are protected on the way (TLS): passwords may be
        # sent over it.  Loopback peers are trusted as well (reactor.accounts).
        self.secure = False
        # Set by the chat's connection_made; the backend reports to it.
        self.connection: ConnectionEvents | None = None

    def start_tls(self, context: ssl.SSLContext, handshakes: HandshakeCounts | None = None) -> None:
        """Speak TLS on this connection (before the chat logic sees it);
        its handshake is counted in ``handshakes``."""
        self.tls = TLSWire(context, self.output, handshakes)
        self.wire = self.tls
        self.secure = True  # passwords may cross it (reactor.accounts)

    def web_received(self, data: bytes) -> None:
        """Input on a web connection, for its wire (only when ``web`` is set)."""
        raise NotImplementedError("not a web connection")

    @property
    def owes_output(self) -> bool:
        """Output or ciphertext is waiting (to be sent, or for the TLS handshake)."""
        return bool(self.output) or bool(self.wire)

    @property
    def queued(self) -> int:
        """Bytes accepted by ``write`` and not yet taken by the kernel."""
        return self.output.size

    @abstractmethod
    def write(self, data: bytes, on_handoff: Handoff | None = None) -> Entry | None:
        """Queue ``data``; never blocks.  ``on_handoff(True)`` runs once the
        kernel has taken all of it, ``on_handoff(False)`` if it never will
        (aborted, withdrawn).  Returns the queue entry of a write with a
        handoff that had to wait (for :meth:`withdraw`), else None."""

    def send_now(self, data: bytes) -> int:
        """Hand ``data`` to the kernel now if this backend would write it
        through at once (see the select backend), before it is queued: the
        bytes the kernel took (``len(data)`` if all; the rest must then be
        written), 0 if none, -1 if the connection failed (it is aborted)."""
        return 0

    def withdraw(self, entry: Entry) -> bool:
        """Take back a queued write that has not started; True if done."""
        return self.output.withdraw(entry)

    @abstractmethod
    def flush(self) -> None:
        """Hand the kernel what it will take of the queue now, without blocking."""

    @abstractmethod
    def close(self) -> None:
        """Send what is queued, then a FIN; close once the peer is done or the
        linger runs out.  Input after this is read and discarded."""

    @abstractmethod
    def abort(self) -> None:
        """Close now; queued output is discarded (its handoffs run with False)."""

    @abstractmethod
    def pause_reading(self) -> None:
        """Stop reading: the peer's further input waits in the kernel (TCP
        backpressure) until :meth:`resume_reading`."""

    @abstractmethod
    def resume_reading(self) -> None: ...

    def _may_offer(self) -> bool:
        """The next send may go: nothing withdrawable would be handed to the
        kernel (or on TLS encrypted) in part -- the queue holds no direct
        message, the ciphertext waiting is made already, or the socket has
        room (:meth:`_has_room`).

        A message someone waits for (a direct message: an Entry) can be
        taken back only while none of it is in the kernel, and on TLS only
        while it is not encrypted (a record once made must be sent).  So a
        backend offers it only when the socket has room: then the kernel
        takes it whole, and what it would refuse stays withdrawable."""
        if not self.output.entries:
            return True
        tls = self.tls
        if tls is not None and tls.size:
            return True
        return self._has_room()

    def _has_room(self) -> bool:
        """The socket is writable now (a backend that can ask says so).
        Linux calls a TCP socket writable while a third of its send buffer
        is free: a message offered then is taken whole."""
        return True

    def drop_unsent(self) -> None:
        """The server is shutting down: discard the queued output the kernel
        has not started on (its handoffs run with False), so that the
        shutdown notice goes next instead of after a backlog nobody may
        read.  A message a send cut into is kept: the stream stays whole
        lines.  TLS output is left to drain within the linger: its
        plaintext is bound to records already made."""
        if self.tls is None:
            for callback in self.output.drop_unsent():
                callback(False)

    def fail_handoffs(self) -> None:
        """Run every waiting handoff with False (the queue is being discarded)."""
        for callback in self.output.clear():
            callback(False)
