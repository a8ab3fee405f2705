"""The threads backend's direct messages sent at once (ThreadTransport.send_now).

send_now hands a direct message to the recipient's kernel from the sender's
reader thread, under the chat lock, asking the kernel for room only once what
it sent since the socket last polled writable may have used up what the
kernel then surely had (reactor.sockets.room_after_writable), as the select
backend does.  Checked over loopback TCP (the kernel rule it counts on is
TCP's) against a server built but not run: the test drives the writes as a
reader thread would.  That the chat answers such a message as through the
general path: test_selector_writes.py's hand-over test, on both backends.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from reactor.app import build_chat
from reactor.backends.threads import ThreadsServer, ThreadTransport
from reactor.connection import Connection
from tests.support import TEST_CONFIG

LINE = b"<Broadcast from Alice: %s>\n" % (b"x" * 8000)  # more than a little room
MESSAGE = b"<Message from Alice: hi>\n"


@pytest.fixture
def server() -> Iterator[ThreadsServer]:
    """A threads server built and attached, but not run; closed on exit."""
    server = ThreadsServer(TEST_CONFIG, build_chat(TEST_CONFIG))
    server.chat.attach(server.call_later, server.call_soon_threadsafe, server.send_at_once)
    try:
        yield server
    finally:
        for connection in list(server.chat.connections):
            connection.transport.close_socket()  # type: ignore[attr-defined]
        for listener in server.listeners:
            listener.sock.close()
        server._wakeup_reader.close()
        server._wakeup_writer.close()
        server.timers.stop()


@dataclass
class Peer:
    """One client: the server's connection to it and the client's socket."""

    connection: Connection
    sock: socket.socket

    @property
    def transport(self) -> ThreadTransport:
        return self.connection.transport  # type: ignore[return-value]

    def read(self, size: int) -> bytes:
        """``size`` bytes, waiting for them."""
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the server closed the connection"
            data += chunk
        return data


def connect_tcp(server: ThreadsServer, sndbuf: int) -> Peer:
    """A client over loopback TCP whose server-side send buffer is
    ``sndbuf`` (doubled by Linux); the server's socket blocks, as the
    backend's reader and writer threads want it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # fills soon
    theirs.settimeout(10)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = ThreadTransport(ours, "127.0.0.1", server)
    return Peer(server.chat.connection_made(transport), theirs)


def count_room_checks(transport: ThreadTransport) -> list[bool]:
    """The answers of the transport's writability polls, from now on."""
    checks: list[bool] = []
    has_room = transport._has_room

    def counted() -> bool:
        checks.append(has_room())
        return checks[-1]

    transport._has_room = counted  # type: ignore[method-assign]
    return checks


def send_now_until_refused(server: ThreadsServer, peer: Peer, sizes: list[int]) -> bytes:
    """send_now of one direct message per turn of the chat lock, as deliver
    offers it, to a peer that does not read, until one is refused; what the
    kernel took."""
    taken = bytearray()
    for number, size in enumerate(itertools.islice(itertools.cycle(sizes), 100_000)):
        message = b"<Message from Alice: %d %s>\n" % (number, b"m" * size)
        with server.lock:
            sent = peer.transport.send_now(message)
        assert sent in (0, len(message)), f"message {number} was half sent ({sent} bytes)"
        if not sent:
            return bytes(taken)
        taken += message
    raise AssertionError("the peer's kernel took everything")


@pytest.mark.parametrize("sndbuf", [16 * 1024, 256 * 1024])
@pytest.mark.parametrize("sizes", [[20], [7000], [20, 3000, 200, 9000]],
                         ids=["small", "large", "mixed"])
def test_send_now_without_asking_for_room_sends_whole_messages(
        server: ThreadsServer, sndbuf: int, sizes: list[int]) -> None:
    """To a peer who stops reading, send_now hands the kernel each direct
    message whole or not at all, as when it asks for room every time, and
    the peer reads exactly what it took -- with fewer polls."""
    results = []
    for asks_every_time in (False, True):
        peer = connect_tcp(server, sndbuf)
        if asks_every_time:
            peer.transport._room_after_writable = 0  # no room known: a poll each
        checks = count_room_checks(peer.transport)
        taken = send_now_until_refused(server, peer, sizes)
        assert checks[-1] is False  # refused because the kernel had no room
        assert peer.read(len(taken)) == taken  # whole lines, in order
        peer.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.sock.recv(1)  # and nothing else
        results.append((taken.count(b"\n"), len(checks)))
    (sent_fast, polls_fast), (sent_general, polls_general) = results
    assert polls_general == sent_general + 1 and polls_fast <= polls_general
    if sizes == [20] and sndbuf > 64 * 1024:
        assert polls_fast < sent_fast / 10


@pytest.mark.parametrize("other", ["a reply sent at once", "a fan-out sent at the turn's end",
                                   "a direct message through write"])
def test_send_now_asks_for_room_after_other_output(server: ThreadsServer, other: str) -> None:
    """Other output to the connection since send_now's last message ends
    the room it knew of: it asks the kernel again."""
    peer = connect_tcp(server, 256 * 1024)
    checks = count_room_checks(peer.transport)
    for _ in range(2):  # the second without asking
        with server.lock:
            assert peer.transport.send_now(MESSAGE) == len(MESSAGE)
    assert len(checks) == 1
    with server.lock:
        if other == "a reply sent at once":
            peer.connection.send(b"<To Bob> hi\n")
        elif other == "a fan-out sent at the turn's end":
            assert not server.send_at_once(LINE, [peer.connection])
        else:
            peer.transport.write(MESSAGE, lambda ok: None)
    checks_before = len(checks)
    with server.lock:
        assert peer.transport.send_now(MESSAGE) == len(MESSAGE)
    assert len(checks) == checks_before + 1


def test_send_now_waits_behind_output_queued_for_the_pass(server: ThreadsServer) -> None:
    """A line queued to the connection for the end of the pass goes first:
    send_now leaves the message to write(), which queues it behind."""
    peer = connect_tcp(server, 256 * 1024)
    with server.lock:
        assert not server.send_at_once(LINE, [peer.connection])
        assert peer.transport.send_now(MESSAGE) == 0
        peer.transport.write(MESSAGE, lambda ok: None)
    assert peer.read(len(LINE) + len(MESSAGE)) == LINE + MESSAGE
