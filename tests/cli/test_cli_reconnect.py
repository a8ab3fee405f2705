"""The interactive client when the connection drops: say so, keep the prompt, reconnect.

A real server process is killed outright and started again on the same port;
the client must keep the half-typed draft, log in again under the same name
and say when it is back.  A stand-in server covers the ghost case (our old
connection still holds the name) and an orderly ``<Server is shutting down.>``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from reactor import DEFAULT_BACKEND
from tests.cli_support import TIMEOUT, terminal
from tests.faults import server_process
from tests.support import LineClient

# Slow: servers killed and restarted under the client.
pytestmark = pytest.mark.slow

CTRL_C = "\x03"


def test_a_killed_and_restarted_server_is_reconnected_to_with_the_draft_kept() -> None:
    with server_process(DEFAULT_BACKEND) as first:
        port = first.port
        with terminal(port) as alice:
            alice.type("/msg Bob after the restart")
            alice.wait_for_input_line("Alice> /msg Bob after the restart")
            first.process.kill()
            first.process.wait(TIMEOUT)
            alice.wait_for_text("-- disconnected from the server: the server closed the")
            alice.wait_for(lambda: alice.cursor_line == "Alice> /msg Bob after the restart"
                           and "disconnected from" in alice.lines[-1],
                           "the draft kept and the state in the bottom line")

            with server_process(DEFAULT_BACKEND, "--port", str(port)) as second:
                assert second.port == port
                alice.wait_for_text("-- reconnected as Alice", timeout=15)
                alice.wait_for(lambda: alice.cursor_line == "Alice> /msg Bob after the restart"
                               and "online at" in alice.lines[-1],
                               "the draft still there, online again")
                bob = LineClient(port)
                try:
                    bob.send("Bob")
                    bob.expect("<User Bob is online.>")
                    alice.wait_for_text("-- Bob is online")
                    alice.type("\r")
                    alice.wait_for_text("✓ you → Bob: after the restart")
                    assert bob.read_line() == '<Message from Alice: "after the restart">'
                finally:
                    bob.sock.close()
                alice.enter("/quit")
                assert alice.wait_exit() == 0


def test_while_disconnected_messages_are_refused_and_ctrl_c_exits_cleanly() -> None:
    with server_process(DEFAULT_BACKEND) as server, terminal(server.port) as alice:
        server.process.kill()
        server.process.wait(TIMEOUT)
        alice.wait_for_text("-- disconnected from the server")
        alice.enter("/msg Bob into the void")
        alice.wait_for_text("✗ not sent: not connected to the server")
        alice.type(CTRL_C)
        assert alice.wait_exit() == 0


def test_each_reconnect_attempt_is_one_row() -> None:
    with server_process(DEFAULT_BACKEND) as server, \
            terminal(server.port, "Alice", "--timestamps", "HH:MM") as alice:
        server.process.kill()
        server.process.wait(TIMEOUT)
        alice.wait_for(lambda: alice.count("-- reconnecting failed: ") >= 2,
                       "two failed attempts", timeout=15)
        attempts = [line for line in alice.lines if "-- reconnecting failed: " in line]
        for attempt in attempts:
            # The reason and the next try, on the row of a timestamped line.
            assert attempt.startswith("[") and " -- reconnecting failed: connection " \
                "refused; next try in " in attempt and attempt.endswith(" s"), alice.dump()
        alice.type(CTRL_C)
        assert alice.wait_exit() == 0


def _close_as_the_server_does(conn: socket.socket) -> None:
    """Our end first (FIN), then what the client still sends read and dropped
    until its end: a close with unread input would be a reset instead, which
    the client rightly reports as a connection error."""
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(4096):
        pass
    conn.close()


class _FlakyServer:
    """Connection 1: log in, say the server shuts down, close.  Connection 2: the
    name is still taken (a ghost).  Connection 3 on: log in and stay."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._open.append(conn)
            self.connections += 1
            with contextlib.suppress(OSError):
                conn.settimeout(TIMEOUT)
                name = conn.makefile("rb").readline().decode().strip()
                if self.connections == 1:
                    conn.sendall(f"<User {name} is online.>\n<Server is shutting down.>\n"
                                 .encode())
                    _close_as_the_server_does(conn)
                elif self.connections == 2:
                    conn.sendall(f"<Username {name} is already taken.>\n".encode())
                    _close_as_the_server_does(conn)
                else:
                    conn.sendall(f"<User {name} is online.>\n".encode())
                    return  # and stay connected until close()

    def close(self) -> None:
        self.listener.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(TIMEOUT)


@contextlib.contextmanager
def _flaky() -> Iterator[_FlakyServer]:
    server = _FlakyServer()
    try:
        yield server
    finally:
        server.close()


def test_a_shutdown_and_a_ghost_holding_the_name_are_retried_and_explained() -> None:
    with _flaky() as server, terminal(server.port, logged_in=False) as alice:
        alice.wait_for_text("-- the server is shutting down")
        alice.wait_for_text("-- disconnected from the server: the server closed the")
        alice.wait_for_text("-- reconnecting failed: the name Alice is still taken")
        alice.wait_for_text("-- reconnected as Alice", timeout=15)
        assert server.connections == 3
