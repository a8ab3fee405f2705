"""The chat's commands as a client reads them over a real socket, on every backend.

Each chat rule is tested once, in memory, in ``tests/core/test_chat_rules.py``.
What stays here is what only a socket shows: a dropped connection, the server
closing after bye, a line longer than the read buffer, the accept path when the
server is full, a stop, and a burst that one read hands over whole.
"""

from __future__ import annotations

import pytest

from reactor.backends.base import Server
from tests.support import Clients, running_server, send_a_burst_and_check_it

INVALID = '<Invalid input: {}. Type "help" for commands.>'


def test_a_dropped_connection_counts_as_bye(clients: Clients) -> None:
    alice, bob = clients.login("Alice"), clients.login("Bob")
    alice.expect("<User Bob is online.>")
    bob.close()
    alice.expect("<User Bob is offline.>")
    again = clients.login("Bob")
    alice.expect("<User Bob is online.>")
    again.send("users")
    again.expect("<Online users: Alice, Bob>")


def test_input_after_bye_is_ignored(clients: Clients) -> None:
    alice, bob = clients.login("Alice"), clients.login("Bob")
    alice.expect("<User Bob is online.>")
    bob.send_raw(b'bye\nchat Alice "ghost"\n')
    bob.expect("<User Bob is offline.>")
    assert bob.expect_closed() == b""
    alice.expect("<User Bob is offline.>")
    alice.send("users")
    alice.expect("<Online users: Alice>")


def test_an_overlong_line_is_refused_without_harm(backend: str) -> None:
    with running_server(backend, max_line=64) as server:
        pool = Clients(server.port)
        try:
            alice = pool.login("Alice")
            alice.send_raw(b"chat Alice " + b"x" * 10_000 + b"\nusers\n")
            alice.expect(INVALID.format("line longer than 64 bytes, discarded"))
            alice.expect("<Online users: Alice>")
            alice.send("chat Alice " + "y" * 53)  # exactly 64 bytes: fine
            alice.expect("<To Alice> " + "y" * 53)
        finally:
            pool.close_all()


def test_past_max_clients_the_server_is_full(backend: str) -> None:
    with running_server(backend, max_clients=2) as server:
        pool = Clients(server.port)
        try:
            alice, _bob = pool.login("Alice"), pool.login("Bob")
            extra = pool.connect()
            assert extra.expect_closed() == b"<Server is full.>\n"
            alice.send("users")
            alice.expect("<User Bob is online.>", "<Online users: Alice, Bob>")
        finally:
            pool.close_all()


def test_stop_tells_everyone_and_closes(server: Server, clients: Clients) -> None:
    alice = clients.login("Alice")
    waiting = clients.connect()
    server.stop()
    assert alice.expect_closed() == b"<Server is shutting down.>\n"
    assert waiting.expect_closed() == b"<Server is shutting down.>\n"


@pytest.mark.parametrize("every_nth_a_message", [0, 3], ids=["broadcasts", "mixed"])
def test_a_burst_of_broadcasts_and_messages_in_one_write_arrives_once_each_in_order(
    clients: Clients, every_nth_a_message: int
) -> None:
    """Lines that arrive together are answered together -- the select backend
    then queues the whole burst and sends once per recipient -- and every
    reader still gets each broadcast and each of its messages once, in the
    order they were sent, and the sender every echo in command order."""
    sender = clients.login("Sender")
    readers = {f"Reader{i}": clients.login(f"Reader{i}") for i in range(5)}
    send_a_burst_and_check_it(sender, readers, every_nth_a_message)
