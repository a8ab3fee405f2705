"""Joined fan-outs (reactor.backends.joins), over real sockets on every backend.

A sender's broadcasts handled in one turn are queued to each recipient as
one piece.  What a peer sees must not change: every line once, in the order
it was sent, whatever else is written to a recipient in the same turn (a
direct message, a kick and its close, another fan-out) and whether or not a
recipient has passed the high-water mark.  Each test also checks that the
server did join, so that it tests the join and not the path beside it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from functools import partial
from typing import cast

import pytest

from protocol.events import format_broadcast_from, format_message_from
from reactor.backends.base import Server
from reactor.backends.joins import JoinedFanOuts
from reactor.connection import Connection
from reactor.flow import FloodLimits
from tests.accounts.test_accounts import (  # noqa: F401  (db: a fixture)
    db,
    log_in,
    register,
    settings,
)
from tests.accounts.test_moderation import make_operator, op_online
from tests.faults import Drain, client_pool
from tests.support import DEFAULT_TIMEOUT, running_server, wait_until

KiB = 1024
NO_FLOOD_CONTROL = FloodLimits(enabled=False)


def count_joins(server: Server) -> Callable[[], int]:
    """Count the fan-outs that joined another from now on; returns the count's reader."""
    assert isinstance(server, JoinedFanOuts)
    join = server._join
    joins = [0]

    def counting(data: bytes, connections: list[Connection], turn: int) -> bool:
        joined = join(data, connections, turn)
        joins[0] += joined
        return joined

    server._join = counting  # type: ignore[method-assign]
    return lambda: joins[0]


@pytest.fixture
def quick_server(backend: str) -> Iterator[Server]:
    """A server whose senders are not metered: a write's lines go in few turns."""
    with running_server(backend, flood=NO_FLOOD_CONTROL) as server:
        yield server


def from_sender(name: str, lines: list[bytes]) -> list[bytes]:
    """The lines of ``lines`` that ``name`` sent (broadcasts and messages)."""
    prefixes = (b"<Broadcast from %s: " % name.encode(), b"<Message from %s: " % name.encode())
    return [line for line in lines if line.startswith(prefixes)]


def received_all(sender: str, count: int, drain: Drain) -> bool:
    return len(from_sender(sender, drain.lines)) >= count


def has_read(count: int, drain: Drain) -> bool:
    return drain.line_count >= count


def line_of(event: bytes) -> bytes:
    """An event as a Drain keeps it: without its newline."""
    return event.rstrip(b"\n")


def test_two_senders_pipelined_broadcasts_and_messages_arrive_once_each_in_order(
        quick_server: Server) -> None:
    """Two senders each write 300 broadcasts with a direct message to one of
    the readers every fifth line, in one write, at the same time.  Every
    reader gets each sender's lines meant for it exactly once, in that
    sender's order, and each sender the other's broadcasts in order."""
    joins = count_joins(quick_server)
    with client_pool(quick_server.port) as pool:
        readers = {f"R{i}": pool.login(f"R{i}") for i in range(4)}
        senders = {name: pool.login(name) for name in ("A", "B")}
        everyone = {**readers, **senders}
        for name, client in everyone.items():
            if name != "B":  # (who read its own notice at login)
                client.read_until(lambda line: line == "<User B is online.>")
        expected: dict[tuple[str, str], list[bytes]] = {
            (sender, to): [] for sender in senders for to in everyone if to != sender}
        writes: dict[str, bytes] = {}
        for sender in senders:
            commands = []
            for i in range(300):
                if i % 5 == 4:
                    to = f"R{i % 4}"
                    commands.append(f'chat {to} "{sender}{i}"\n')
                    expected[sender, to].append(line_of(format_message_from(sender, f"{sender}{i}")))
                else:
                    commands.append(f'broadcast "{sender}{i}"\n')
                    for to in everyone:
                        if to != sender:
                            expected[sender, to].append(line_of(
                                format_broadcast_from(sender, f"{sender}{i}")))
            writes[sender] = "".join(commands).encode()
        drains = {name: Drain(client.sock, keep=lambda line: line.startswith(b"<"))
                  for name, client in everyone.items()}
        try:
            for sender, data in writes.items():
                senders[sender].sock.sendall(data)
            for (sender, to), lines in expected.items():
                drains[to].wait_for(partial(received_all, sender, len(lines)),
                                    timeout=30, message=f"{sender}'s lines at {to}")
            for (sender, to), lines in expected.items():
                assert from_sender(sender, drains[to].kept()) == lines, f"{sender}'s at {to}"
        finally:
            for drain in drains.values():
                drain.stop()
    assert joins() > 0  # the server joined fan-outs


def test_a_kick_between_pipelined_broadcasts_keeps_each_recipients_order(
        backend: str, db: str) -> None:  # noqa: F811
    """The operator writes two broadcasts, a kick of Bob and two more
    broadcasts in one write.  Bob gets the first two, then his notice, then
    the close; Alice gets all four in order, Bob's leaving between."""
    with running_server(backend, flood=NO_FLOOD_CONTROL,
                        accounts=settings(db)) as server:
        register(server.port, "Op")
        make_operator(db)
        joins = count_joins(server)
        with log_in(server.port, "Alice") as alice, log_in(server.port, "Bob") as bob, \
                op_online(server.port) as op:
            for client in (alice, bob):
                client.read_until(lambda line: line == "<User Op is online.>")
            op.send_raw(b'broadcast "b0"\nbroadcast "b1"\nkick Bob "enough"\n'
                        b'broadcast "b2"\nbroadcast "b3"\n')
            b0, b1, b2, b3 = (line_of(format_broadcast_from("Op", f"b{i}")).decode()
                              for i in range(4))
            assert bob.read_until(lambda line: line.startswith("<Kicked")) == [
                b0, b1, '<Kicked by Op: "enough">']
            assert bob.expect_closed() == b""
            assert alice.read_until(lambda line: line == b3) == [
                b0, b1, "<User Bob is offline.>", b2, b3]
        assert joins() > 0


def test_a_recipient_past_the_high_water_mark_mid_burst_gets_every_line_in_order(
        backend: str) -> None:
    """Slow stops reading while Alice's bursts of broadcasts come, until its
    queue is well past the high-water mark (each burst's lines joined, a
    piece at a time); then it reads.  Slow and Bob get every line, once, in
    order."""
    high_water = 16 * KiB
    with running_server(backend, flood=NO_FLOOD_CONTROL, output_high_water=high_water,
                        slow_consumer_grace=3600) as server, \
            client_pool(server.port) as pool:
        slow_sock = socket.socket()
        slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow_sock.settimeout(DEFAULT_TIMEOUT)
        slow_sock.connect(("127.0.0.1", server.port))
        slow_sock.sendall(b"Slow\n")  # ... and it reads nothing until the end
        wait_until(lambda: server.chat.whiteboard.lookup("Slow") is not None,
                   message="Slow logged in")
        found = server.chat.whiteboard.lookup("Slow")
        assert found is not None
        session = cast(Connection, found[1])
        alice, bob = pool.login("Alice"), pool.login("Bob")
        alice.read_until(lambda line: line == "<User Bob is online.>")
        joins = count_joins(server)
        alice_lines = Drain(alice.sock)
        bob_lines = Drain(bob.sock, keep=lambda line: line.startswith(b"<Broadcast"))
        sent = 0
        try:
            while session.transport.queued < 4 * high_water or not joins():
                echoes = alice_lines.line_count + 16
                alice.send_raw(b"".join(b'broadcast "%d %s"\n' % (sent + i, b"y" * 2000)
                                        for i in range(16)))
                sent += 16
                alice_lines.wait_for(partial(has_read, echoes), message="the echoes")
                assert sent < 20_000, "Slow's queue never passed the high-water mark"
            expected = [line_of(format_broadcast_from("Alice", f"{i} {'y' * 2000}"))
                        for i in range(sent)]
            slow = Drain(slow_sock, keep=lambda line: line.startswith(b"<Broadcast"))
            slow.wait_for(lambda d: len(d.kept()) >= sent, timeout=30,
                          message="Slow's backlog")
            bob_lines.wait_for(lambda d: len(d.kept()) >= sent, message="Bob's lines")
            assert slow.kept() == expected
            assert bob_lines.kept() == expected
            slow.stop()
        finally:
            slow_sock.close()
            alice_lines.stop()
            bob_lines.stop()

