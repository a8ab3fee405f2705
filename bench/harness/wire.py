"""What the harness says on the wire, for each kind of system it drives.

Three dialects share one set of workloads:

* ``chat`` -- the reactor-chat line protocol (our two backends, the asyncio
  yardstick, any ``--target``).  A login is the username line; the server
  answers every online user, the newcomer included, with ``<User X is online.>``.
* ``redis`` -- Redis pub/sub, the C anchor.  A login is ``HELLO 3`` (RESP3 lets a
  subscribed connection still PUBLISH), ``SUBSCRIBE all u:<name>`` and a PUBLISH
  of the same ``<User X is online.>`` text to ``all``, pipelined in one write so
  Redis does the same fan-out work the chat servers do.  A broadcast is a PUBLISH
  to ``all`` (the sender is subscribed too, standing in for the chat echo
  ``<To everyone> ...``), a direct message a PUBLISH to ``u:<name>``.
* ``web`` -- the chat protocol again, over the WebSocket of ``--web-port``: a
  login is the HTTP upgrade request (with an Origin the server's default rule
  allows, as a browser's page would send) and, in the same write, the name as
  a masked text frame; every chat line is one masked text frame, as a
  browser sends it.  The server's frames are unmasked, so the payloads, and
  the markers in them, arrive verbatim between two-byte frame headers.  A
  receiver must still walk the frames (:func:`scan_frames`): they end in no
  ``\n`` to carry partial input by, and the server pings every connection
  and closes one whose ping gets no pong.

The receivers never parse the chat lines or RESP: they look for the markers below
inside whatever bytes arrive, so the same lean receive path serves every dialect
(web frames are walked, their payloads not copied).  That
is why payloads are plain ASCII without quotes or backslashes -- the chat
servers may escape those, and the markers must arrive byte for byte.
"""

from __future__ import annotations

import base64
import os
from typing import Literal

Dialect = Literal["chat", "redis", "web"]

#: Every measured payload starts ``seq=<kind><n> t=<intended send time, ns> ``.
SEQ_MARK = b"seq="
TIME_MARK = b" t="
KIND_BROADCAST = ord("B")
KIND_DIRECT = ord("D")

#: Presence notices; probe users are named ``p<n>`` so a receiver can read ``n``.
ONLINE_TAIL = b" is online.>"
PROBE_MARK = b"<User p"

BROADCAST_CHANNEL = b"all"


def client_name(index: int) -> str:
    """Name of load client ``index``; ``c`` plus digits stays within 1-32 chars."""
    return f"c{index}"


def probe_name(index: int) -> str:
    """Name of presence probe ``index``; receivers recover ``index`` from it."""
    return f"p{index}"


def sender_name(index: int) -> str:
    """Name of the connection that sends broadcasts and direct messages."""
    return f"s{index}"


def online_notice(name: str) -> bytes:
    return f"<User {name} is online.>".encode()


def offline_notice(name: str) -> bytes:
    return f"<User {name} is offline.>".encode()


def payload(kind: int, seq: int, intended_ns: int, pad: int = 0) -> bytes:
    """The measured text: ``seq=B17 t=123456789 `` plus ``pad`` filler bytes."""
    return b"seq=%c%d t=%d %s" % (kind, seq, intended_ns, b"x" * pad)


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def login(dialect: Dialect, name: str) -> bytes:
    """Bytes that log ``name`` in and make the system announce it to everyone."""
    if dialect == "chat":
        return name.encode() + b"\n"
    if dialect == "web":
        return upgrade_request() + client_frame(name.encode())
    raw = name.encode()
    return (
        _resp(b"HELLO", b"3")
        + _resp(b"SUBSCRIBE", BROADCAST_CHANNEL, b"u:" + raw)
        + _resp(b"PUBLISH", BROADCAST_CHANNEL, online_notice(name))
    )


def logout(dialect: Dialect, name: str) -> bytes:
    """Bytes that make the system announce ``name`` offline before closing."""
    if dialect == "chat":
        return b"bye\n"
    if dialect == "web":
        return client_frame(b"bye")
    return _resp(b"PUBLISH", BROADCAST_CHANNEL, offline_notice(name)) + _resp(b"QUIT")


def broadcast(dialect: Dialect, text: bytes) -> bytes:
    """One broadcast of ``text`` to every other online user."""
    if dialect == "chat":
        return b'broadcast "%s"\n' % text
    if dialect == "web":
        return client_frame(b'broadcast "%s"' % text)
    return _resp(b"PUBLISH", BROADCAST_CHANNEL, text)


def direct(dialect: Dialect, to: str, text: bytes) -> bytes:
    """One direct message of ``text`` to user ``to``."""
    if dialect == "chat":
        return b'chat %s "%s"\n' % (to.encode(), text)
    if dialect == "web":
        return client_frame(b'chat %s "%s"' % (to.encode(), text))
    return _resp(b"PUBLISH", b"u:" + to.encode(), text)


# -- the web dialect: WebSocket (RFC 6455) as a browser speaks it -------------

#: The upgrade's Host and the page's Origin: equal, which the server's
#: default origin rule (same host) accepts; it does not compare the Host with
#: its own address.
WEB_HOST = b"127.0.0.1"
WEB_PATH = b"/ws"
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
END_OF_HEAD = b"\r\n\r\n"


def upgrade_request(key: bytes | None = None) -> bytes:
    """The HTTP request that opens a WebSocket; ``key`` (16 bytes) random by default."""
    nonce = base64.b64encode(key if key is not None else os.urandom(16))
    return (
        b"GET %s HTTP/1.1\r\nHost: %s\r\nOrigin: http://%s\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ) % (WEB_PATH, WEB_HOST, WEB_HOST, nonce)


def client_frame(payload: bytes, opcode: int = OP_TEXT, mask: bytes | None = None) -> bytes:
    """One final frame from a client: masked, as the protocol requires of
    clients (``mask``, 4 bytes, random by default)."""
    key = mask if mask is not None else os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    # XOR as one big integer: no Python loop per byte.
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + masked


def scan_frames(data: bytes) -> tuple[int, bytes, bool]:
    """Walk the server's (unmasked) frames in ``data``, which starts at a frame.

    Returns where the last complete frame ends (the rest is carried to the
    next read), the pongs owed for the pings among them (masked, ready to
    send), and whether a close frame came.  Payloads are not copied: the
    markers are looked for in ``data[:end]`` as it is.
    """
    i, n = 0, len(data)
    pongs = b""
    closed = False
    while i + 2 <= n:
        first, length = data[i], data[i + 1]
        start = i + 2
        if length >= 126:  # (the mask bit is never set on a server's frame)
            start += 2 if length == 126 else 8
            if start > n:
                break
            length = int.from_bytes(data[i + 2 : start], "big")
        end = start + length
        if end > n:
            break
        opcode = first & 0x0F
        if opcode >= OP_CLOSE:  # control frames are rare: one test on the hot path
            if opcode == OP_PING:
                pongs += client_frame(data[start:end], OP_PONG)
            elif opcode == OP_CLOSE:
                closed = True
        i = end
    return i, pongs, closed
