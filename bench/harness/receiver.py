"""The lean receive path: one process owning a share of the load clients.

The harness must not be what it measures, so this loop does as little as it
can per byte: raw ``select.epoll``, non-blocking sockets, one
``time.monotonic_ns()`` per readiness batch (at most ``MAX_EVENTS`` sockets, so
the stamp never trails the data by more than one bounded batch), and bytes
operations (``find``, ``count``) instead of line parsing.  Only the markers of
``bench.harness.wire`` are looked at; every other byte is skipped in C.
Results stay in ``array('q')`` until the parent collects them.

CLOCK_MONOTONIC is system-wide on Linux, so a time stamped here can be
subtracted from the intended send time the parent wrote into the payload.

Every record carries two arrival times.  The batch stamp is when the harness
got round to the data.  The kernel stamp (``SO_TIMESTAMPNS``, taken when the
segment reached the client socket, so it includes no harness queueing), which
the report leads with, is converted from CLOCK_REALTIME to monotonic with the
offset between the two clocks read at the same batch.  Their difference is the
harness's own queueing.

This is the fallback receive path; ``creceiver.c`` does the same for a fraction
of the CPU where a C compiler exists (see ``bench.harness.creceiver``).

With ``Share.tls`` every client speaks TLS through an ``ssl.SSLObject`` over
two ``ssl.MemoryBIO`` (as the server does, and as ``creceiver.c`` does with
OpenSSL): the socket is still read with ``recvmsg``, so the kernel stamp is the
ciphertext's arrival, and the plaintext takes the same path as plain input.

With the ``web`` dialect the input is the server's HTTP answer, then
WebSocket frames: :meth:`Receiver.web_input` skips the answer, walks the
frames (``wire.scan_frames``) to carry a partial one to the next read, and
answers the server's pings; the markers are then looked for in the frames'
bytes as they are.

The parent drives the process over a ``multiprocessing`` pipe with tuples:
``("login",)`` connects and logs in every client of the share, at most
``window`` logins in flight; ``("measure", n_broadcast, n_direct, n_probes)``
starts recording (and forgets earlier records) and answers once armed;
``("status",)`` returns
counters; ``("collect",)`` returns and clears the records; ``("close",)`` ends
the process.  The process also ends when the parent goes away.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import ssl
import struct
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench.harness import wire
from bench.harness.deathsig import set_pdeathsig
from bench.harness.tlsclient import client_context

MAX_EVENTS = 128
RECV_SIZE = 256 * 1024
#: A line longer than this is not one of ours; drop the partial rather than grow.
MAX_CARRY = 1 << 20
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
# Not exported by every Python's socket module; 35 on Linux (asm-generic).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


@dataclass(frozen=True)
class Share:
    """The clients one receiver owns and where to connect them."""

    dialect: wire.Dialect
    host: str
    port: int
    indices: tuple[int, ...]  # global client indices, named wire.client_name(i)
    window: int  # logins in flight at most, so the listen backlog never overflows
    tls: bool = False  # every client speaks TLS (bench.harness.tlsclient)


class Receiver:
    def __init__(self, share: Share, ctl: Connection) -> None:
        self.share = share
        self.ctl = ctl
        self.ep = select.epoll()
        self.ep.register(ctl.fileno(), _IN)
        n = len(share.indices)
        self.socks: list[socket.socket | None] = [None] * n
        self.fd_local: dict[int, int] = {}
        self.connecting: set[int] = set()
        self.carry: dict[int, bytes] = {}
        # TLS only: per local client, (SSLObject, incoming BIO, outgoing BIO) once connected.
        self.tls: list[tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO] | None] = [None] * n
        self.handshaken = bytearray(n)
        self.web = share.dialect == "web"
        self.upgraded = bytearray(n)  # web: the HTTP answer has been read
        self.own = [wire.online_notice(wire.client_name(i)) for i in share.indices]
        self.logged = bytearray(n)
        self.next_login = 0
        self.inflight = 0
        self.logged_in = 0
        self.notices = 0
        self.last_notice_ns = 0
        self.dropped = 0
        self.connect_errors = 0
        self.bad = 0
        self.samples: list[str] = []  # a few unexpected lines, for diagnosis
        self.running = True
        self.reset(0, 0, 0)

    # -- recording ---------------------------------------------------------
    def reset(self, n_broadcast: int, n_direct: int, n_probes: int) -> None:
        n = len(self.socks)
        self.nb, self.nd, self.np = n_broadcast, n_direct, n_probes
        self.b_seen = bytearray(n * n_broadcast)
        self.d_seen = bytearray(n_direct)
        self.p_seen = bytearray(n * n_probes)
        # *_lat: batch-stamped latency; *_klat: kernel-stamped (see module doc).
        self.b_seq, self.b_lat, self.b_klat = array("q"), array("q"), array("q")
        self.d_seq, self.d_lat, self.d_klat = array("q"), array("q"), array("q")
        self.p_seq, self.p_ts, self.p_kts = array("q"), array("q"), array("q")
        self.b_dup = self.d_dup = self.p_dup = 0
        self.last_record_ns = 0

    def status(self) -> dict[str, Any]:
        return {
            "logged_in": self.logged_in,
            "inflight": self.inflight,
            "notices": self.notices,
            "last_notice_ns": self.last_notice_ns,
            "dropped": self.dropped,
            "connect_errors": self.connect_errors,
            "bad": self.bad,
            "samples": self.samples,
            "b": len(self.b_seq),
            "d": len(self.d_seq),
            "p": len(self.p_seq),
            "last_record_ns": self.last_record_ns,
        }

    def collect(self) -> dict[str, Any]:
        out: dict[str, Any] = {"b_dup": self.b_dup, "d_dup": self.d_dup, "p_dup": self.p_dup}
        for key in (
            "b_seq",
            "b_lat",
            "b_klat",
            "d_seq",
            "d_lat",
            "d_klat",
            "p_seq",
            "p_ts",
            "p_kts",
        ):
            out[key] = getattr(self, key)
        self.reset(self.nb, self.nd, self.np)
        return out

    # -- connections -------------------------------------------------------
    def connect_more(self) -> None:
        while self.inflight < self.share.window and self.next_login < len(self.socks):
            k = self.next_login
            self.next_login += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            err = s.connect_ex((self.share.host, self.share.port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                self.connect_errors += 1
                continue
            self.socks[k] = s
            self.fd_local[s.fileno()] = k
            self.connecting.add(k)
            self.inflight += 1
            self.ep.register(s.fileno(), _OUT | _IN)

    def connected(self, k: int, s: socket.socket) -> None:
        self.connecting.discard(k)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.connect_errors += 1
            self.drop(k, s)
            return
        self.ep.modify(s.fileno(), _IN)
        if self.share.tls:  # the ClientHello first; the login once the handshake is done
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls[k] = (client_context().wrap_bio(incoming, outgoing), incoming, outgoing)
            self.tls_handshake(k, s)
            return
        self.send_login(k, s)

    def send_login(self, k: int, s: socket.socket) -> None:
        login = wire.login(self.share.dialect, wire.client_name(self.share.indices[k]))
        tls = self.tls[k]
        if tls is not None:
            tls[0].write(login)
            self.tls_flush(k, s)
            return
        try:
            s.send(login)  # tiny; fits an empty buffer
        except OSError:
            self.drop(k, s)

    # -- TLS ---------------------------------------------------------------
    def tls_flush(self, k: int, s: socket.socket) -> bool:
        """Send what the SSL object wrote; False (client dropped) if not all went.

        Handshake flights and the login are small: an empty socket buffer takes them.
        """
        tls = self.tls[k]
        assert tls is not None
        data = tls[2].read()
        try:
            if not data or s.send(data) == len(data):
                return True
        except OSError:
            pass
        self.drop(k, s)
        return False

    def tls_handshake(self, k: int, s: socket.socket) -> bool:
        """Drive the handshake on; True once it is done (and the login sent)."""
        tls = self.tls[k]
        assert tls is not None
        try:
            tls[0].do_handshake()
        except ssl.SSLWantReadError:
            self.tls_flush(k, s)
            return False
        except ssl.SSLError:
            self.connect_errors += 1
            self.drop(k, s)
            return False
        if not self.tls_flush(k, s):
            return False
        self.handshaken[k] = 1
        self.send_login(k, s)
        return self.socks[k] is not None

    def tls_input(self, k: int, s: socket.socket, cipher: bytes) -> bytes | None:
        """The plaintext ``cipher`` completes; None if the client was dropped."""
        tls = self.tls[k]
        assert tls is not None
        tls[1].write(cipher)
        if not self.handshaken[k] and not self.tls_handshake(k, s):
            return None if self.socks[k] is None else b""
        sslobj, out = tls[0], []
        while True:
            try:
                chunk = sslobj.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError:
                chunk = b""
            if not chunk:  # close_notify, or a TLS error: this connection is over
                self.drop(k, s)
                return None
            out.append(chunk)
        if tls[2].pending and not self.tls_flush(k, s):
            return None
        return b"".join(out)

    def drop(self, k: int, s: socket.socket) -> None:
        self.connecting.discard(k)
        self.fd_local.pop(s.fileno(), None)
        try:
            self.ep.unregister(s.fileno())
        except OSError:
            pass
        s.close()
        self.socks[k] = None
        self.carry.pop(k, None)
        self.tls[k] = None
        self.handshaken[k] = 0
        self.upgraded[k] = 0
        self.dropped += 1
        if not self.logged[k]:
            self.inflight -= 1
            self.connect_more()

    def close_all(self) -> None:
        for s in self.socks:
            if s is not None:
                s.close()
        self.socks = [None] * len(self.socks)

    # -- WebSocket -----------------------------------------------------------
    def web_input(self, k: int, s: socket.socket, data: bytes) -> bytes:
        """The complete frames ``data`` ends (with what was carried), the rest
        carried; the HTTP answer skipped, pings answered.  b"" if none."""
        if k in self.carry:
            data = self.carry.pop(k) + data
        if not self.upgraded[k]:
            head = data.find(wire.END_OF_HEAD)
            if head < 0:
                if len(data) <= MAX_CARRY:
                    self.carry[k] = data
                else:
                    self.bad += 1
                return b""
            if not data.startswith(b"HTTP/1.1 101 "):  # refused: say why, once
                if len(self.samples) < 5:
                    self.samples.append(data[:200].decode("utf-8", "replace"))
                self.drop(k, s)
                return b""
            self.upgraded[k] = 1
            data = data[head + len(wire.END_OF_HEAD) :]
        end, pongs, _closed = wire.scan_frames(data)  # (a close is followed by the end)
        if pongs:
            try:
                s.send(pongs)  # tiny; fits the socket buffer
            except OSError:
                self.drop(k, s)
                return b""
        if end < len(data):
            if len(data) - end <= MAX_CARRY:
                self.carry[k] = data[end:]
            else:
                self.bad += 1
            data = data[:end]
        return data

    # -- the hot path ------------------------------------------------------
    def chunk(self, k: int, data: bytes, now: int, anc: list[Any], offset: int) -> None:
        """Account for one chunk of complete lines received by local client ``k``.

        ``now`` is the batch stamp; ``anc`` holds the kernel stamp (wall clock),
        and ``offset`` is wall minus monotonic at ``now``.
        """
        if not self.logged[k]:
            if self.own[k] in data:
                self.logged[k] = 1
                self.logged_in += 1
                self.inflight -= 1
                self.connect_more()
            elif (
                self.share.dialect != "redis"
                and len(self.samples) < 5
                and wire.ONLINE_TAIL not in data
            ):
                self.samples.append(data[:200].decode("utf-8", "replace"))
        n = data.count(wire.ONLINE_TAIL)
        if n:
            self.notices += n
            self.last_notice_ns = now
        if wire.SEQ_MARK in data:
            self.parse_seq(k, data, now, kernel_ns(anc, offset, now))
        if self.np and wire.PROBE_MARK in data:
            self.parse_probe(k, data, now, kernel_ns(anc, offset, now))

    def parse_seq(self, k: int, data: bytes, now: int, know: int) -> None:
        i = data.find(wire.SEQ_MARK)
        while i >= 0:
            j = data.find(wire.TIME_MARK, i + 5)
            e = data.find(b" ", j + 3) if j >= 0 else -1
            if e < 0:
                self.bad += 1
                return
            try:
                seq = int(data[i + 5 : j])
                sent = int(data[j + 3 : e])
            except ValueError:
                self.bad += 1
                return
            kind = data[i + 4]
            if kind == wire.KIND_BROADCAST and seq < self.nb:
                slot = k * self.nb + seq
                if self.b_seen[slot]:
                    self.b_dup += 1
                else:
                    self.b_seen[slot] = 1
                    self.b_seq.append(seq)
                    self.b_lat.append(now - sent)
                    self.b_klat.append(know - sent)
            elif kind == wire.KIND_DIRECT and seq < self.nd:
                if self.d_seen[seq]:
                    self.d_dup += 1
                else:
                    self.d_seen[seq] = 1
                    self.d_seq.append(seq)
                    self.d_lat.append(now - sent)
                    self.d_klat.append(know - sent)
            else:
                self.bad += 1
            self.last_record_ns = now
            i = data.find(wire.SEQ_MARK, e)

    def parse_probe(self, k: int, data: bytes, now: int, know: int) -> None:
        i = data.find(wire.PROBE_MARK)
        while i >= 0:
            start = i + len(wire.PROBE_MARK)
            j = data.find(b" ", start)
            if j > start and data.startswith(wire.ONLINE_TAIL, j) and data[start:j].isdigit():
                seq = int(data[start:j])
                if seq < self.np:
                    slot = k * self.np + seq
                    if self.p_seen[slot]:
                        self.p_dup += 1
                    else:
                        self.p_seen[slot] = 1
                        self.p_seq.append(seq)
                        self.p_ts.append(now)
                        self.p_kts.append(know)
                        self.last_record_ns = now
            i = data.find(wire.PROBE_MARK, start)

    def command(self) -> None:
        try:
            msg = self.ctl.recv()
        except (EOFError, OSError):
            self.running = False
            return
        op = msg[0]
        if op == "login":
            self.connect_more()
        elif op == "measure":
            self.reset(*msg[1:])
            # Acknowledge, so the parent sends no traffic before records are armed.
            self.ctl.send({"armed": True})
        elif op == "status":
            self.ctl.send(self.status())
        elif op == "collect":
            self.ctl.send(self.collect())
        elif op == "close":
            self.running = False

    def run(self) -> None:
        ctl_fd = self.ctl.fileno()
        ppid = os.getppid()
        check_parent = time.monotonic_ns()
        poll, clock, wall = self.ep.poll, time.monotonic_ns, time.time_ns
        fd_local, socks = self.fd_local, self.socks
        while self.running:
            events = poll(1.0, MAX_EVENTS)
            now = clock()
            offset = wall() - now
            if now - check_parent > 1_000_000_000:
                check_parent = now
                if os.getppid() != ppid:
                    return  # orphaned: the parent died without closing us
            for fd, ev in events:
                if fd == ctl_fd:
                    self.command()
                    continue
                k = fd_local.get(fd)
                if k is None:
                    continue
                s = socks[k]
                assert s is not None
                if k in self.connecting:
                    if ev & (_OUT | select.EPOLLERR | select.EPOLLHUP):
                        self.connected(k, s)
                    continue
                try:
                    data, anc, _flags, _addr = s.recvmsg(RECV_SIZE, _CMSG_SPACE)
                except BlockingIOError:
                    continue
                except OSError:
                    data, anc = b"", []
                if not data:
                    self.drop(k, s)
                    continue
                if self.tls[k] is not None:
                    data = self.tls_input(k, s, data)
                    if not data:
                        continue
                if self.web:
                    data = self.web_input(k, s, data)
                    if not data:
                        continue
                    self.chunk(k, data, now, anc, offset)
                    continue
                if k in self.carry:
                    data = self.carry.pop(k) + data
                if data[-1] != 10:  # a partial line: keep its tail for the next read
                    cut = data.rfind(b"\n") + 1
                    if len(data) - cut <= MAX_CARRY:
                        self.carry[k] = data[cut:]
                    else:
                        self.bad += 1
                    data = data[:cut]
                    if not data:
                        continue
                self.chunk(k, data, now, anc, offset)


def kernel_ns(anc: list[Any], offset: int, fallback: int) -> int:
    """The kernel's receive stamp of a ``recvmsg`` as monotonic ns (``fallback`` if none)."""
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(raw)
            return sec * 1_000_000_000 + nsec - offset
    return fallback


def receiver_main(share: Share, ctl: Connection, parent_end: Connection | None) -> None:
    """Entry point of a receiver process (forked by ``bench.harness.fleet``)."""
    # Ctrl-C reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler
    set_pdeathsig()  # even a SIGKILLed parent takes us with it
    if parent_end is not None:
        parent_end.close()  # so the pipe reports EOF here when the parent dies
    rx = Receiver(share, ctl)
    try:
        rx.run()
    finally:
        rx.close_all()
        rx.ep.close()
