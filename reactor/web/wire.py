"""One web connection's wire: its HTTP request, then WebSocket frames, sans-IO.

It sits where :class:`reactor.tls.TLSWire` sits, under the connection, and
offers the same input shape: the backend hands what the socket read to
:meth:`WebWire.receive`, which returns the chat lines it completes
(``b"\\n"``-terminated, for the connection's usual line path) or raises
:class:`WebFailure` with the reason to log and close with.

Output is framed as it is queued, not as it is sent: a web connection's
transport writes ``frames_for(line)`` where a plain one writes ``line``, so
its :class:`~reactor.outbuf.OutputBuffer` holds whole frames.  Everything
the output queue gives stays true unchanged -- a line's handoff (the
``<To Bob>`` echo) runs once the kernel took its whole frame, an entry not
yet started can be withdrawn (a whole frame), the send-at-once paths and
the budget see bytes as ever -- and TLS stacks under it for free (the TLS
wire encrypts frames as it encrypts lines).  What the wire says by itself
(the HTTP answer, the handshake, pongs, pings, close frames) comes from
:meth:`WebWire.data_to_send` and is queued the same way, between frames.

* **A frame built once per broadcast.**  Server frames are unmasked and
  uncompressed (no permessage-deflate: it would make every recipient's bytes
  differ), so one line's frame is the same bytes for everyone; the fan-out
  hands the same ``bytes`` object to every recipient, and :func:`frames_for`
  keeps the frame of the last one it built, by identity, so every queue
  holds the one frame object.
* **Limits as on TCP.**  A message is at most the line limit (the library
  checks it while reading, before anything is buffered: close 1009); text
  only (a binary message: close 1003); valid UTF-8 (else 1007); one line per
  message (a newline inside: 1007, since it would forge a second command).
* **Keepalive.**  Browsers cannot ping from JavaScript and proxies drop idle
  connections, so the server pings; :meth:`WebWire.heartbeat`, called by the
  backend's timer every :data:`PING_INTERVAL`, sends a ping, or fails the
  connection if the previous ping got no pong.

The WebSocket protocol itself (handshake checks, masking, control frames,
the closing handshake, size limits) is ``websockets``' sans-IO
``ServerProtocol``.  Not thread-safe, like ``TLSWire``.
"""

from __future__ import annotations

import logging

from websockets.exceptions import InvalidMessage
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from reactor.web.http import (
    SECURITY_HEADERS,
    HTTPRefusal,
    Site,
    WebFailure,
    head_end,
    parse_head,
    refusal_response,
)

log = logging.getLogger("reactor")
# websockets logs every connection it opens at INFO ("connection open"): the
# server's log has its own line for each user, so only its warnings show.
_protocol_log = logging.getLogger("reactor.web.protocol")
_protocol_log.setLevel(logging.WARNING)

PING_INTERVAL = 20.0

_SHORT, _MEDIUM = 126, 65536

__all__ = ["PING_INTERVAL", "WebFailure", "WebWire", "frames_for", "text_frame"]


def text_frame(payload: bytes | memoryview) -> bytes:
    """One unmasked, final text frame carrying ``payload`` (already UTF-8)."""
    length = len(payload)
    if length < _SHORT:
        return bytes((0x81, length)) + payload
    if length < _MEDIUM:
        return bytes((0x81, 126)) + length.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + payload


_last: tuple[bytes | memoryview, bytes] = (b"", b"")


def frames_for(data: bytes | memoryview) -> bytes:
    """The text frames for ``data``, one or more ``\\n``-terminated chat lines.

    The frame of the last object framed is kept, so a broadcast's shared
    line is framed once however many recipients it has (one tuple swap, so
    a reader on another thread sees an old or a new pair, never a mix)."""
    global _last
    last = _last
    if last[0] is data:
        return last[1]
    if type(data) is memoryview:
        data = data.tobytes()  # (a view: framed from a copy)
    if data.count(b"\n") == 1 and data.endswith(b"\n"):
        frames = text_frame(data[:-1])  # the common case: one line
    else:
        lines = data.split(b"\n")
        if not lines[-1]:
            lines.pop()  # (the terminator of the last line, not an empty line)
        frames = b"".join(map(text_frame, lines))
    _last = (data, frames)
    return frames


class WebWire:
    """One web connection; see the module docstring."""

    __slots__ = ("_head", "_message", "_outgoing", "_protocol", "_site", "awaiting_pong",
                 "closing", "ended", "max_line", "peer_host", "upgraded")

    # How a web connection's transport turns queued chat lines into bytes.
    frame = staticmethod(frames_for)

    def __init__(self, site: Site, max_line: int, peer_host: str) -> None:
        self._site = site
        self.max_line = max_line
        self.peer_host = peer_host
        self._head = bytearray()
        self._protocol: ServerProtocol | None = None
        # The fragments of a message still coming, joined as they come: at
        # most max_line bytes however many (empty) fragments the peer sends.
        self._message = bytearray()
        self._outgoing: list[bytes] = []  # what the wire says by itself, in order
        self.upgraded = False  # the WebSocket is open: a chat connection exists
        self.closing = False  # nothing more to frame: close once the queue is sent
        self.ended = False  # the peer's side is over
        self.awaiting_pong = False

    def __bool__(self) -> bool:
        """The wire has something of its own to send."""
        return bool(self._outgoing)

    def data_to_send(self) -> bytes:
        """What the wire says by itself (HTTP answer, handshake, control
        frames), to queue as it is, after what is queued already."""
        outgoing = self._outgoing
        data = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
        outgoing.clear()
        return data

    # -- input ---------------------------------------------------------------

    def receive(self, data: bytes) -> tuple[bytes, bool]:
        """Feed what the socket read (``b""`` at its end of input).

        Returns the chat lines completed (each ending in ``\\n``) and whether
        the peer's side ended just now (a close frame, the end of input, or a
        page request answered).  Raises :class:`WebFailure` for a bad request
        or a broken WebSocket rule, its answer queued in :meth:`data_to_send`.
        """
        if self.ended:
            return b"", False
        if not self.upgraded:
            return self._receive_head(data)
        return self._receive_frames(data)

    def _receive_head(self, data: bytes) -> tuple[bytes, bool]:
        if not data:
            self.ended = self.closing = True
            return b"", True
        head = self._head
        head += data
        try:
            end = head_end(head)
            if end < 0:
                return b"", False
            request = parse_head(bytes(head[:end]))
            if not request.wants_websocket:
                self._queue(self._site.page(request))
                self.ended = self.closing = True
                return b"", True
            self._site.check_upgrade(request, self.peer_host)
        except HTTPRefusal as refusal:
            self._queue(refusal_response(refusal))
            self.ended = self.closing = True
            raise WebFailure(f"HTTP {refusal.status}: {refusal.reason}") from None
        rest = bytes(head[end:])
        self._head = bytearray()
        return self._upgrade(bytes(head[:end]), rest)

    def _upgrade(self, head: bytes, rest: bytes) -> tuple[bytes, bool]:
        # The head was bounded and checked above; the library checks the
        # WebSocket headers (key, version) and answers the handshake.
        protocol = ServerProtocol(max_size=self.max_line, logger=_protocol_log)
        self._protocol = protocol
        protocol.receive_data(head)
        events = protocol.events_received()
        if not events or not isinstance(events[0], Request):
            self._collect()
            self.ended = self.closing = True
            raise WebFailure(f"HTTP 400: {protocol.handshake_exc or InvalidMessage()}")
        answer = protocol.accept(events[0])
        for name, value in SECURITY_HEADERS:
            answer.headers[name] = value
        protocol.send_response(answer)
        if answer.status_code != 101:
            self._collect()
            self.ended = self.closing = True
            body = (answer.body or b"").decode("utf-8", "replace").strip().partition("\n")[0]
            raise WebFailure(f"HTTP {answer.status_code}: {body}")
        self.upgraded = True
        self._collect()
        return self._receive_frames(rest) if rest else (b"", False)

    def _receive_frames(self, data: bytes) -> tuple[bytes, bool]:
        protocol = self._protocol
        assert protocol is not None
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        lines: list[bytes] = []
        failure = None
        for event in protocol.events_received():
            assert isinstance(event, Frame)
            failure = self._frame_received(event, lines)
            if failure:
                break
        self._collect()
        if failure is None and protocol.close_sent is not None and protocol.close_rcvd is None:
            # The library failed the connection (too big, bad UTF-8, bad framing).
            failure = f"{protocol.close_sent.code} {protocol.close_sent.reason}"
        if failure is not None:
            self.ended = self.closing = True
            raise WebFailure(f"WebSocket closed: {failure}")
        if protocol.state is State.CLOSING or protocol.state is State.CLOSED or not data:
            self.ended = self.closing = True
            return b"".join(lines), True
        return b"".join(lines), False

    def _frame_received(self, frame: Frame, lines: list[bytes]) -> str | None:
        """Take one frame; return why the connection fails, if it does."""
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            self.awaiting_pong = False
            return None
        if opcode is Opcode.BINARY:
            return self._fail(CloseCode.UNSUPPORTED_DATA, "text messages only")
        if opcode not in (Opcode.TEXT, Opcode.CONT):
            return None  # ping and close: the library answered them
        message = self._message
        if frame.fin and not message:
            text = bytes(frame.data)  # the common case: a message in one frame
        else:
            message += frame.data
            if not frame.fin:
                return None
            text = bytes(message)
            message.clear()
        if b"\n" in text or b"\r" in text:
            return self._fail(CloseCode.INVALID_DATA, "one line per message")
        if not text.isascii():
            try:
                text.decode()
            except UnicodeDecodeError:
                return self._fail(CloseCode.INVALID_DATA, "not UTF-8")
        lines.append(text + b"\n")
        return None

    def _fail(self, code: CloseCode, reason: str) -> str:
        assert self._protocol is not None
        self._protocol.fail(code, reason)
        return f"{int(code)} {reason}"

    # -- on the backend's timer and at the end -------------------------------

    def heartbeat(self) -> None:
        """Called every :data:`PING_INTERVAL`: ping, or fail if the last ping
        got no pong (raises :class:`WebFailure`, the close frame queued)."""
        protocol = self._protocol
        if not self.upgraded or self.closing or protocol is None:
            return
        if self.awaiting_pong:
            reason = self._fail(CloseCode.INTERNAL_ERROR, "no pong to the last ping")
            self._collect()
            self.ended = self.closing = True
            raise WebFailure(f"WebSocket closed: {reason}")
        protocol.send_ping(b"")
        self.awaiting_pong = True
        self._collect()

    def close(self, reason: str = "") -> bool:
        """Queue a close frame (going away) in :meth:`data_to_send`; True if
        there is one.  The backend queues it after the last line, as it does
        TLS's close_notify."""
        protocol = self._protocol
        if protocol is None or self.closing or protocol.state is not State.OPEN:
            return False
        protocol.send_close(CloseCode.GOING_AWAY, reason[:120])
        self._collect()
        self.closing = True
        return True

    def _queue(self, data: bytes) -> None:
        self._outgoing.append(data)

    def _collect(self) -> None:
        """What the library made by itself: the handshake answer, pongs, close frames."""
        assert self._protocol is not None
        for data in self._protocol.data_to_send():
            if data:
                self._queue(data)
