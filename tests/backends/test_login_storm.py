"""A login storm -- every client of a restarted server reconnecting at once --
as the server process lives it: a shutdown in the middle of it, and the
notices queued for clients that do not read."""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from protocol import MAX_USERNAME_LENGTH
from reactor.config import FloodLimits, ServerConfig
from tests.faults import raise_own_open_file_limit, server_process
from tests.support import LineClient, running_server, wait_until

# Logins nobody reads: a few thousand, enough for the notices (N^2/2 of
# them) to back up behind the clients' small windows.
STORM = 2000
# A receive window this small fills with a few hundred notices, so the rest
# back up in the server (its socket buffer, then its queue), as they do for
# a client that stopped reading.
SMALL_WINDOW = 4096
# The clients that start reading when the server is told to stop.
LATE_READERS = 50
SHUTTING_DOWN = b"<Server is shutting down.>\n"
# The server promises to end about close_linger seconds after telling
# everyone, under flood too; this bound is ten times that (the machine may be
# shared), and far below draining a storm's backlog login by login.
SHUTDOWN_BOUND = 10 * ServerConfig().close_linger


@contextlib.contextmanager
def storm(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` clients with small windows connect and send their names,
    and do not read; closed on exit."""
    raise_own_open_file_limit(count + 256)
    socks: list[socket.socket] = []
    try:
        for index in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_WINDOW)  # before connect
            sock.connect(("127.0.0.1", port))
            sock.sendall(storm_name(index).encode() + b"\n")
        yield socks
    finally:
        for sock in socks:
            sock.close()


def storm_name(index: int) -> str:
    """The longest names there are: the most bytes of notices per login."""
    return f"storm{index:0{MAX_USERNAME_LENGTH - 5}d}"


def read_to_end(socks: list[socket.socket], deadline: float) -> list[bytes]:
    """Everything each socket receives until the server ends it."""
    received = [bytearray() for _ in socks]
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_READ, index)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            assert remaining > 0, "some clients were not closed in time"
            for key, _ in selector.select(remaining):
                try:
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                except ConnectionResetError:
                    data = b""
                if data:
                    received[key.data] += data
                else:
                    selector.unregister(key.fileobj)
    return [bytes(data) for data in received]


def lines(stream: bytes) -> list[bytes]:
    return stream.splitlines(keepends=True)


@pytest.mark.slow  # a server process and thousands of logins
def test_sigterm_in_a_login_storm_nobody_reads_ends_the_server_promptly(backend: str) -> None:
    """The server is stopped while thousands of logins are announced to
    clients that do not read.  What is queued for them is dropped, not
    drained: the clients that read are told at once, the server exits 0
    within a few lingers, and nothing is ever sent after the notice."""
    with server_process(backend, "--flood-control", "off",
                        "--max-clients", str(STORM + 16)) as server, \
            LineClient(server.port) as watcher:
        watcher.send("Watcher")
        watcher.expect("<User Watcher is online.>")
        with storm(server.port, STORM) as socks:
            # The storm is under way: a login has been announced (not
            # necessarily the first to connect: on threads each login has a
            # thread of its own).
            watcher.read_until(lambda line: line.startswith("<User storm"))
            server.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + SHUTDOWN_BOUND
            late = read_to_end(socks[:LATE_READERS], deadline)
            assert server.process.wait(max(0.0, deadline - time.monotonic())) == 0
            rest = read_to_end(socks[LATE_READERS:], time.monotonic() + SHUTDOWN_BOUND)
        watched = watcher.expect_closed()
    # The clients that read were told, and told last, whatever was queued
    # for them: the notices waiting behind their windows were dropped.
    for stream in [watched, *late]:
        assert stream.endswith(SHUTTING_DOWN), stream[-200:]
        assert all(line.startswith(b"<User storm") for line in lines(stream)[:-1])
    # The others were told if their windows had room; never anything after it.
    for stream in rest:
        assert SHUTTING_DOWN not in stream or stream.endswith(SHUTTING_DOWN), stream[-200:]
    assert not any("Traceback" in line for line in server.final_log())


def test_notices_queued_in_a_storm_count_against_the_hard_limit(backend: str) -> None:
    """A client that stopped reading before a storm is cut off as a slow
    consumer once the notices queued for it pass the hard limit: a storm
    costs the server no more memory per client than a flood of broadcasts."""
    limit = 64 * 1024
    raise_own_open_file_limit(2 * STORM + 256)  # both ends in this process
    with running_server(backend, output_limit=limit, output_hard_limit=limit,
                        slow_consumer_grace=3600, flood=FloodLimits(enabled=False),
                        max_clients=STORM + 16) as server, socket.socket() as sleeper:
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_WINDOW)
        sleeper.connect(("127.0.0.1", server.port))
        sleeper.sendall(b"Sleeper\n")  # ... and never reads again
        wait_until(lambda: server.chat.whiteboard.lookup("Sleeper") is not None,
                   message="Sleeper online")
        found = server.chat.whiteboard.lookup("Sleeper")
        assert found is not None
        connection = found[1]
        # The kernel would hold the storm's first hundred kilobytes for it:
        # keep that small, so that what grows is the server's own queue.
        connection.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_WINDOW)
        with storm(server.port, STORM):
            wait_until(lambda: connection.close_reason is not None, timeout=60,
                       message="Sleeper cut off")
        assert connection.close_reason == f"slow consumer: more than {limit} bytes of output queued"
