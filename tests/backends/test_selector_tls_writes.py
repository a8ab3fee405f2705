"""The select backend's fast write paths over TLS match its general ones.

As tests/backends/test_selector_writes.py does for plain connections: each
fast path a TLS recipient takes (a fan-out's sends at once and queueing,
the end-of-pass flush sealing the queue in one record) is checked against
the general path it stands for, over real socket pairs with a real TLS
client (memory buffers, trustme certificates): the plaintext the client
decrypts, what stays queued or encrypted, which handoffs ran, EVENT_WRITE
(and after a fan-out, whether the next pass batches).  And a backlog is
encrypted in full records.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from reactor.backends.selector import SelectorServer
from reactor.backends.selector_tls_transport import SelectorTLSTransport
from reactor.tls import RECORD_SIZE, load_context
from tests.backends.test_selector_writes import LINE, Peer, idle_server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, ssl.SSLContext]:
    """A CA and the server's context, with a certificate for localhost."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    directory: Path = tmp_path_factory.mktemp("tls-writes")
    cert, key = directory / "cert.pem", directory / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return ca, load_context(str(cert), str(key))


class TLSPeer(Peer):
    """A TLS client over memory buffers, its handshake done with the server's transport."""

    def __init__(self, server: SelectorServer, certs: tuple[trustme.CA, ssl.SSLContext]) -> None:
        ca, context = certs
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        transport = SelectorTLSTransport(ours, "127.0.0.1", server)
        transport.start_tls(context)
        server.selector.register(ours, 1, transport)
        super().__init__(server.chat.connection_made(transport), theirs)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
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
        self.ciphertext = bytearray()  # all the client read, as it came
        self.received()  # what the handshake brought (a session ticket)
        self.plain.clear()
        self.ciphertext.clear()

    @property
    def transport(self) -> SelectorTLSTransport:
        return self.connection.transport  # type: ignore[return-value]

    def feed(self, ciphertext: bytes) -> None:
        self.ciphertext += ciphertext
        self._in.write(ciphertext)
        with contextlib.suppress(ssl.SSLWantReadError):
            while chunk := self._ssl.read(1 << 20):
                self.plain += chunk

    def received(self) -> bytes:
        self.feed(Peer.received(self))
        return bytes(self.plain)

    def state(self) -> tuple[object, ...]:
        """Peer.state, with the ciphertext waiting and the records received."""
        tls = self.transport.tls
        assert tls is not None
        return (*Peer.state(self), tls.size, len(self.records()))

    def records(self) -> list[tuple[int, int]]:
        """(content type, length) of each TLS record the client read."""
        data, found = bytes(self.ciphertext), []
        while data:
            length = int.from_bytes(data[3:5], "big")
            found.append((data[0], length))
            data = data[5 + length:]
        return found


def fill_the_kernel(peer: TLSPeer, then_read: int = 0) -> None:
    """The peer stops reading: its socket takes no more ciphertext (until
    the peer reads ``then_read`` bytes: a little room, not writable).  The
    last record went out in part, and waits as a partial send leaves it."""
    transport = peer.transport
    tls = transport.tls
    assert tls is not None
    if then_read:
        transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    filler = b"<Broadcast from Carol: %s>\n" % (b"f" * 4000)
    while True:
        ciphertext = tls.seal(filler)
        assert ciphertext is not None
        try:
            sent = transport.sock.send(ciphertext)
        except BlockingIOError:
            sent = 0
        if sent < len(ciphertext):
            tls.keep(ciphertext, sent, filler, None)
            transport._want_settle()
            break
    if then_read:
        peer.feed(peer.sock.recv(then_read))


def room_for_part_of_a_record(peer: TLSPeer) -> None:
    """A small socket buffer, nearly full, and no ciphertext waiting: the
    kernel takes part of the next record."""
    transport = peer.transport
    fill_the_kernel(peer, 4096)
    peer.received()
    transport._flush_wire()  # the rest of the last record goes; nothing waits
    assert transport.tls is not None and not transport.tls.size


def with_a_queue(peer: TLSPeer) -> None:
    fill_the_kernel(peer)
    peer.connection.send(b"queued\n")


def batching(peer: TLSPeer) -> None:
    peer.transport._batching = True  # it got more than one line last turn


# Each sets one recipient up before the fan-out, as it may be found in a pass.
SETUPS: dict[str, Callable[[TLSPeer], object]] = {
    "idle": lambda peer: None,
    "batching": batching,
    "already written to this turn": lambda peer: peer.connection.send(b"first\n"),
    "with a queue": with_a_queue,
    "whose kernel is full": fill_the_kernel,
    "whose kernel has a little room": lambda peer: fill_the_kernel(peer, 4096),
    "closed": lambda peer: peer.connection.abort("gone"),
}


# The lines of each pass's fan-outs: several (a recipient batches the next
# pass), then one (it stops), then one (sent at once again).
PASSES = ((LINE, b"<Broadcast from Bob: hi>\n"), (b"<Broadcast from Bob: again>\n",),
          (LINE,))


def run_fan_outs(server: SelectorServer, certs: tuple[trustme.CA, ssl.SSLContext],
                 fast: bool, batch: bool) -> list[tuple[object, ...]]:
    """Three passes of fan-outs (PASSES) to a TLS recipient of each setup,
    through send_at_once (then connection.send for what it returns) or
    connection.send alone -- in a busy pass if ``batch`` (more work follows
    in it: what the fast path is told)."""
    peers = [TLSPeer(server, certs) for _ in SETUPS]
    states = []
    for turn, lines in enumerate(PASSES):
        server.turn += 1  # a new pass
        server.write_through = True
        if turn == 0:
            for setup, peer in zip(SETUPS.values(), peers, strict=True):
                setup(peer)
        server.write_through = fast or not batch
        for line in lines:
            recipients = [peer.connection for peer in peers]
            if fast:
                recipients = server.send_at_once(line, recipients, batch)
                assert peers[0].connection not in recipients  # the fast path took it
            for connection in recipients:
                connection.send(line)
        server._settle()
        states.append([(*peer.state(), peer.transport._batching) for peer in peers])
    return [state for pass_states in zip(*states, strict=True) for state in pass_states]


@pytest.mark.parametrize("batch", [False, True], ids=["write-through", "batched"])
def test_tls_fan_out_fast_path(certs: tuple[trustme.CA, ssl.SSLContext], batch: bool) -> None:
    """SelectorTransport.fan_out_first and enqueue_each (send_at_once) leave
    every TLS recipient as connection.send would, pass after pass."""
    runs = []
    for fast in (True, False):
        with idle_server() as server:
            runs.append(run_fan_outs(server, certs, fast, batch))
    names = [f"{name}, pass {turn}" for name in SETUPS for turn in range(1, len(PASSES) + 1)]
    for name, fast_state, general_state in zip(names, *runs, strict=True):
        assert fast_state == general_state, name


def queue_mixed(peer: TLSPeer, entries: int, size: int) -> None:
    """A queue of shared lines and direct messages with handoffs."""
    output = peer.transport.output
    for i in range(entries):
        if i % 3:
            output.append(b"<Broadcast from Alice: %s>\n" % (b"x" * size))
        else:
            output.append(b"<Message from Bob: %d %s>\n" % (i, b"y" * size),
                          peer.handoffs.append)


KERNELS: dict[str, Callable[[TLSPeer], object]] = {
    "takes it all": lambda peer: None,
    "is full": fill_the_kernel,
    "has a little room": lambda peer: fill_the_kernel(peer, 4096),
    "takes part of a record": room_for_part_of_a_record,
}
QUEUED = {"a few lines": 8, "most of a record": 500, "more than a record": 2000}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("queued", QUEUED)
def test_tls_flush_fast_path(certs: tuple[trustme.CA, ssl.SSLContext], kernel: str,
                             queued: str) -> None:
    """SelectorTLSTransport.flush (the queue sealed in one record) sends the
    same plaintext, runs the same handoffs and leaves the same state as
    _flush_wire (flush's every case); and once the client has read, what
    was left goes the same way."""
    with idle_server() as server:
        fast, general = TLSPeer(server, certs), TLSPeer(server, certs)
        for peer in (fast, general):
            KERNELS[kernel](peer)
            queue_mixed(peer, 20, QUEUED[queued])
        fast.transport.flush()
        general.transport._flush_wire()
        assert fast.state() == general.state()
        for peer in (fast, general):
            for _ in range(100):  # (a few rounds: each reads all the kernel holds)
                if not (peer.transport.output.size or peer.transport.wire):
                    break
                peer.received()  # the client reads
                peer.transport._flush_wire()  # EVENT_WRITE: the rest
        assert fast.state() == general.state()
        assert fast.handoffs == [True] * 7
        assert fast.plain.endswith(b"<Broadcast from Alice: %s>\n" % (b"x" * QUEUED[queued]))


def test_a_backlog_goes_out_in_full_records(certs: tuple[trustme.CA, ssl.SSLContext]) -> None:
    """A queue of many small lines, more than a record's worth, is
    encrypted in records of the TLS maximum (the last one shorter), not a
    record per line or a short record after each full one; the client
    decrypts every line, in order, and the handoffs run."""
    with idle_server() as server:
        peer = TLSPeer(server, certs)
        queue_mixed(peer, 150, 300)
        queued = peer.transport.output.size
        assert queued > 2 * RECORD_SIZE
        peer.transport.flush()
        peer.received()
        assert bytes(peer.plain) == b"".join(
            b"<Message from Bob: %d %s>\n" % (i, b"y" * 300) if i % 3 == 0
            else b"<Broadcast from Alice: %s>\n" % (b"x" * 300) for i in range(150))
        assert peer.handoffs == [True] * 50
        records = peer.records()
        application_data = [length for kind, length in records if kind == 23]
        assert len(application_data) == math.ceil(queued / RECORD_SIZE), records
        assert len(set(application_data[:-1])) == 1  # all full but the last
