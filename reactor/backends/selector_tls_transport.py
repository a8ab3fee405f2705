"""The select backend's TLS transport: the plain writers, encrypting, in batches.

SelectorTLSTransport (and its web variant, for https and wss) is what
SelectorServer builds for a TLS port.  Apart from the plain transport
(reactor.backends.selector_transport) because its batching -- a record and
a send per pass, not per message -- is a job of its own, with fast paths
of its own.
"""

from __future__ import annotations

import socket

from reactor.backends.selector_pollers import _WRITE
from reactor.backends.selector_transport import SelectorLoop, SelectorTransport
from reactor.outbuf import Entry, Handoff
from reactor.web.transport import WebTransport


class SelectorTLSTransport(SelectorTransport):
    """A TLS connection's transport: the plain writers, encrypting.

    Each record costs OpenSSL work, and each send a system call, so a
    connection that gets several messages per turn (a busy
    server: fan-outs back to back in one pass) is *batching*: the first
    message of a turn waits, like the rest, for the end of the pass, and
    they all go in one record and one send.  A turn with one message ends
    that, and the next first message is sent at once again.
    """

    def __init__(self, sock: socket.socket, host: str, server: SelectorLoop) -> None:
        super().__init__(sock, host, server)
        # Only the select loop's thread touches these.  Set here, not as class
        # defaults: the fast paths look them up per recipient, which is cheap
        # for an instance's own attributes.
        self._batching = False
        self._sealed_turn = -1  # the turn whose first message was sent at once
        self._queued = 0  # while batching: the queue's size after the turn's first message

    def on_readable(self) -> None:
        tls = self.tls
        assert tls is not None
        if (not tls.handshake_done and not self._closing
                and not self.server.may_handshake(self.peer_host)):
            return  # a later pass: its socket stays readable (level-triggered)
        SelectorTransport.on_readable(self)

    def _may_send_now(self, handed_over: bool) -> bool:
        return (not self._batching and not self._events & _WRITE
                and SelectorTransport._may_send_now(self, handed_over))

    def _send_first(self, data: bytes, on_handoff: Handoff | None) -> Entry | None:
        """The turn's first output, encrypted straight from the caller
        (TLSWire.seal: no queue entry, piece or list) and sent at once; what
        the kernel refuses waits as ciphertext."""
        tls = self.tls
        assert tls is not None
        ciphertext = tls.seal(data)  # None during the handshake, or behind ciphertext
        if ciphertext is None:
            return self._queue_first(data, on_handoff)
        try:  # _send, written out: once per recipient of a fan-out on TLS
            sent = self.sock.send(ciphertext)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:  # the connection failed: it is aborted
            self._connection_error(error)
            if on_handoff is not None:
                on_handoff(False)
            return None
        if sent == len(ciphertext):
            self._sealed_turn = self._turn
            if on_handoff is not None:
                on_handoff(True)
            return None  # nothing owed: _settle need not visit it
        entry = tls.keep(ciphertext, sent, data, on_handoff)
        self._want_settle()
        return entry

    def _queue_first(self, data: bytes, on_handoff: Handoff | None) -> Entry | None:
        entry = self._enqueue(data, on_handoff)
        self._queued = self.output.size
        return entry

    def flush(self) -> None:
        """Fast path of _flush_wire on TLS, in its common case (the end of a
        pass; nothing waits for EVENT_WRITE): the whole queue encrypted in
        one record (TLSWire.seal_queue) and sent -- once per recipient of a
        busy pass.  Anything else is _flush_wire's."""
        output = self.output
        tls = self.tls
        assert tls is not None
        if (self._events & _WRITE or self._closing or self.socket_closed or not output.size
                or (output.entries and not self._may_offer())):
            SelectorTransport.flush(self)
            return
        # More than one message this turn: batch the next turn; one: stop.
        if self._batching:
            self._batching = output.size != self._queued
        elif self._sealed_turn == self._turn:
            self._batching = True
        ciphertext = tls.seal_queue()  # None: during the handshake, or too big
        if ciphertext is None:
            SelectorTransport.flush(self)
            return
        plain = output.size
        try:  # _send, written out: once per recipient of a busy pass on TLS
            sent = self.sock.send(ciphertext)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            tls.keep_sealed(ciphertext, 0, plain)
            self._connection_error(error)
            return
        if sent < len(ciphertext):
            tls.keep_sealed(ciphertext, sent, plain)
            self._update_events()  # EVENT_WRITE for the rest
            return
        for callback in output.consume(plain):
            callback(True)
        if self.socket_closed:
            return
        connection = self.connection
        if (not output.size and connection is not None
                and (connection.over_soft_limit_since is not None or connection.not_reading
                     or connection.output_backlog)):
            # Only when it changes something, as in _flush_plain.
            connection.output_drained()
        if output.size or self._closing:
            # What the handoffs or the drain queued, or a close: _flush_wire's.
            SelectorTransport.flush(self)


class SelectorWebTLSTransport(WebTransport, SelectorTLSTransport):
    """A web connection over TLS: https and wss."""
