"""The select backend's fast write paths match its general ones.

Every send of the select backend goes through ``SelectorTransport._send``,
except a few paths written out for speed (each named a fast path in its
docstring).  Each is checked here against the general path it stands for:
the same output, in the same state, over real socket pairs -- what the peer
receives, what stays queued, which handoffs ran and whether the transport
waits for EVENT_WRITE.  The server is built but not run: the test drives
the writes itself, as the loop would within one pass.  A fan-out's
recipients include web connections (a browser's WebSocket), which the fast
path hands the line's frame.  TLS recipients: test_selector_tls_writes.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from reactor.app import build_chat
from reactor.backends.selector import SelectorServer
from reactor.backends.selector_pollers import _WRITE
from reactor.backends.selector_transport import SelectorTransport, SelectorWebTransport
from reactor.connection import Connection
from reactor.flow import FloodLimits
from reactor.web.http import Site
from tests.support import (
    DEFAULT_TIMEOUT,
    TEST_CONFIG,
    Clients,
    check_send_now_whole_or_none,
    count_room_checks,
    loopback_tcp,
    running_server,
    wait_until,
)

LINE = b"<Broadcast from Alice: %s>\n" % (b"x" * 8000)  # more than a little room
NO_FLOOD = FloodLimits(enabled=False)


@contextlib.contextmanager
def idle_server() -> Iterator[SelectorServer]:
    """A select server built and attached, but not run; closed on exit."""
    server = SelectorServer(TEST_CONFIG, build_chat(TEST_CONFIG))
    server.chat.attach(server.call_later, server.call_soon_threadsafe, server.send_at_once)
    try:
        yield server
    finally:
        for connection in list(server.chat.connections):
            connection.transport.sock.close()  # type: ignore[attr-defined]
        for listener in server.listeners:
            listener.sock.close()
        server.selector.close()


@pytest.fixture
def server() -> Iterator[SelectorServer]:
    with idle_server() as server:
        yield server


@dataclass
class Peer:
    """One client: the server's connection to it and the client's socket."""

    connection: Connection
    sock: socket.socket
    handoffs: list[bool] = field(default_factory=list)

    @property
    def transport(self) -> SelectorTransport:
        return self.connection.transport  # type: ignore[return-value]

    def received(self) -> bytes:
        data = bytearray()
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return bytes(data)
            if not chunk:
                return bytes(data)
            data += chunk

    def state(self) -> tuple[object, ...]:
        """All that a write path may change, as the peer and the loop see it."""
        transport = self.transport
        return (self.received(), transport.output.size, transport.output.entries,
                bool(transport._events & _WRITE), transport._in_pending, tuple(self.handoffs))


def connect(server: SelectorServer) -> Peer:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    transport = SelectorTransport(ours, "127.0.0.1", server)
    server.selector.register(ours, 1, transport)
    return Peer(server.chat.connection_made(transport), theirs)


def connect_browser(server: SelectorServer) -> Peer:
    """A web connection past its WebSocket handshake (its answer read)."""
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    transport = SelectorWebTransport(ours, "127.0.0.1", server)
    transport.start_web(Site(files={}), TEST_CONFIG.max_line, TEST_CONFIG.output_hard_limit)
    server.selector.register(ours, 1, transport)
    peer = Peer(server.chat.connection_made(transport), theirs)
    client = ClientProtocol(parse_uri("ws://127.0.0.1/ws"))
    client.send_request(client.connect())
    transport.web_received(b"".join(client.data_to_send()))  # as the loop would
    server._settle()
    assert transport.web.upgraded and peer.received().startswith(b"HTTP/1.1 101 ")
    return peer


def fill_the_kernel(peer: Peer, then_read: int = 0) -> None:
    """The peer stops reading: its socket takes nothing more (until the
    peer reads ``then_read`` bytes: a little room, not writable)."""
    sock = peer.transport.sock
    if then_read:
        # A small buffer, taken in pieces: reading one frees one.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    chunk = b"x" * 65536
    while True:
        try:
            sock.send(chunk)
        except BlockingIOError:
            break
    if then_read:
        peer.sock.recv(then_read)


def with_a_queue(peer: Peer) -> None:
    fill_the_kernel(peer)
    peer.connection.send(b"queued\n")


# Each sets one recipient up before the fan-out, as it may be found in a pass.
SETUPS: dict[str, Callable[[Peer], object]] = {
    "idle": lambda peer: None,
    "already written to this turn": lambda peer: peer.connection.send(b"first\n"),
    "with a queue": with_a_queue,
    "whose kernel is full": fill_the_kernel,
    "whose kernel has a little room": lambda peer: fill_the_kernel(peer, 4096),
    "closed": lambda peer: peer.connection.abort("gone"),
}


def run_fan_out(server: SelectorServer, fast: bool, batch: bool) -> list[tuple[object, ...]]:
    """One fan-out to a recipient of each setup, a plain one and a web one,
    through send_at_once (then connection.send for what it returns) or
    connection.send alone."""
    peers = [connect(server) for _ in SETUPS] + [connect_browser(server) for _ in SETUPS]
    server.turn += 1  # a new pass
    server.write_through = True
    for setup, peer in zip([*SETUPS.values(), *SETUPS.values()], peers, strict=True):
        setup(peer)
    recipients = [peer.connection for peer in peers]
    if fast:
        recipients = server.send_at_once(LINE, recipients, batch)
        idle_browser = peers[len(SETUPS)].connection
        assert idle_browser not in recipients  # the fast path took the web connection
    for connection in recipients:
        connection.send(LINE)
    server._settle()
    return [peer.state() for peer in peers]


@pytest.mark.parametrize("batch", [False, True], ids=["write-through", "batched"])
def test_fan_out_fast_path(batch: bool) -> None:
    """SelectorTransport.fan_out_first and enqueue_each (send_at_once) leave
    every recipient as connection.send would."""
    states = []
    for fast in (True, False):
        with idle_server() as server:
            states.append(run_fan_out(server, fast, batch))
    fast_states, general_states = states
    names = [*SETUPS, *(f"{name} (web)" for name in SETUPS)]
    for name, fast_state, general_state in zip(names, fast_states, general_states,
                                               strict=True):
        assert fast_state == general_state, name


# What may happen to one recipient between two fan-outs of one pass.
BETWEEN: dict[str, Callable[[Peer], object]] = {
    "nothing": lambda peer: None,
    "a reply to it": lambda peer: peer.connection.send(b"reply\n"),
    "it closes": lambda peer: peer.connection.close("bye"),
    "it is cut off": lambda peer: peer.connection.abort("gone"),
}


def run_fan_outs(server: SelectorServer, fast: bool, between: str) -> list[tuple[object, ...]]:
    """Ten fan-outs to the same recipients in one batched pass (with
    ``between`` happening to the first after the fourth), through the
    chat's fan-out (send_at_once) or connection.send alone."""
    peers = [connect(server) for _ in range(3)]
    server.turn += 1
    server.write_through = False
    fill_the_kernel(peers[2])  # its queue passes the high-water mark meanwhile
    for i in range(10):
        line = b"<Broadcast from Alice: %d %s>\n" % (i, b"x" * 8000)
        recipients = [peer.connection for peer in peers]
        if fast:
            server.chat._fan_out(line, recipients)  # (through send_at_once)
            if i == 1:
                assert server.joined is not None  # the fast path under test joined
        else:
            for connection in recipients:
                connection.send(line)
        if i == 3:
            BETWEEN[between](peers[0])
    server._settle()
    return [(*peer.state(), peer.connection.output_backlog) for peer in peers]


@pytest.mark.parametrize("between", BETWEEN)
def test_joined_fan_outs_match_the_general_path(between: str) -> None:
    """Fan-outs joined in a pass (reactor.backends.joins) leave every
    recipient as connection.send of each line would: the same bytes in the
    same order, queue and flags, whatever happens to one of them between."""
    states = []
    for fast in (True, False):
        with idle_server() as server:
            states.append((run_fan_outs(server, fast, between), server.chat.stats.bytes_out))
    assert states[0] == states[1]


def queue_mixed(peer: Peer, partly_sent: bool) -> None:
    """A queue of shared lines and direct messages with handoffs."""
    output = peer.transport.output
    if partly_sent:
        output.append(memoryview(b"...rest of a line\n"))
    for i in range(300):  # more than one sendmsg's worth of buffers
        if i % 7:
            output.append(b"<Broadcast from Alice: hello>\n")
        else:
            output.append(b"<Message from Bob: %d>\n" % i, peer.handoffs.append)


@pytest.mark.parametrize("kernel", ["takes it all", "is full", "has a little room"])
@pytest.mark.parametrize("partly_sent", [False, True], ids=["whole", "partly-sent"])
def test_flush_fast_path(server: SelectorServer, kernel: str, partly_sent: bool) -> None:
    """_flush_plain leaves the connection as _flush_wire (flush's every
    case) does: the same bytes sent, queue, handoffs and EVENT_WRITE."""
    fast, general = connect(server), connect(server)
    for peer in (fast, general):
        if kernel != "takes it all":
            fill_the_kernel(peer, 4096 if kernel == "has a little room" else 0)
        queue_mixed(peer, partly_sent)
    fast.transport._flush_plain()
    general.transport._flush_wire()
    assert fast.state() == general.state()
    assert fast.handoffs == ([True] * 43 if kernel == "takes it all" else [])


def test_send_now_matches_write(server: SelectorServer) -> None:
    """send_now (deliver's fast path) hands the kernel what write would."""
    fast, general = connect(server), connect(server)
    server.turn += 1
    server.write_through = True
    message = b"<Message from Alice: hi>\n"
    assert fast.transport.send_now(message) == len(message)
    general.transport.write(message, general.handoffs.append)
    fast.handoffs.append(True)  # send_now's caller runs the handoff itself
    assert fast.state() == general.state()


def connect_tcp(server: SelectorServer, sndbuf: int) -> Peer:
    """A client over loopback TCP whose server-side send buffer is ``sndbuf``."""
    ours, theirs = loopback_tcp(sndbuf)
    ours.setblocking(False)
    theirs.setblocking(False)
    transport = SelectorTransport(ours, "127.0.0.1", server)
    server.selector.register(ours, 1, transport)
    return Peer(server.chat.connection_made(transport), theirs)


@pytest.mark.parametrize("sndbuf", [16 * 1024, 256 * 1024])
@pytest.mark.parametrize("sizes", [[20], [7000], [20, 3000, 200, 9000]],
                         ids=["small", "large", "mixed"])
def test_send_now_without_asking_for_room_sends_whole_messages(
        server: SelectorServer, sndbuf: int, sizes: list[int]) -> None:
    """send_now asks the kernel for room only when what it sent since the
    last writable answer could have used it up (reactor.sockets'
    room_after_writable): to a peer who stops reading it still hands the
    kernel each direct message whole or not at all, as when it asks every
    time, and the peer reads exactly what it took -- with fewer polls."""
    def connect() -> tuple[SelectorTransport, Callable[[bytes], int], socket.socket]:
        peer = connect_tcp(server, sndbuf)

        def send_now(message: bytes) -> int:  # one a turn
            server.turn += 1
            server.write_through = True
            return peer.transport.send_now(message)

        return peer.transport, send_now, peer.sock

    check_send_now_whole_or_none(connect, sndbuf, sizes)


@pytest.mark.parametrize("other", ["a reply queued after it", "a fan-out's line sent at once"])
def test_send_now_asks_for_room_after_other_output(server: SelectorServer, other: str) -> None:
    """Other output to the connection since send_now's last message ends
    the room it knew of: it asks the kernel again."""
    peer = connect_tcp(server, 256 * 1024)
    checks = count_room_checks(peer.transport)
    message = b"<Message from Alice: hi>\n"
    for _ in range(2):  # the second without asking
        server.turn += 1
        server.write_through = True
        assert peer.transport.send_now(message) == len(message)
    assert len(checks) == 1
    if other == "a reply queued after it":
        peer.connection.send(b"<To Bob> hi\n")  # same turn: queued, flushed by _settle
        server._settle()
    else:
        server.turn += 1
        assert not SelectorTransport.fan_out_first(LINE, [peer.connection], server.turn, None)
    server.turn += 1
    assert peer.transport.send_now(message) == len(message)
    assert len(checks) == 2


def direct_messages(backend: str, fast: bool,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[object, ...]:
    """Alice writes direct messages to Bob and Carol (several to each in
    one write, one to herself, one to nobody) to a running server:
    what each reads and what the server counted, with the hand-over's fast
    path (Connection.hand_over_at_once) or without it."""
    taken_at_once: list[int] = []
    at_once = Connection.hand_over_at_once

    def hand_over_at_once(self: Connection, recipient: object, data: bytes) -> int | None:
        offered = at_once(self, recipient, data) if fast else None  # type: ignore[arg-type]
        taken_at_once.append(offered == len(data))
        return offered

    monkeypatch.setattr(Connection, "hand_over_at_once", hand_over_at_once)
    with running_server(backend, flood=NO_FLOOD) as server, Clients(server.port) as clients:
        alice, bob, carol = (clients.login(name)
                             for name in ("Alice", "Bob", "Carol"))
        wait_until(lambda: len(server.chat.whiteboard) == 3, message="all online")
        lines = [f'chat {to} "m{i} to {to}"' for i in range(20) for to in ("Bob", "Carol")]
        lines += ['chat Alice "to me"', 'chat Nobody "lost"', 'chat bob "last"']
        alice.send_raw("".join(f"{line}\n" for line in lines).encode())
        alice_read = alice.read_until(lambda line: line == "<To Bob> last")
        bob_read = bob.read_until(lambda line: line == '<Message from Alice: "last">')
        carol_read = carol.read_until(lambda line: line == '<Message from Alice: "m19 to Carol">')
        # Counted on the server's side of its turn: a reply the client has
        # read may not be counted yet (the threads backend counts it after
        # the kernel took it, on the sender's reader thread).
        counts: list[tuple[object, ...]] = []
        taken = threading.Event()

        def count() -> None:
            stats = server.chat.stats
            counts.append((stats.delivered_direct, stats.not_delivered, stats.received_direct,
                           sum(stats.direct_handoff.counts), stats.bytes_out))
            taken.set()

        server.call_soon_threadsafe(count)
        assert taken.wait(DEFAULT_TIMEOUT), "the server did not count"
    assert any(taken_at_once) == fast  # the path under test ran
    return alice_read, bob_read, carol_read, counts[0]


@pytest.mark.parametrize("backend", ["select", "threads"])  # the backends with send_now
def test_hand_over_fast_path_matches_the_general_path(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A direct message the recipient's kernel takes at once is answered
    without the hand-over's callback (Connection.hand_over_at_once): every
    client reads what it reads through the general path (Connection.deliver),
    in the same order, and the server counts the same."""
    assert (direct_messages(backend, True, monkeypatch)
            == direct_messages(backend, False, monkeypatch))
