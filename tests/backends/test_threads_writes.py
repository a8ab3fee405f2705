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

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from reactor.app import build_chat
from reactor.backends.threads import ThreadsServer
from reactor.backends.threads_transport import ThreadTransport
from reactor.connection import Connection
from tests.support import (
    DEFAULT_TIMEOUT,
    TEST_CONFIG,
    check_send_now_whole_or_none,
    count_room_checks,
    loopback_tcp,
)

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
    ``sndbuf``; the server's socket blocks, as the backend's reader and
    writer threads want it."""
    ours, theirs = loopback_tcp(sndbuf)
    theirs.settimeout(DEFAULT_TIMEOUT)
    transport = ThreadTransport(ours, "127.0.0.1", server)
    return Peer(server.chat.connection_made(transport), theirs)


@pytest.mark.parametrize("sndbuf", [16 * 1024, 256 * 1024])
@pytest.mark.parametrize("sizes", [[20], [7000], [20, 3000, 200, 9000]],
                         ids=["small", "large", "mixed"])
def test_send_now_without_asking_for_room_sends_whole_messages(
        server: ThreadsServer, sndbuf: int, sizes: list[int]) -> None:
    """As on select (check_send_now_whole_or_none), one message a turn of
    the chat lock."""
    def connect() -> tuple[ThreadTransport, Callable[[bytes], int], socket.socket]:
        peer = connect_tcp(server, sndbuf)

        def send_now(message: bytes) -> int:
            with server.lock:
                return peer.transport.send_now(message)

        return peer.transport, send_now, peer.sock

    check_send_now_whole_or_none(connect, sndbuf, sizes)


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
