"""Chat clients that keep every line they read, and a hub that reads them all.

``Client`` is one chat connection whose lines are kept with their arrival
time (ns); ``Hub`` reads every client it holds while it waits for a
condition with a deadline (``until``), and logs names in all at once.  The
cluster phases and bench/node_death.py watch notices and echoes with them.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable

from bench.harness import wire


class Client:
    """One chat connection whose lines are kept with their arrival time (ns)."""

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""
        self.lines: list[tuple[int, bytes]] = []
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def read(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        now = time.monotonic_ns()
        if not data:
            self.closed = True
            return
        *lines, self.buf = (self.buf + data).split(b"\n")
        self.lines.extend((now, line) for line in lines)

    def find(self, needle: bytes, start: int = 0) -> int | None:
        """Arrival time of the first line from ``start`` on containing ``needle``."""
        for t, line in self.lines[start:]:
            if needle in line:
                return t
        return None

    def count(self, needle: bytes, start: int = 0) -> int:
        return sum(1 for _, line in self.lines[start:] if needle in line)

    def close(self) -> None:
        self.sock.close()


class Hub:
    """Reads every client it holds while waiting for a condition."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: list[Client] = []

    def connect(self, port: int, name: str) -> Client:
        c = Client(port, name)
        self.sel.register(c.sock, selectors.EVENT_READ, c)
        self.clients.append(c)
        return c

    def drop(self, c: Client) -> None:
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.close()
        self.clients.remove(c)

    def poll(self, timeout: float) -> None:
        for key, _ in self.sel.select(max(0.0, timeout)):
            c = key.data
            c.read()
            if c.closed:
                self.sel.unregister(c.sock)

    def until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(0.05, left))
        return True

    def settle(self, seconds: float) -> None:
        self.until(lambda: False, seconds)

    def login(self, port: int, names: list[str], timeout: float = 20.0) -> list[Client]:
        """Connect and log ``names`` in (all at once); raise if any is not online."""
        cs = [self.connect(port, name) for name in names]
        for c in cs:
            c.send(c.name.encode() + b"\n")
        ok = self.until(lambda: all(c.find(wire.online_notice(c.name)) for c in cs), timeout)
        if not ok:
            bad = [c.name for c in cs if not c.find(wire.online_notice(c.name))]
            raise RuntimeError(f"could not log in {bad[:5]}: {cs[0].lines[-3:]!r}")
        return cs

    def close(self) -> None:
        for c in list(self.clients):
            self.drop(c)
        self.sel.close()

