"""The select backend's fast write paths match its general ones.

Every send of the select backend goes through ``SelectorTransport._send``,
except a few paths written out for speed (each named a fast path in its
docstring).  Each is checked here against the general path it stands for:
the same output, in the same state, over real socket pairs -- what the peer
receives, what stays queued, which handoffs ran and whether the transport
waits for EVENT_WRITE.  The server is built but not run: the test drives
the writes itself, as the loop would within one pass.  A fan-out's
recipients include web connections (a browser's WebSocket), which the fast
path hands the line's frame.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from reactor.app import build_chat
from reactor.backends.selector import (
    _WRITE,
    SelectorServer,
    SelectorTLSTransport,
    SelectorTransport,
    SelectorWebTransport,
)
from reactor.connection import Connection
from reactor.tls import load_context
from reactor.web.http import Site
from tests.support import TEST_CONFIG

LINE = b"<Broadcast from Alice: %s>\n" % (b"x" * 8000)  # more than a little room


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


class TLSPeer(Peer):
    """A TLS client over memory buffers, its handshake done with the server's transport."""

    def __init__(self, server: SelectorServer, certs: trustme.CA, context: ssl.SSLContext) -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        transport = SelectorTLSTransport(ours, "127.0.0.1", server)
        transport.start_tls(context)
        server.selector.register(ours, 1, transport)
        super().__init__(server.chat.connection_made(transport), theirs)
        client_context = ssl.create_default_context()
        certs.configure_trust(client_context)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = client_context.wrap_bio(self._in, self._out, server_hostname="localhost")
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                theirs.sendall(self._out.read())
                server.handshakes.end_pass()  # (the loop's per-pass bound)
                transport.on_readable()
                transport.flush()
                self._in.write(theirs.recv(1 << 20))
        theirs.sendall(self._out.read())  # the client's Finished
        server.handshakes.end_pass()
        transport.on_readable()
        transport.flush()
        self.plain = bytearray()

    def received(self) -> bytes:
        ciphertext = Peer.received(self)
        if ciphertext:
            self._in.write(ciphertext)
        with contextlib.suppress(ssl.SSLWantReadError):
            while chunk := self._ssl.read(1 << 20):
                self.plain += chunk
        return bytes(self.plain)


def test_tls_flush_fast_path(tmp_path: Path) -> None:
    """SelectorTLSTransport.flush (the queue sealed in one record) sends the
    same plaintext, runs the same handoffs and leaves the same state as
    _flush_wire (flush's every case)."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    context = load_context(str(cert), str(key))
    with idle_server() as server:
        fast, general = TLSPeer(server, ca, context), TLSPeer(server, ca, context)
        for peer in (fast, general):
            peer.received()  # what the handshake brought (a session ticket)
            peer.plain.clear()
            for i in range(20):
                if i % 3:
                    peer.transport.output.append(b"<Broadcast from Alice: hello>\n")
                else:
                    peer.transport.output.append(b"<Message from Bob: %d>\n" % i,
                                                 peer.handoffs.append)
        fast.transport.flush()
        general.transport._flush_wire()
        assert fast.state() == general.state()
        assert fast.handoffs == [True] * 7
        assert fast.plain.count(b"\n") == 20
