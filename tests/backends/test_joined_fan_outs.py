"""Joined fan-outs (reactor.backends.joins), over real sockets on every backend.

A sender's broadcasts handled in one turn are queued to each recipient as
one piece.  What a peer sees must not change: every line once, in the
order it was sent, whatever else happens to a recipient in the same turn (a
direct message or a reply to it, its close or its cut, another sender's
fan-out) and whether or not a recipient passes the high-water mark.  Each
test also checks that the server did join, so that it tests the join and
not the path beside it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import cast

import pytest

from protocol.events import format_broadcast_from, format_message_from
from reactor.backends.base import Server
from reactor.backends.joins import JoinedFanOuts
from reactor.connection import Connection
from reactor.flow import FloodLimits
from tests.faults import Drain, client_pool
from tests.support import DEFAULT_TIMEOUT, Clients, running_server, wait_until

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


def text(i: int) -> bytes:
    """Broadcast ``i``'s text: 1,000 bytes (16 commands fill most of one read)."""
    return b"%05d %s" % (i, b"y" * 994)


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


# What may happen to one recipient between two fan-outs of one turn.
BETWEEN: dict[str, Callable[[Connection], object]] = {
    "nothing": lambda connection: None,
    "a reply to it": lambda connection: connection.send(b"<reply>\n"),
    "it closes": lambda connection: connection.close("bye"),
    "it is cut off": lambda connection: connection.abort("gone"),
}


@pytest.mark.parametrize("between", BETWEEN)
def test_a_turns_fan_outs_reach_each_recipient_in_order_whatever_happens_to_one_between(
        server: Server, clients: Clients, between: str) -> None:
    """Ten fan-outs to a newcomer (connected, not logged in: its leaving
    tells nobody), P1 and P2 in one turn of the server (a callback of its
    own), with ``between`` happening to the newcomer after the fourth.
    Each gets what it would have got from each line sent on its own: every
    line, once, in order, the reply in its place; a newcomer that closes
    gets the four lines before its close, one cut off at most those."""
    p1 = clients.login("P1")
    p2 = clients.login("P2")
    p1.read_until(lambda line: line == "<User P2 is online.>")
    newcomer = clients.connect()
    wait_until(lambda: len(list(server.chat.connections)) == 3, message="the newcomer")
    first = next(connection for connection in list(server.chat.connections)
                 if connection.username is None)
    sessions = [first, session_of(server, "P1"), session_of(server, "P2")]
    joins = count_joins(server)
    lines = [b"<Fan-out %d>\n" % i for i in range(10)]
    done = threading.Event()

    def turn() -> None:
        try:
            for i, line in enumerate(lines):
                server.chat._fan_out(line, sessions)
                if i == 3:
                    BETWEEN[between](first)
        finally:
            done.set()

    server.call_soon_threadsafe(turn)
    assert done.wait(DEFAULT_TIMEOUT)
    if between in ("it closes", "it is cut off"):
        before = b"".join(lines[:4])
        received = newcomer.expect_closed()
        if between == "it closes":
            assert received == before  # drained, then closed
        else:
            assert before.startswith(received)  # what the kernel took before the cut
    else:
        reply = [b"<reply>\n"] if between == "a reply to it" else []
        assert [newcomer.read_line_bytes() for _ in range(10 + len(reply))] == [
            *lines[:4], *reply, *lines[4:]]
    for client in (p1, p2):
        assert [client.read_line_bytes() for _ in lines] == lines
        client.send("users")  # nothing more came (a marker round trip)
        assert client.read_line().startswith("<Online users: ")
    assert joins() > 0


def session_of(server: Server, name: str) -> Connection:
    found = server.chat.whiteboard.lookup(name)
    assert found is not None, f"{name} is not online"
    return cast(Connection, found[1])


def test_a_recipient_past_the_high_water_mark_mid_burst_gets_every_line_in_order(
        backend: str) -> None:
    """Slow stops reading while Alice's bursts of broadcasts come, until its
    queue is well past the high-water mark; then it reads.  A burst is read
    in one turn and its lines' events are more than the mark, so each
    joined piece takes a recipient past it: the rest go line by line, as a
    fan-out's rest does.  Slow and Bob get every line, once, in order."""
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
        session = session_of(server, "Slow")
        alice, bob = pool.login("Alice"), pool.login("Bob")
        alice.read_until(lambda line: line == "<User Bob is online.>")
        joins = count_joins(server)
        alice_lines = Drain(alice.sock)
        bob_lines = Drain(bob.sock, keep=lambda line: line.startswith(b"<Broadcast"))
        sent = 0
        try:
            while session.transport.queued < 4 * high_water or not joins():
                echoes = alice_lines.line_count + 16
                alice.send_raw(b"".join(b'broadcast "%s"\n' % text(sent + i)
                                        for i in range(16)))
                sent += 16
                alice_lines.wait_for(partial(has_read, echoes), message="the echoes")
                assert sent < 20_000, "no join took Slow past the high-water mark"
            expected = [line_of(format_broadcast_from("Alice", text(i).decode()))
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

