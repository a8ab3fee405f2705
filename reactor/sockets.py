"""Socket set-up shared by both backends: listener, client options, limits."""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import socket
import sys

from reactor.config import ServerConfig

log = logging.getLogger("reactor")

# accept() errors that mean "out of a resource", not "this client is bad":
# the right answer is to stop accepting for a moment, never to spin or die.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors about one connection that died in the backlog: skip it.
TRANSIENT_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
ACCEPT_RETRY_DELAY = 1.0  # seconds, as asyncio's selector_events does


def open_listener(config: ServerConfig) -> socket.socket:
    """Bind and listen; raises OSError with the operating system's reason
    (socket.gaierror if the host name does not resolve).

    The host is resolved with getaddrinfo, so a name, an IPv4 address and any
    IPv6 literal (``::1``, ``fe80::1%eth0``, ``[::1]``) all work; a name
    listens on its first address.  The IPv6 wildcard ``::`` (and ``""``)
    listens dual-stack, on every IPv6 and IPv4 address, where the system
    can.
    """
    family, address = listen_address(config.host, config.port)
    dual_stack = (
        family == socket.AF_INET6 and address[0] == "::" and socket.has_dualstack_ipv6()
    )
    return socket.create_server(
        address, family=family, backlog=config.backlog, dualstack_ipv6=dual_stack,
        reuse_port=config.reuse_port,
    )


def listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    """The family and socket address to bind for ``host`` and ``port``."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host and socket.has_dualstack_ipv6():
        host = "::"  # every address, as bind(("", port)) means
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
        socket.AI_PASSIVE | socket.AI_NUMERICSERV,
    )[0]
    return family, address


def configure_client(sock: socket.socket, config: ServerConfig) -> None:
    """Options every client socket gets, whichever backend serves it."""
    # Chat lines are small and latency is the product: no Nagle delay.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if config.keepalive_idle > 0:
        # A client whose machine vanished sends no FIN or RST; keepalive
        # probes find it, and the failed read then counts as a drop.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, config.keepalive_idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, config.keepalive_interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, config.keepalive_count)


def raise_open_file_limit(max_clients: int) -> None:
    """Raise the soft descriptor limit toward what ``max_clients`` needs.

    The default soft limit is often 1024, which a server with 1024 clients
    plus its own descriptors would hit; the hard limit is usually far higher.
    """
    wanted = max_clients + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. above fs.nr_open
            target = soft
    if target < wanted:
        log.warning(
            "Open-file limit %d is below the %d that --max-clients %d needs",
            target, wanted, max_clients,
        )


def peer_host(address: object) -> str:
    """The client's address as the log and the per-address limit see it.

    On a dual-stack listener an IPv4 client arrives as ``::ffff:a.b.c.d``;
    it is shown, and counted, as the ``a.b.c.d`` it is.
    """
    if isinstance(address, tuple) and address:
        host = str(address[0])
        if host.startswith("::ffff:") and "." in host:
            return host[7:]
        return host
    return "unknown"


# Unread input thrown away before a close, at most: a peer still pouring past
# this gets its reset, which is all it can expect.
DISCARD_LIMIT = 4 * 1024 * 1024


def discard_input(fd: int) -> None:
    """Read and throw away the peer's input that was never read, before a close.

    Closing a socket with unread input makes the kernel send a reset, and a
    reset also throws away what the kernel had accepted for the peer and not
    yet transmitted -- messages already echoed to their senders as handed to
    this connection.  With nothing unread, ``close()`` sends a FIN after them
    instead, and a peer that reads gets them.  Works on a duplicate of the
    descriptor, without blocking, whatever mode the socket is in.
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with sock:
        taken = 0
        while taken < DISCARD_LIMIT:
            try:
                chunk = sock.recv(65536, socket.MSG_DONTWAIT)
            except OSError:  # nothing more now (EAGAIN), or the peer reset
                return
            if not chunk:
                return
            taken += len(chunk)


# -- room in a socket's send buffer (Linux's rule for TCP) ---------------------
#
# A direct message is offered to the kernel only when it will be taken whole
# (a half-sent line cannot be taken back), which Linux promises while the
# socket polls writable: it sends in part only when a new buffer (skb) is
# refused, and it refuses one only once the bytes it holds for the socket
# (their skbs' true size) reach the send buffer's size, or the bytes not yet
# transmitted reach TCP_NOTSENT_LOWAT -- and a socket polls writable only
# while at most two thirds of the send buffer, and half the low-water mark,
# are used.  So after a writable poll, sends may add up to the smaller of a
# third of the buffer and half the mark before the kernel could refuse one;
# a send adds at most its bytes plus one skb's overhead per skb it can start,
# an skb holding at least the smallest MSS Linux allows.  The send buffer
# only grows (autotuning) unless the kernel is short of TCP memory, where a
# send may stop short whatever poll said.

# What one skb may add to a socket's send queue beyond its data: Linux's
# struct sk_buff, its shared info and the header room, rounded well up.
SKB_OVERHEAD = 2048
# The smallest MSS Linux sends with (net.ipv4.tcp_min_snd_mss's floor).
MIN_MSS = 48


def send_cost(size: int) -> int:
    """What a send of ``size`` bytes may add, at most, to what the kernel
    holds for the socket, counted as :func:`room_after_writable` counts."""
    return size + SKB_OVERHEAD * (size // MIN_MSS + 2)


def room_after_writable(sock: socket.socket) -> int:
    """How much (in :func:`send_cost` units) sends may add after ``sock``
    polled writable with the kernel surely taking each whole: a third of
    its send buffer now, at most half its TCP_NOTSENT_LOWAT.  0 where that
    is not known (not Linux, not TCP, an option unreadable): then every
    send needs a writable poll of its own."""
    if not _LINUX or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return 0
    try:
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        lowat = sock.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT)
    except OSError:
        return 0
    if not lowat:  # unset on the socket: the system's default
        lowat = _system_notsent_lowat()
    return max(0, min(sndbuf // 3, lowat // 2))


class KernelRoom:
    """A transport's questions about its socket's send buffer (the select
    and threads backends' plain TCP): is there room now, and, for
    ``send_now``, how much a writable answer leaves for a send."""

    sock: socket.socket
    _room: select.poll | None  # the socket's writability poll, made when first asked
    _room_after_writable: int  # room_after_writable(sock), -1 until asked

    def _has_room(self) -> bool:
        """The socket is writable now (see Transport._may_offer)."""
        room = self._room
        if room is None:
            room = self._room = select.poll()
            room.register(self.sock.fileno(), select.POLLOUT)
        return bool(room.poll(0))

    def _room_asked(self, cost: int) -> int:
        """send_now's question once the room it knew of is used up: -1 if
        the socket is not writable now, else what sends may still add, with
        the kernel surely taking each whole, after one of ``cost`` (0 if
        none: the next send asks again)."""
        if not self._has_room():
            return -1
        room = self._room_after_writable
        if room < 0:
            room = self._room_after_writable = room_after_writable(self.sock)
        return max(room - cost, 0)


_LINUX = sys.platform.startswith("linux")
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's number
_notsent_lowat: int | None = None


def _system_notsent_lowat() -> int:
    """net.ipv4.tcp_notsent_lowat, read once; 0 if it cannot be read."""
    global _notsent_lowat
    if _notsent_lowat is None:
        try:
            with open("/proc/sys/net/ipv4/tcp_notsent_lowat", encoding="ascii") as file:
                _notsent_lowat = int(file.read().split()[0])
        except (OSError, ValueError, IndexError):
            _notsent_lowat = 0
    return _notsent_lowat
