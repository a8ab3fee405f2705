"""The sending side: one connection that offers load open-loop, and presence probes.

Open loop means the schedule never waits for the server: message ``s`` is due
at ``start + s / rate`` whatever happened before, and its payload carries that
*intended* time.  If the server stops reading and the socket backs up, later
messages go out late but still carry their intended times, so the wait counts
as latency instead of vanishing (no coordinated omission).  The sender records
how late it actually was (``lag``) so a report can tell a slow harness from a
slow server.
"""

from __future__ import annotations

import bisect
import itertools
import select
import socket
import ssl
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from bench.harness import wire
from bench.harness.tlsclient import client_context

NS = 1_000_000_000


#: What a non-blocking socket raises when it cannot go on now; an SSL socket
#: raises the SSL ones (which are no BlockingIOError) when a record is incomplete.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Conn:
    """A client connection that queues what it sends and discards what it receives.

    Discarding matters: a sender that never read would have the server's
    replies (echoes, notices) pile up until the server throttled or dropped it.
    With ``tls`` the handshake is done (blocking, within ``timeout``) before
    the constructor returns, and ``sock`` is an ``ssl.SSLSocket``.  With
    ``web`` the input is walked as WebSocket frames (after the HTTP answer)
    and the server's pings are answered, or it would close the connection.
    """

    def __init__(
        self, host: str, port: int, timeout: float = 5.0, tls: bool = False, web: bool = False
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            try:
                sock = client_context().wrap_socket(sock)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.tls = tls
        self.sock.setblocking(False)
        self.out = bytearray()
        self.seen = b""  # tail of input, kept only while wait_for_text looks for something
        self.closed = False
        self.queued = 0  # bytes ever queued: with len(out), how far the kernel took them
        self.web = web
        self.upgraded = False
        self.partial = b""  # web: the input's incomplete frame (or HTTP answer)

    def send(self, data: bytes) -> None:
        self.queued += len(data)
        self.out += data
        self.flush()

    def flush(self) -> None:
        while self.out:
            try:
                n = self.sock.send(self.out)
            except _WOULD_BLOCK:
                return
            del self.out[:n]

    def pump(self, until_ns: int, keep: bool = False) -> None:
        """Move bytes both ways until ``until_ns`` (monotonic) or nothing is pending."""
        while True:
            left = until_ns - time.monotonic_ns()
            if left <= 0:
                return
            want_w = [self.sock] if self.out else []
            r, w, _ = select.select([self.sock], want_w, [], left / NS)
            if w:
                self.flush()
            if r:
                try:
                    data = self.read()
                except _WOULD_BLOCK:
                    continue
                if not data:
                    self.closed = True
                    return
                if keep:
                    self.seen = (self.seen + data)[-4096:]
                    return
            if not r and not w:
                return

    def idle(self, until_ns: int) -> None:
        """Wait until ``until_ns`` (or writability, while output is queued), then
        discard whatever input arrived, without waiting for it.

        The open-loop sender's wait: one wake-up per message due, not one more
        for each echo the server sends back, which on a slow machine is a
        quarter of the harness's CPU at N = 100.
        """
        left = until_ns - time.monotonic_ns()
        if left > 0:
            select.select([], [self.sock] if self.out else [], [], left / NS)
        if self.out:
            self.flush()
        try:
            data = self.read()
        except _WOULD_BLOCK:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True

    def read(self) -> bytes:
        """What has arrived (b"" at the end); raises what the socket raises if nothing.

        On TLS one ``recv`` yields one record at most, so it reads on until
        the SSL layer has nothing more: the input must not pile up at the
        server while the kernel holds records nobody decrypts.
        """
        data = self.sock.recv(1 << 18)
        if self.tls and data:
            parts = [data]
            while True:
                try:
                    more = self.sock.recv(1 << 18)
                except _WOULD_BLOCK:
                    break
                except OSError:
                    break  # reported by the next read
                if not more:
                    break
                parts.append(more)
            data = b"".join(parts)
        if self.web and data:
            self.answer_pings(data)
        return data

    def answer_pings(self, data: bytes) -> None:
        """Walk the frames ``data`` completes; queue a pong for each ping."""
        data = self.partial + data
        if not self.upgraded:
            head = data.find(wire.END_OF_HEAD)
            if head < 0:
                self.partial = data
                return
            self.upgraded = True
            data = data[head + len(wire.END_OF_HEAD) :]
        end, pongs, _closed = wire.scan_frames(data)
        self.partial = data[end:]
        if pongs:
            self.queued += len(pongs)
            self.out += pongs  # sent by the next flush, between whole messages

    def wait_for_text(self, text: bytes, timeout: float) -> bool:
        deadline = time.monotonic_ns() + int(timeout * NS)
        self.seen = b""
        while text not in self.seen and not self.closed:
            if time.monotonic_ns() >= deadline:
                return False
            self.pump(deadline, keep=True)
        return text in self.seen

    def drain_out(self, timeout: float) -> int:
        """Try to flush queued output; return how many bytes are still unsent."""
        deadline = time.monotonic_ns() + int(timeout * NS)
        while self.out and not self.closed and time.monotonic_ns() < deadline:
            self.pump(deadline)
        return len(self.out)

    def close(self) -> None:
        self.sock.close()


@dataclass
class SendLog:
    """What the sender actually did: messages handed to the socket and how late."""

    first_seq: int
    sent: int
    unsent: int  # scheduled but never handed over (server stopped reading): lost
    lag_ns: array  # lateness of each batch's first message against its intended time
    seconds: float
    # Wake-ups at which the queue was full: the server was not taking the load.
    # Lag without any of these is the sender's own (its CPU), not the server's.
    held_back: int = 0


def open_loop(
    conn: Conn,
    line: Callable[[int, int], bytes],
    rate: float,
    count: int,
    first_seq: int = 0,
    tick: Callable[[int], None] | None = None,
    slack: float = 5.0,
) -> SendLog:
    """Offer ``count`` messages at ``rate``/s; ``line(seq, intended_ns)`` formats one.

    Bounded: gives up ``slack`` seconds after the last message was due, counting
    what was not sent as unsent.  ``tick(done)`` is called about 10 times a second.
    """
    period = NS / rate
    start = time.monotonic_ns() + 20_000_000
    hard_stop = start + int(count * period) + int(slack * NS)
    lag = array("q")
    ends = array("q")  # conn.queued after each message: where it ends in the stream
    i = 0
    held_back = 0
    next_tick = 0
    # Keep the socket buffer, not our queue, as the place where backlog waits:
    # formatting far ahead of what the server takes would only burn harness CPU.
    max_queue = 1 << 20
    while i < count:
        now = time.monotonic_ns()
        if now >= hard_stop or conn.closed:
            break
        due = min(count, int((now - start) // period) + 1) if now >= start else 0
        if due > i and len(conn.out) < max_queue:
            lag.append(now - (start + int(i * period)))
            seqs = range(first_seq + i, first_seq + due)
            parts = [line(s, start + int((s - first_seq) * period)) for s in seqs]
            before = conn.queued
            ends.extend(before + end for end in itertools.accumulate(map(len, parts)))
            conn.send(b"".join(parts))
            i = due
        if tick is not None and now >= next_tick:
            tick(i)
            next_tick = now + NS // 10
        if len(conn.out) < max_queue:
            wake = start + int(i * period)
        else:
            held_back += 1
            wake = now + 5_000_000
        conn.idle(min(wake, hard_stop))
    if tick is not None:
        tick(i)
    conn.drain_out(max(0.0, (hard_stop - time.monotonic_ns()) / NS))
    # Messages not wholly taken by the kernel never reached the server; the
    # receivers will miss them.  Counted by bytes, as the web dialect's masked
    # frames hide the payloads.
    queued = len(ends) - bisect.bisect_right(ends, conn.queued - len(conn.out))
    seconds = (time.monotonic_ns() - start) / NS
    return SendLog(first_seq, i - queued, count - i + queued, lag, seconds, held_back)


def probe_login(
    dialect: wire.Dialect, host: str, port: int, name: str, tls: bool = False
) -> tuple[Conn, int]:
    """Connect, then log ``name`` in; return the connection and the login time (ns).

    The clock starts after the TCP handshake (and the TLS one, with ``tls``),
    when the login bytes go out: the presence fan-out is timed from login, not
    from connect.
    """
    conn = Conn(host, port, tls=tls, web=dialect == "web")
    t0 = time.monotonic_ns()
    conn.send(wire.login(dialect, name))
    return conn, t0
