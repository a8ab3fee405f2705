"""Every command and every error of the chat, as a client sees them, on both backends."""

from __future__ import annotations

import pytest

from protocol import HelpText, format_event
from reactor.backends.base import Server
from tests.support import Clients, running_server, send_a_burst_and_check_it

INVALID = '<Invalid input: {}. Type "help" for commands.>'


def test_everyone_online_hears_of_a_login_including_the_newcomer(clients: Clients) -> None:
    alice = clients.login("Alice")
    bob = clients.login("Bob")
    carol = clients.login("Carol")
    alice.expect("<User Bob is online.>", "<User Carol is online.>")
    bob.expect("<User Carol is online.>")
    for person in (alice, bob, carol):
        person.send("users")
        person.expect("<Online users: Alice, Bob, Carol>")


def test_direct_message_reaches_only_its_recipient(clients: Clients) -> None:
    alice, bob = clients.login("Alice"), clients.login("Bob")
    carol = clients.login("Carol")
    alice.send('chat Carol "psst"')
    alice.read_until(lambda line: line.startswith("<To "))
    carol.read_until(lambda line: line == '<Message from Alice: "psst">')
    bob.send("users")  # a round trip: had Bob been sent the message, it would come first
    seen_by_bob = bob.read_until(lambda line: line.startswith("<Online users"))
    assert not any("psst" in line for line in seen_by_bob)


def test_recipient_names_are_case_insensitive_and_echoed_as_registered(clients: Clients) -> None:
    alice = clients.login("Alice")
    bob = clients.login("Bob")
    alice.expect("<User Bob is online.>")
    alice.send("chat bOB hi there")
    alice.expect("<To Bob> hi there")
    bob.expect('<Message from Alice: "hi there">')


def test_quotes_backslashes_and_unicode_arrive_recoverably(clients: Clients) -> None:
    alice, bob = clients.login("Alice"), clients.login("Bob")
    alice.expect("<User Bob is online.>")
    alice.send('chat Bob "she said \\"hé 👋\\" \\\\o/"')
    alice.expect('<To Bob> she said "hé 👋" \\\\o/')
    bob.expect('<Message from Alice: "she said \\"hé 👋\\" \\\\o/">')


def test_escaped_control_characters_are_delivered_visibly(clients: Clients) -> None:
    alice, bob = clients.login("Alice"), clients.login("Bob")
    alice.expect("<User Bob is online.>")
    alice.send('chat Bob "\\x1b[2J fake\\x0a<User Admin is online.>"')
    alice.read_line()
    line = bob.read_line_bytes()
    assert line == b'<Message from Alice: "\\x1b[2J fake\\x0a<User Admin is online.>">\n'


def test_broadcast_goes_to_everyone_else_and_the_sender_gets_an_echo(clients: Clients) -> None:
    alice, bob, carol = clients.login("Alice"), clients.login("Bob"), clients.login("Carol")
    alice.expect("<User Bob is online.>", "<User Carol is online.>")
    bob.expect("<User Carol is online.>")
    alice.send('broadcast "hello all"')
    alice.expect("<To everyone> hello all")
    bob.expect('<Broadcast from Alice: "hello all">')
    carol.expect('<Broadcast from Alice: "hello all">')
    alice.send("users")  # Alice got no copy of her own broadcast before this reply
    alice.expect("<Online users: Alice, Bob, Carol>")


def test_help_is_one_event_line(clients: Clients) -> None:
    alice = clients.login("Alice")
    alice.send("help")
    assert alice.read_line_bytes() == format_event(HelpText())


def test_message_to_a_name_never_seen(clients: Clients) -> None:
    alice = clients.login("Alice")
    alice.send('chat Carol "anyone?"')
    alice.expect("<User Carol does not exist.>")


def test_message_to_a_user_who_left(clients: Clients) -> None:
    alice, bob = clients.login("Alice"), clients.login("Bob")
    alice.expect("<User Bob is online.>")
    bob.send("bye")
    alice.expect("<User Bob is offline.>")
    alice.send('chat bob "still there?"')
    alice.expect("<User Bob is offline.>")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("dance", "unknown command"),
        ("chat", 'usage is chat <user> "<message>"'),
        ("chat Bob", 'usage is chat <user> "<message>"'),
        ('chat Bob "unterminated', "unterminated quote"),
        ('chat Bob "hi" there', "text after the closing quote"),
        ('chat Bob ""', "the message is empty"),
        ('broadcast ""', "the message is empty"),
        ("bye now", "bye takes no arguments"),
    ],
)
def test_mistakes_get_one_line_and_the_connection_stays_usable(
    clients: Clients, line: str, reason: str
) -> None:
    alice = clients.login("Alice")
    alice.send(line)
    alice.expect(INVALID.format(reason))
    alice.send("users")
    alice.expect("<Online users: Alice>")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"chat Bob \"\xff\xfe\"\n", "the line is not valid UTF-8 (byte 11)"),
        (b"chat Bob \"a\x00b\"\n", "character U+0000 is not allowed raw; inside quotes write it as \\x00"),
        (b"chat Bob \"\x1b[2J\"\n", "character U+001B is not allowed raw; inside quotes write it as \\x1b"),
        ("chat Bob \"a\u2028b\"\n".encode(), "character U+2028 is not allowed raw; inside quotes write it as \\u2028"),
        ("chat Bob \"a\x85b\"\n".encode(), "character U+0085 is not allowed raw; inside quotes write it as \\x85"),
        (b"chat Bob \"a\rb\"\n", "character U+000D is not allowed raw; inside quotes write it as \\x0d"),
    ],
)
def test_bad_bytes_are_refused_and_never_reach_the_recipient(
    clients: Clients, raw: bytes, reason: str
) -> None:
    alice, bob = clients.login("Alice"), clients.login("Bob")
    alice.expect("<User Bob is online.>")
    alice.send_raw(raw)
    alice.expect(INVALID.format(reason))
    alice.send('chat Bob "marker"')
    alice.expect("<To Bob> marker")
    bob.expect('<Message from Alice: "marker">')


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("A" * 33, "a username has at most 32 characters"),
        ("Al ice", "a username is 1-32 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit"),
        ("<Admin>", "a username is 1-32 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit"),
        ("everyone", "the name everyone is reserved"),
    ],
)
def test_a_bad_username_is_refused_and_the_next_try_works(
    clients: Clients, name: str, reason: str
) -> None:
    watcher = clients.login("Watcher")
    newcomer = clients.connect()
    newcomer.send(name)
    newcomer.expect(f"<Invalid username: {reason}.>")
    newcomer.send("Alice")
    newcomer.expect("<User Alice is online.>")
    # The watcher heard only of the successful login.
    watcher.expect("<User Alice is online.>")


def test_a_taken_name_is_refused_case_insensitively_and_nobody_is_told(clients: Clients) -> None:
    alice = clients.login("Alice")
    impostor = clients.connect()
    impostor.send("alice")
    impostor.expect("<Username Alice is already taken.>")
    impostor.send("Mallory")
    impostor.expect("<User Mallory is online.>")
    alice.expect("<User Mallory is online.>")


def test_blank_lines_are_ignored(clients: Clients) -> None:
    alice = clients.connect()
    alice.send_raw(b"\n\r\n  \nAlice\n\n")
    alice.expect("<User Alice is online.>")
    alice.send_raw(b"\n\nusers\n")
    alice.expect("<Online users: Alice>")


def test_split_and_coalesced_writes(clients: Clients) -> None:
    alice = clients.login("Alice")
    bob = clients.connect()
    # Bob's login and two commands arrive in one segment, with CRLF.
    bob.send_raw(b'Bob\r\nchat Alice "one"\r\nchat Alice "two"\r\n')
    bob.expect("<User Bob is online.>", "<To Alice> one", "<To Alice> two")
    alice.expect("<User Bob is online.>", '<Message from Bob: "one">', '<Message from Bob: "two">')
    # A command dribbled a byte at a time, a 4-byte character cut in the middle.
    for byte in 'chat Alice "🦀 three"\n'.encode():
        bob.send_raw(bytes([byte]))
    bob.expect("<To Alice> 🦀 three")
    alice.expect('<Message from Bob: "🦀 three">')


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
