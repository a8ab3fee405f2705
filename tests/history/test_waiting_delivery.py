"""Waiting messages are never lost: one is let go only once its recipient's connection took it.

A connection that is lost while its login backlog is being written keeps
nothing it did not take: the rest waits for the next login, and the sender
hears of exactly the messages that were delivered.
"""

from __future__ import annotations

import socket
from pathlib import Path

from protocol import UserOffline, WaitingDelivered, WaitingMessage
from reactor.config import HistoryConfig
from reactor.history.memory import MemoryHistory
from tests.faults import reset
from tests.history.support import (
    PASSWORD,
    accounts_config,
    event,
    history_server,
    log_in,
    register,
)
from tests.support import DEFAULT_TIMEOUT, LineClient, running_server

# More than the kernel's buffers hold for a client that reads nothing (a
# send buffer grows to 4 MiB at most on Linux by default), so that part of
# the backlog is still queued in the server when the client goes.
MESSAGES = 120
TEXT_SIZE = 60_000


def log_in_without_reading(port: int, name: str) -> socket.socket:
    """Log in as ``name``, then read nothing more (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(DEFAULT_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"{name}\n".encode())
    asked = b""
    while not asked.endswith(b"\n"):
        asked += sock.recv(1)
    assert asked == f"<Password required for {name}.>\n".encode()
    sock.sendall(f'"{PASSWORD}"\n'.encode())
    return sock


def test_a_connection_lost_during_its_backlog_gets_the_rest_at_its_next_login(
        backend: str, db: str) -> None:
    texts = [f"{n:03d}" + "x" * TEXT_SIZE for n in range(MESSAGES)]
    overrides: dict[str, object] = {"max_line": 2 * TEXT_SIZE}
    with history_server(backend, db, overrides, waiting_max=MESSAGES) as server:
        register(server.port, "Bob")
        with log_in(server.port, "Alice") as alice:
            for text in texts:
                alice.send(f"chat Bob {text}")
                alice.expect("<Message to Bob stored until they log in.>")
            # Bob's first connection takes part of its backlog and is gone
            # (reset) while the rest is queued for it.  Its backlog was
            # written in the turn that told Alice he is online, so it is
            # queued before the reset is seen.
            first = log_in_without_reading(server.port, "Bob")
            try:
                alice.expect("<User Bob is online.>")
            finally:
                reset(first)
            delivered = 0
            while (got := event(alice)) != UserOffline("Bob"):
                assert isinstance(got, WaitingDelivered), got
                delivered += 1
            assert delivered < MESSAGES
            with log_in(server.port, "Bob", PASSWORD) as bob:
                again = [_waiting_text(bob) for _ in range(MESSAGES - delivered)]
                bob.send("users")  # nothing else waited: the next line is the answer
                bob.expect("<Online users: Alice, Bob>")
            # None lost, none twice: exactly those not delivered, in order.
            assert again == texts[delivered:]
            alice.expect("<User Bob is online.>")
            assert all(isinstance(event(alice), WaitingDelivered) for _ in again)


def _waiting_text(client: LineClient) -> str:
    got = event(client)
    assert isinstance(got, WaitingMessage), got
    return got.text


class AcknowledgementsSeen(MemoryHistory):
    """Memory history that notes each call letting waiting messages go."""

    def __init__(self, config: HistoryConfig) -> None:
        super().__init__(config)
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def acknowledge(self, to: str, *message_ids: str) -> None:
        self.calls.append((to, message_ids))
        super().acknowledge(to, *message_ids)


def test_a_login_lets_its_whole_backlog_go_in_one_call_to_the_store(
        backend: str, tmp_path: Path) -> None:
    store = AcknowledgementsSeen(HistoryConfig())
    with running_server(backend, accounts=accounts_config(str(tmp_path / "accounts.db")),
                        history=HistoryConfig(), options={"history": store}) as server:
        register(server.port, "Bob")
        with log_in(server.port, "Alice") as alice:
            for n in range(3):
                alice.send(f"chat Bob m{n}")
                alice.expect("<Message to Bob stored until they log in.>")
            held = [message.id for message in store.waiting("Bob")]
            with log_in(server.port, "Bob", PASSWORD) as bob:
                assert [_waiting_text(bob) for _ in held] == ["m0", "m1", "m2"]
                alice.expect("<User Bob is online.>")
                # Alice hears of each delivery after the store was told.
                assert all(isinstance(event(alice), WaitingDelivered) for _ in held)
    assert store.calls == [("Bob", tuple(held))]
    assert store.waiting("Bob") == []
