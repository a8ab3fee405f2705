"""An in-memory backend for driving :class:`~reactor.chat.ChatService` directly.

No sockets, no threads, no real time: a :class:`Harness` plays the backend of
``reactor/backends/base.py`` -- it hands each peer's bytes to
``Connection.data_received`` (``b""`` for end of input), runs handoff
callbacks when the fake "kernel" takes queued bytes, calls
``output_drained`` when a queue empties and ``connection_lost`` once a
transport is closed -- and a :class:`FakeClock` that only moves when a test
calls :meth:`Harness.advance`.

Like the select backend, the harness works in passes: every action a test
takes (a peer sending, the kernel taking bytes, time advancing, a claim being
answered) is followed by :meth:`Harness.settle`, which reads input waiting
for connections that are reading again and reports the transports that
closed during the pass.

The fake also checks the chat logic's half of the contract (``close`` and
``abort`` at most once each, nothing but ``abort`` after ``close``, nothing
after ``abort``); violations are collected in ``Harness.violations``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from reactor.app import build_chat
from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.contracts import LoginStep, Roster
from reactor.outbuf import Entry, Handoff
from reactor.transport import Transport
from reactor.whiteboard import ClaimResult, MemoryWhiteboard

EOF = b""


class FakeClock:
    """Monotonic time that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class FakeTimer:
    __slots__ = ("callback", "deadline", "order")

    def __init__(self, deadline: float, order: int, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.order = order
        self.callback: Callable[[], None] | None = callback

    def __lt__(self, other: FakeTimer) -> bool:
        return (self.deadline, self.order) < (other.deadline, other.order)

    def cancel(self) -> None:
        self.callback = None

    @property
    def cancelled(self) -> bool:
        return self.callback is None


class Scheduler:
    """``call_later`` on a :class:`FakeClock`; due callbacks run in deadline order."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._heap: list[FakeTimer] = []
        self._order = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.clock.now + delay, next(self._order), callback)
        heapq.heappush(self._heap, timer)
        return timer

    def pending(self) -> list[FakeTimer]:
        return sorted(t for t in self._heap if not t.cancelled)

    def pop_due(self, until: float) -> FakeTimer | None:
        """The next live timer due by ``until``, with the clock moved to its deadline."""
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
        if not heap or heap[0].deadline > until:
            return None
        timer = heapq.heappop(heap)
        self.clock.now = max(self.clock.now, timer.deadline)
        return timer

    def advance(self, seconds: float, after_each: Callable[[], None] | None = None) -> None:
        """Move the clock on by ``seconds``, running what falls due, in order."""
        until = self.clock.now + seconds
        while (timer := self.pop_due(until)) is not None:
            callback = timer.callback
            timer.callback = None
            assert callback is not None
            callback()
            if after_each is not None:
                after_each()
        self.clock.now = until


class FakeTransport(Transport):
    """One connection's byte pipe, with a fake kernel between it and the peer.

    ``received`` is everything the peer has read, in order.  By default the
    kernel takes every write at once (``write`` returns None and runs the
    handoff with True).  After :meth:`stop_taking` (a peer that stopped
    reading) writes queue in ``self.output`` until the test calls
    :meth:`take` or :meth:`take_all`.
    """

    def __init__(self, harness: Harness, peer_host: str) -> None:
        super().__init__(peer_host)
        self.harness = harness
        self.received = bytearray()
        self.taking = True
        self.reading = True
        # What the peer sent that the server has not read yet ("in TCP").
        self.inbox: deque[bytes] = deque()
        self.eof_read = False
        self.closing = False
        self.aborted = False
        self.closed = False
        self.lost_reported = False
        # Every operation the chat logic asked for, in order (for assertions).
        self.calls: list[str] = []
        self._linger: FakeTimer | None = None

    # -- the Transport contract ------------------------------------------------

    def write(self, data: bytes, on_handoff: Handoff | None = None) -> Entry | None:
        if self.aborted:
            self.harness.violation(self, "write after abort")
        if self.closed:
            if on_handoff is not None:
                on_handoff(False)
            return None
        if self.taking and not self.output:
            self.received += data
            if on_handoff is not None:
                on_handoff(True)
            return None
        return self.output.append(data, on_handoff)

    def flush(self) -> None:
        self.calls.append("flush")
        if self.taking:
            self._take(self.output.size)

    def close(self) -> None:
        self.calls.append("close")
        if self.closing or self.aborted:
            self.harness.violation(self, "close after close/abort")
            return
        self.closing = True
        if not self.output:
            self._closed()
        else:
            self._linger = self.harness.scheduler.call_later(
                self.harness.config.close_linger, self._linger_expired
            )

    def abort(self) -> None:
        self.calls.append("abort")
        if self.aborted:
            self.harness.violation(self, "abort twice")
            return
        self.aborted = True
        self.fail_handoffs()
        self._closed()

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")
        self.reading = True

    # -- the fake kernel, driven by the test -------------------------------------

    def stop_taking(self) -> None:
        """The peer stops reading: from now on writes queue."""
        self.taking = False

    def start_taking(self) -> None:
        """The peer reads again: what is queued goes out, and so does what follows."""
        self.taking = True
        self.take_all()

    def take(self, n: int) -> None:
        """The kernel takes ``n`` more bytes of the queue."""
        self._take(n)
        self.harness.settle()

    def take_all(self) -> None:
        self._take(self.output.size)
        self.harness.settle()

    def _take(self, n: int) -> None:
        if self.closed:
            return
        output = self.output
        n = min(n, output.size)
        while n:
            chunk = b"".join(bytes(b) for b in output.buffers())[:n]
            self.received += chunk
            n -= len(chunk)
            for callback in output.consume(len(chunk)):
                callback(True)
            if self.closed:
                return
        if not output and self.connection is not None:
            self.connection.output_drained()
        if self.closing and not self.output and not self.closed:
            self._closed()

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.reading = False
        if self._linger is not None:
            self._linger.cancel()
        self.harness.dead.append(self)

    def _linger_expired(self) -> None:
        if self.connection is not None:
            self.connection.abort("did not close in time")
        else:
            self.abort()

    # -- reading, as the backend does it ----------------------------------------

    def read_one(self) -> bool:
        """Hand the connection the next chunk waiting in TCP; False if none could be."""
        if not self.reading or self.closed or not self.inbox:
            return False
        data = self.inbox.popleft()
        if self.closing:
            return True  # input after bye, or while draining: read and discarded
        if not data:
            self.eof_read = True
        assert self.connection is not None
        self.connection.data_received(data)
        return True


class FakePeer:
    """The client end of one fake connection."""

    def __init__(self, harness: Harness, transport: FakeTransport) -> None:
        self.harness = harness
        self.transport = transport
        self._read = 0  # how much of transport.received the test has looked at
        self.input_closed = False

    @property
    def connection(self) -> Connection:
        assert self.transport.connection is not None
        return self.transport.connection

    # -- input ------------------------------------------------------------------

    def send(self, *lines: str) -> None:
        """Send each line with a newline, in one write."""
        self.send_raw(b"".join(line.encode() + b"\n" for line in lines))

    def send_raw(self, data: bytes) -> None:
        assert data, "use close() for end of input"
        assert not self.input_closed, "the peer already closed its side"
        self.transport.inbox.append(data)
        self.harness.settle()

    def close(self) -> None:
        """End of input (the peer's FIN): ``data_received(b"")`` once read."""
        self.input_closed = True
        self.transport.inbox.append(EOF)
        self.harness.settle()

    def drop(self) -> None:
        """The peer vanishes with a reset: the backend sees a read error."""
        if not self.transport.closed:
            self.connection.abort("connection error: Connection reset by peer")
        self.harness.settle()

    # -- output -------------------------------------------------------------------

    @property
    def wire(self) -> bytes:
        """Every byte this peer has read from the server."""
        return bytes(self.transport.received)

    def lines(self) -> list[str]:
        """The complete lines read since the last call."""
        data = self.transport.received
        end = data.rfind(b"\n", self._read) + 1
        if end <= self._read:
            return []
        chunk = bytes(data[self._read:end])
        self._read = end
        return chunk.decode().split("\n")[:-1]

    def expect(self, *lines: str) -> None:
        """The lines read since the last look are exactly these, in order."""
        got = self.lines()
        assert got == list(lines), f"{self.name}: expected {list(lines)!r}, got {got!r}"

    def expect_nothing(self) -> None:
        self.expect()

    @property
    def name(self) -> str:
        return self.connection.username or f"<peer from {self.transport.peer_host}>"

    # -- the peer's reading, as the fake kernel sees it -----------------------------

    def stop_reading(self) -> None:
        self.transport.stop_taking()

    def read_all(self) -> None:
        self.transport.take_all()

    def start_reading(self) -> None:
        self.transport.start_taking()

    @property
    def queued(self) -> int:
        return self.transport.output.size

    @property
    def closed(self) -> bool:
        return self.transport.closed

    @property
    def paused(self) -> bool:
        return not self.transport.reading and not self.transport.closed


class DeferredWhiteboard(MemoryWhiteboard[Connection]):
    """A whiteboard whose claims are answered only when the test says so, as a
    shared store's replies come later.  The verdict is decided at answer time."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: deque[tuple[str, Connection, ClaimResult]] = deque()
        self.after_answer: Callable[[], None] = lambda: None

    def claim(self, name: str, session: Connection, on_result: ClaimResult) -> None:
        self.waiting.append((name, session, on_result))

    def answer_next(self) -> None:
        name, session, on_result = self.waiting.popleft()
        super().claim(name, session, on_result)
        self.after_answer()

    def answer_all(self) -> None:
        while self.waiting:
            self.answer_next()


class Harness:
    """A chat service on fake transports, a fake clock and a fake scheduler."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        whiteboard: Roster[Connection] | None = None,
        accounts: LoginStep | None = None,
        **overrides: Any,
    ) -> None:
        self.config = replace(config or ServerConfig(), **overrides)
        self.clock = FakeClock()
        self.scheduler = Scheduler(self.clock)
        self.whiteboard = whiteboard
        if isinstance(whiteboard, DeferredWhiteboard):
            whiteboard.after_answer = self.settle
        self.chat = build_chat(self.config, whiteboard, accounts, clock=self.clock)
        # No call_soon_threadsafe: the "workers" of these tests run on the
        # chat thread, and their answers come through call_later(0).
        self.chat.attach(self.scheduler.call_later)
        self.dead: list[FakeTransport] = []
        self.transports: list[FakeTransport] = []
        self.violations: list[str] = []
        self._settling = False

    # -- the backend's part ---------------------------------------------------------

    def connect(self, host: str = "127.0.0.1") -> FakePeer:
        transport = FakeTransport(self, host)
        self.transports.append(transport)
        self.chat.connection_made(transport)
        self.settle()
        return FakePeer(self, transport)

    def login(self, name: str, host: str = "127.0.0.1") -> FakePeer:
        """Connect and log in; the newcomer's own online notice is consumed."""
        peer = self.connect(host)
        peer.send(name)
        peer.expect(f"<User {name} is online.>")
        return peer

    def settle(self) -> None:
        """End of a pass: read what waits for connections reading again, and
        report the transports that closed; repeat while either causes more."""
        if self._settling:
            return
        self._settling = True
        try:
            progress = True
            while progress:
                progress = False
                for transport in list(self.transports):
                    progress |= transport.read_one()
                while self.dead:
                    transport = self.dead.pop(0)
                    progress = True
                    if transport.lost_reported:
                        self.violation(transport, "closed twice")
                        continue
                    transport.lost_reported = True
                    if transport.connection is not None:
                        transport.connection.connection_lost()
        finally:
            self._settling = False

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of fake time pass, running timers as they fall due."""
        self.scheduler.advance(seconds, after_each=self.settle)
        self.settle()

    def shutdown(self) -> None:
        self.chat.shutdown()
        self.settle()

    def violation(self, transport: FakeTransport, what: str) -> None:
        connection = transport.connection
        self.violations.append(f"{connection!r}: {what}")

    # -- for assertions -------------------------------------------------------------

    def online(self) -> list[str]:
        return self.chat.whiteboard.online_names()
