"""A failure stays in its connection, on every backend.

Each test plants a bug -- in the chat logic, in one connection's transport,
in a timer callback -- the way any future bug would arrive, and checks what
the other clients see: the failing connection is gone, its user announced
offline and its name free, and everyone else keeps chatting.  A bug in the
backend's own loop shuts the server down cleanly instead of hanging it.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import replace

import pytest

from reactor.chat import ChatService
from reactor.connection import Connection
from reactor.outbuf import OutputBuffer
from reactor.output_budget import OutputBudget
from tests.support import TEST_CONFIG, Clients, LineClient, running_server, wait_until


class _BrokenSocket:
    """A socket as a bug in the layer under the transport would leave it:
    sending raises; everything else is the real socket's."""

    def __init__(self, sock: object) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)

    def send(self, *args: object) -> int:
        raise PlantedBug("planted in Mallory's socket")

    sendmsg = write = writelines = send  # (write: asyncio's transport, the layer under ours)


class PlantedBug(Exception):
    pass


def _online(server: object, name: str) -> Connection:
    found = server.chat.whiteboard.lookup(name)  # type: ignore[attr-defined]
    assert found is not None, f"{name} is not online"
    connection: Connection = found[1]
    return connection


def _the_others_carry_on(alice: LineClient, bob: LineClient, clients: Clients) -> None:
    alice.send('chat Bob "still here?"')
    alice.expect("<To Bob> still here?")
    bob.expect('<Message from Alice: "still here?">')
    again = clients.login("Mallory")  # the name is free again
    alice.expect("<User Mallory is online.>")
    again.send("users")
    again.expect("<Online users: Alice, Bob, Mallory>")


def test_a_command_that_raises_ends_only_its_own_connection(
    backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = ChatService._command_line

    def buggy(self: ChatService, connection: Connection, raw: bytes) -> None:
        if raw == b"trigger the bug":
            raise PlantedBug("planted in _command_line")
        original(self, connection, raw)

    monkeypatch.setattr(ChatService, "_command_line", buggy)
    with running_server(backend) as server:
        clients = Clients(server.port)
        try:
            alice, bob = clients.login("Alice"), clients.login("Bob")
            mallory = clients.login("Mallory")
            alice.expect("<User Bob is online.>", "<User Mallory is online.>")
            bob.expect("<User Mallory is online.>")
            mallory.send("trigger the bug")
            mallory.expect_closed()
            alice.expect("<User Mallory is offline.>")
            bob.expect("<User Mallory is offline.>")
            _the_others_carry_on(alice, bob, clients)
        finally:
            clients.close_all()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "Mallory" in errors[0].getMessage()
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is PlantedBug


def test_a_failing_send_to_one_recipient_ends_that_recipient_not_the_sender(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running_server(backend) as server:
        clients = Clients(server.port)
        try:
            alice, bob = clients.login("Alice"), clients.login("Bob")
            mallory = clients.login("Mallory")
            alice.expect("<User Bob is online.>", "<User Mallory is online.>")
            bob.expect("<User Mallory is online.>")
            transport = _online(server, "Mallory").transport

            def broken_write(data: bytes, on_handoff: object = None) -> None:
                raise PlantedBug("planted in Mallory's transport")

            transport.write = broken_write  # type: ignore[method-assign, assignment]
            if server.send_at_once is not None:
                # The backend's fan-out fast path sends on the socket itself,
                # or on asyncio's transport at the end of the loop's iteration.
                transport.sock = _BrokenSocket(transport.sock)  # type: ignore[attr-defined]
                if hasattr(transport, "_transport"):
                    transport._transport = _BrokenSocket(transport._transport)
            alice.send('broadcast "hello all"')
            alice.expect("<To everyone> hello all")
            bob.expect('<Broadcast from Alice: "hello all">')
            bob.expect("<User Mallory is offline.>")
            alice.expect("<User Mallory is offline.>")
            mallory.expect_closed()
            _the_others_carry_on(alice, bob, clients)
        finally:
            clients.close_all()
    assert any(r.exc_info and r.exc_info[0] is PlantedBug for r in caplog.records)


def test_a_failure_while_sending_one_clients_queue_ends_only_that_client(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug met while moving Bob's queued output to the kernel is Bob's
    connection's failure (contract point 8: "its write"): Bob is cut and
    announced offline, the server carries on -- whether the queue is sent
    by a writer thread (threads) or by a bare callback at the end of the
    loop's iteration (asyncio)."""
    with running_server(backend, flood=replace(TEST_CONFIG.flood, enabled=False),
                        output_limit=64 << 20, output_hard_limit=64 << 20) as server:
        alice = LineClient(server.port)
        alice.send("Alice")
        alice.expect("<User Alice is online.>")
        bob = LineClient(server.port)
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        bob.send("Bob")
        bob.expect("<User Bob is online.>")
        alice.expect("<User Bob is online.>")
        bobs_queue = _online(server, "Bob").transport.output
        original = OutputBuffer.buffers

        # buffers(): what every backend asks of a queue for each send it tries
        # (consume() is only reached once the kernel takes something).
        def buggy(self: OutputBuffer) -> list:  # type: ignore[type-arg]
            if self is bobs_queue:
                raise PlantedBug("planted in Bob's output")
            return original(self)

        monkeypatch.setattr(OutputBuffer, "buffers", buggy)
        big = "b" * 3000
        offline = False
        for _ in range(80):  # up to 12 MB: more than the kernel buffers hold
            alice.send_raw(f'broadcast "{big}"\n'.encode() * 50)
            echoes = 0
            while echoes < 50:
                line = alice.read_line()
                echoes += line.startswith("<To everyone>")
                offline |= line == "<User Bob is offline.>"
            if offline:
                break
        assert offline, "Bob was never cut"
        alice.send("users")
        alice.read_until(lambda line: line == "<Online users: Alice>")
        assert server.exit_status == 0
        bob.close()
        alice.close()


@pytest.mark.slow
def test_a_timer_callback_that_raises_ends_only_its_connection(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def buggy(self: ChatService, connection: Connection) -> None:
        raise PlantedBug("planted in the login deadline")

    monkeypatch.setattr(ChatService, "login_timed_out", buggy)
    with running_server(backend, login_timeout=0.3) as server:
        clients = Clients(server.port)
        try:
            alice, bob = clients.login("Alice"), clients.login("Bob")
            alice.expect("<User Bob is online.>")
            silent = clients.connect()  # never says its name
            assert silent.expect_closed() == b""  # aborted by containment, not left hanging
            wait_until(lambda: server.chat.connection_count == 2, message="the slot to free")
            alice.send('chat Bob "fine"')
            alice.expect("<To Bob> fine")
            bob.expect('<Message from Alice: "fine">')
        finally:
            clients.close_all()


def test_a_failure_in_the_loop_itself_shuts_the_server_down_with_the_notice(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not attributable to a connection: admitting a new one raises."""
    with running_server(backend) as server:
        clients = Clients(server.port)
        try:
            alice = clients.login("Alice")

            def buggy(self: ChatService, transport: object) -> None:
                raise PlantedBug("planted in admission")

            monkeypatch.setattr(ChatService, "connection_made", buggy)
            try:
                clients.connect()
            except OSError:
                pass  # refused or reset: either is fine, the point is the others
            alice.expect("<Server is shutting down.>")
            alice.expect_closed()
            wait_until(lambda: server.exit_status == 1, message="exit status 1")
        finally:
            clients.close_all()


@pytest.mark.slow
def test_a_failing_server_timer_shuts_the_server_down_with_the_notice(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timer that belongs to no connection (the chat's housekeeping)
    raises: that is the loop's own failure -- shutdown notice, exit status
    1.  Were it to kill a timer thread instead, the server would run on
    with no timers at all (no login timeouts, close lingers, flood-control
    retries or output limits), and exit 0."""
    with running_server(backend) as server:
        client = LineClient(server.port)
        client.send("Alice")
        client.expect("<User Alice is online.>")

        def buggy(self: OutputBudget) -> None:
            raise PlantedBug("planted in housekeeping")

        monkeypatch.setattr(OutputBudget, "check", buggy)
        client.expect("<Server is shutting down.>", timeout=5)
        client.expect_closed()
        wait_until(lambda: server.exit_status == 1, message="exit status 1")


def test_serve_forever_returns_1_after_a_loop_failure(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reactor import ServerConfig, make_server

    server = make_server(ServerConfig(host="127.0.0.1", port=0, keepalive_idle=0), backend)
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(server.serve_forever()), daemon=True)

    def buggy(self: ChatService, transport: object) -> None:
        raise PlantedBug("planted in admission")

    monkeypatch.setattr(ChatService, "connection_made", buggy)
    thread.start()
    try:
        wait_until(lambda: server.chat.scheduler.attached, message="the loop to start")
        try:
            LineClient(server.port).close()
        except OSError:
            pass
        thread.join(timeout=10)
        assert not thread.is_alive(), "the server hung after its loop failed"
        assert status == [1]
    finally:
        server.stop()
        thread.join(timeout=10)
