"""What the harness says on the wire, for each kind of system it drives.

Two dialects share one set of workloads:

* ``chat`` -- the reactor-chat line protocol (our two backends, the asyncio
  yardstick, any ``--target``).  A login is the username line; the server
  answers every online user, the newcomer included, with ``<User X is online.>``.
* ``redis`` -- Redis pub/sub, the C anchor.  A login is ``HELLO 3`` (RESP3 lets a
  subscribed connection still PUBLISH), ``SUBSCRIBE all u:<name>`` and a PUBLISH
  of the same ``<User X is online.>`` text to ``all``, pipelined in one write so
  Redis does the same fan-out work the chat servers do.  A broadcast is a PUBLISH
  to ``all`` (the sender is subscribed too, standing in for the chat echo
  ``<To everyone> ...``), a direct message a PUBLISH to ``u:<name>``.

The receivers never parse either framing: they look for the markers below inside
whatever bytes arrive, so the same lean receive path serves both dialects.  That
is why payloads are plain ASCII without quotes or backslashes -- the chat
servers may escape those, and the markers must arrive byte for byte.
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["chat", "redis"]

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
    return _resp(b"PUBLISH", BROADCAST_CHANNEL, offline_notice(name)) + _resp(b"QUIT")


def broadcast(dialect: Dialect, text: bytes) -> bytes:
    """One broadcast of ``text`` to every other online user."""
    if dialect == "chat":
        return b'broadcast "%s"\n' % text
    return _resp(b"PUBLISH", BROADCAST_CHANNEL, text)


def direct(dialect: Dialect, to: str, text: bytes) -> bytes:
    """One direct message of ``text`` to user ``to``."""
    if dialect == "chat":
        return b'chat %s "%s"\n' % (to.encode(), text)
    return _resp(b"PUBLISH", b"u:" + to.encode(), text)
