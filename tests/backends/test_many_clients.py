"""Hundreds of clients at once: every message delivered exactly once, in order."""

from __future__ import annotations

import selectors
import socket
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from protocol import BroadcastFrom, LineBuffer, MessageFrom, UserOnline, parse_event
from reactor.backends.base import Server
from tests.faults import raise_own_open_file_limit

# Slow: hundreds of clients at once.
pytestmark = pytest.mark.slow

CLIENTS = 200
DIRECT_PER_CLIENT = 10
BROADCASTS_PER_CLIENT = 2


class Crowd:
    """Many raw clients read by one selector loop, lines parsed as events."""

    def __init__(self, port: int, count: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.buffers = [LineBuffer(1 << 16) for _ in range(count)]
        self.events: list[list[object]] = [[] for _ in range(count)]
        # Running tallies, so that a completion check costs O(1), not a scan
        # of every event so far: the scan, run after each readiness batch,
        # took the GIL from an in-process server for a minute.
        self.online_notices = 0
        self.messages = [0] * count
        for index in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            self.socks.append(sock)
            self.selector.register(sock, selectors.EVENT_READ, index)

    def read_until(self, done: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, "deliveries did not complete in time"
            for key, _ in self.selector.select(min(remaining, 1.0)):
                index = key.data
                data = self.socks[index].recv(1 << 16)
                assert data, f"client {index} was disconnected"
                for line in self.buffers[index].feed(data):
                    event = parse_event(line.decode())  # type: ignore[union-attr]
                    self.events[index].append(event)
                    if isinstance(event, UserOnline):
                        self.online_notices += 1
                    elif isinstance(event, MessageFrom | BroadcastFrom):
                        self.messages[index] += 1

    def close(self) -> None:
        self.selector.close()
        for sock in self.socks:
            sock.close()


def test_hundreds_of_clients_exchange_numbered_messages(server: Server) -> None:
    raise_own_open_file_limit(2 * CLIENTS + 256)
    crowd = Crowd(server.port, CLIENTS)
    names = [f"user{index:03d}" for index in range(CLIENTS)]
    try:
        for sock, name in zip(crowd.socks, names, strict=True):
            sock.sendall(name.encode() + b"\n")
        # Whatever order the logins are admitted in, the k-th client to log in
        # hears its own notice and those of everyone after it: N(N+1)/2 in all.
        crowd.read_until(lambda: crowd.online_notices == CLIENTS * (CLIENTS + 1) // 2)
        for events in crowd.events:
            events.clear()

        # Each client sends numbered messages to its neighbour and a few broadcasts,
        # all interleaved on the wire in one burst per client.
        for index, sock in enumerate(crowd.socks):
            neighbour = names[(index + 1) % CLIENTS]
            lines = [f'chat {neighbour} "dm {index} {seq}"' for seq in range(DIRECT_PER_CLIENT)]
            lines += [f'broadcast "bc {index} {seq}"' for seq in range(BROADCASTS_PER_CLIENT)]
            sock.sendall("".join(line + "\n" for line in lines).encode())

        per_client = DIRECT_PER_CLIENT + (CLIENTS - 1) * BROADCASTS_PER_CLIENT

        crowd.read_until(lambda: min(crowd.messages) >= per_client)

        for index, events in enumerate(crowd.events):
            by_sender: dict[tuple[str, str], list[int]] = defaultdict(list)
            for event in events:
                if isinstance(event, MessageFrom | BroadcastFrom):
                    kind, origin, seq = event.text.split()
                    assert names[int(origin)] == event.sender
                    by_sender[(kind, event.sender)].append(int(seq))
            predecessor = names[(index - 1) % CLIENTS]
            assert by_sender.pop(("dm", predecessor)) == list(range(DIRECT_PER_CLIENT))
            assert len(by_sender) == CLIENTS - 1
            for (kind, sender), seqs in by_sender.items():
                assert kind == "bc" and sender != names[index]
                assert seqs == list(range(BROADCASTS_PER_CLIENT)), (sender, seqs)
    finally:
        crowd.close()
