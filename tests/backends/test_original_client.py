"""The original C client works against our server, on every backend.

``client.c`` of the original assignment writes the username with no newline
as its first write, then waits for its user; each command goes out with a
``\\n``; ``bye`` goes out with no newline, followed at once by ``close()``.
This test writes exactly that way.  ``nc`` and our own client (one line each,
with newlines) are covered by every other test.
"""

from __future__ import annotations

from tests.support import Clients


def test_the_original_client_logs_in_chats_and_says_bye(clients: Clients) -> None:
    bob = clients.login("Bob")
    original = clients.connect()
    original.send_raw(b"Alice")  # no newline: the original's first write
    # Nothing more comes: after a short pause the server takes it as the name.
    original.expect("<User Alice is online.>")
    bob.expect("<User Alice is online.>")
    original.send_raw(b'chat Bob "Hello Bob!"\n')
    original.expect("<To Bob> Hello Bob!")
    bob.expect('<Message from Alice: "Hello Bob!">')
    original.send_raw(b"bye")  # no newline, then close() at once
    original.sock.close()
    bob.expect("<User Alice is offline.>")
    bob.send("users")
    bob.expect("<Online users: Bob>")


def test_a_name_split_across_writes_is_still_one_name(clients: Clients) -> None:
    """The pause starts again with every byte: a name that arrives in pieces
    (a slow network, a client typing it) is not cut short."""
    original = clients.connect()
    for piece in (b"Al", b"ic", b"e"):
        original.send_raw(piece)
    original.expect("<User Alice is online.>")
    original.send("users")
    original.expect("<Online users: Alice>")


def test_a_bye_with_no_newline_after_a_name_with_one_is_heard(clients: Clients) -> None:
    bob = clients.login("Bob")
    alice = clients.login("Alice")
    bob.expect("<User Alice is online.>")
    alice.send_raw(b"bye")
    alice.sock.shutdown(1)  # SHUT_WR: the end of input ends the line
    assert alice.expect_closed() == b"<User Alice is offline.>\n"
    bob.expect("<User Alice is offline.>")
