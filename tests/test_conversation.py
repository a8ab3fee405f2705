"""The original's conversation, byte for byte, on both backends."""

from __future__ import annotations

from tests.support import Clients


def test_the_original_conversation(clients: Clients) -> None:
    alice = clients.login("Alice")
    bob = clients.connect()
    bob.send("Bob")
    bob.expect("<User Bob is online.>")
    alice.expect("<User Bob is online.>")

    alice.send('chat Bob "Hello Bob!"')
    assert alice.read_line_bytes() == b"<To Bob> Hello Bob!\n"
    assert bob.read_line_bytes() == b'<Message from Alice: "Hello Bob!">\n'

    bob.send("bye")
    assert bob.read_line_bytes() == b"<User Bob is offline.>\n"
    assert bob.expect_closed() == b""
    assert alice.read_line_bytes() == b"<User Bob is offline.>\n"
