"""Every chat rule, in memory: ChatService on fake transports and a fake clock.

No sockets, no threads, no sleeping: each test drives the chat logic the way a
backend does (see ``tests/fake_transport.py``) and asserts the exact lines a
peer would read.  A rule is tested here once; the socket suites
(``tests/backends/``) keep only what sockets show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from protocol.events import HELP_LINE
from reactor.chat import NO_OPERATORS, ChatService
from reactor.connection import Connection, Slot
from reactor.flow import FloodLimits
from reactor.phases import Move, Phase, next_phase
from reactor.whiteboard import MemoryWhiteboard
from tests.fake_transport import DeferredWhiteboard, FakePeer, Harness

INVALID = '<Invalid input: {}. Type "help" for commands.>'

MakeHarness = Callable[..., Harness]


@pytest.fixture
def make() -> Iterator[MakeHarness]:
    """Harnesses with config overrides; each must end with the transport contract kept."""
    made: list[Harness] = []

    def factory(**overrides: object) -> Harness:
        harness = Harness(**overrides)  # type: ignore[arg-type]
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        assert harness.violations == []


@pytest.fixture
def h(make: MakeHarness) -> Harness:
    return make()


def broadcast_line(sender: str, text: str) -> bytes:
    return f'<Broadcast from {sender}: "{text}">\n'.encode()


def trio(h: Harness) -> tuple[FakePeer, FakePeer, FakePeer]:
    alice, bob, carol = h.login("Alice"), h.login("Bob"), h.login("Carol")
    alice.expect("<User Bob is online.>", "<User Carol is online.>")
    bob.expect("<User Carol is online.>")
    return alice, bob, carol


# -- logging in ------------------------------------------------------------------


def test_everyone_online_hears_of_a_login_including_the_newcomer(h: Harness) -> None:
    alice = h.connect()
    alice.send("Alice")
    assert alice.wire == b"<User Alice is online.>\n"
    bob = h.connect()
    bob.send("Bob")
    assert bob.wire == b"<User Bob is online.>\n"
    assert alice.wire == b"<User Alice is online.>\n<User Bob is online.>\n"
    assert h.online() == ["Alice", "Bob"]


def test_the_original_conversation_byte_for_byte(h: Harness) -> None:
    alice = h.login("Alice")
    bob = h.connect()
    bob.send("Bob")
    alice.send('chat Bob "Hello Bob!"')
    bob.send("bye")
    assert alice.wire == (
        b"<User Alice is online.>\n<User Bob is online.>\n<To Bob> Hello Bob!\n"
        b"<User Bob is offline.>\n"
    )
    assert bob.wire == (
        b'<User Bob is online.>\n<Message from Alice: "Hello Bob!">\n<User Bob is offline.>\n'
    )
    assert bob.closed and not alice.closed


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("A" * 33, "a username has at most 32 characters"),
        ("Al ice", "a username is 1-32 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit"),
        ("<Admin>", "a username is 1-32 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit"),
        ("everyone", "the name everyone is reserved"),
        ("EveryOne", "the name EveryOne is reserved"),
    ],
)
def test_a_bad_username_is_refused_and_the_next_try_works(
    h: Harness, name: str, reason: str
) -> None:
    watcher = h.login("Watcher")
    newcomer = h.connect()
    newcomer.send(name)
    newcomer.expect(f"<Invalid username: {reason}.>")
    watcher.expect_nothing()
    newcomer.send("Alice")
    newcomer.expect("<User Alice is online.>")
    watcher.expect("<User Alice is online.>")


def test_a_taken_name_is_refused_ignoring_case_in_the_holders_spelling_and_nobody_is_told(
    h: Harness,
) -> None:
    alice = h.login("Alice")
    impostor = h.connect()
    impostor.send("aLICE")
    impostor.expect("<Username Alice is already taken.>")
    alice.expect_nothing()
    impostor.send("Mallory")
    impostor.expect("<User Mallory is online.>")
    alice.expect("<User Mallory is online.>")


def test_blank_lines_are_ignored_before_and_after_login(h: Harness) -> None:
    alice = h.connect()
    alice.send_raw(b"\n\r\n  \nAlice\n\n")
    alice.expect("<User Alice is online.>")
    alice.send_raw(b"\n \r\nusers\n")
    alice.expect("<Online users: Alice>")


def test_coalesced_and_split_writes_give_the_same_lines(h: Harness) -> None:
    alice = h.login("Alice")
    bob = h.connect()
    bob.send_raw(b'Bob\r\nchat Alice "one"\r\nchat Alice "two"\r\n')
    bob.expect("<User Bob is online.>", "<To Alice> one", "<To Alice> two")
    for byte in 'chat Alice "\U0001f980 three"\n'.encode():
        bob.send_raw(bytes([byte]))
    bob.expect("<To Alice> \U0001f980 three")
    alice.expect(
        "<User Bob is online.>", '<Message from Bob: "one">', '<Message from Bob: "two">',
        '<Message from Bob: "\U0001f980 three">',
    )


# -- commands -----------------------------------------------------------------------


def test_a_direct_message_reaches_only_its_recipient_echoed_in_the_registered_spelling(
    h: Harness,
) -> None:
    alice, bob, carol = trio(h)
    alice.send("chat cAROL psst")
    alice.expect("<To Carol> psst")
    carol.expect('<Message from Alice: "psst">')
    bob.expect_nothing()


def test_quoted_text_is_unescaped_for_the_echo_and_re_escaped_for_the_recipient(
    h: Harness,
) -> None:
    """An escaped control character reaches the recipient visibly, escaped:
    ``\\x0a`` cannot end the line early and forge a notice after it."""
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    alice.send('chat Bob "she said \\"h\u00e9 \U0001f44b\\" \\\\o/ \\x1b[2J\\x0a<User Admin is online.>"')
    alice.expect('<To Bob> she said "h\u00e9 \U0001f44b" \\\\o/ \\x1b[2J\\x0a<User Admin is online.>')
    assert bob.wire.endswith(
        '<Message from Alice: "she said \\"h\u00e9 \U0001f44b\\" \\\\o/ \\x1b[2J\\x0a<User Admin is online.>">\n'
        .encode())


def test_a_broadcast_goes_to_everyone_else_and_the_sender_gets_an_echo(h: Harness) -> None:
    alice, bob, carol = trio(h)
    alice.send('broadcast "hello all"', "users")
    alice.expect("<To everyone> hello all", "<Online users: Alice, Bob, Carol>")
    bob.expect('<Broadcast from Alice: "hello all">')
    carol.expect('<Broadcast from Alice: "hello all">')


def test_users_lists_everyone_online_sorted_ignoring_case(h: Harness) -> None:
    zed = h.login("zed")
    h.login("Bob")
    h.login("alice")
    zed.lines()
    zed.send("users")
    zed.expect("<Online users: alice, Bob, zed>")


def test_help_is_one_line(h: Harness) -> None:
    alice = h.login("Alice")
    alice.send("HELP")
    assert alice.wire.endswith(HELP_LINE.encode() + b"\n")
    alice.expect(HELP_LINE)


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
def test_a_mistake_gets_one_line_and_the_connection_stays_usable(
    h: Harness, line: str, reason: str
) -> None:
    alice = h.login("Alice")
    alice.send(line, "users")
    alice.expect(INVALID.format(reason), "<Online users: Alice>")


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
def test_a_bad_byte_is_refused_by_name_and_reaches_nobody(
    h: Harness, raw: bytes, reason: str
) -> None:
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    alice.send_raw(raw)
    alice.expect(INVALID.format(reason))
    bob.expect_nothing()
    alice.send('chat Bob "marker"')
    alice.expect("<To Bob> marker")
    bob.expect('<Message from Alice: "marker">')


def test_bye_tells_the_leaver_and_everyone_once_then_closes_and_ignores_the_rest(
    h: Harness,
) -> None:
    alice, bob, carol = trio(h)
    bob.send_raw(b'bye\nchat Alice "ghost"\n')
    assert bob.wire.endswith(b"<User Carol is online.>\n<User Bob is offline.>\n")
    bob.expect("<User Bob is offline.>")
    assert bob.closed
    alice.expect("<User Bob is offline.>")
    carol.expect("<User Bob is offline.>")
    assert h.online() == ["Alice", "Carol"]
    assert h.chat.connection_count == 2


def test_a_name_never_seen_does_not_exist_and_one_that_left_is_offline(h: Harness) -> None:
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    alice.send('chat Carol "anyone?"')
    alice.expect("<User Carol does not exist.>")
    bob.send("bye")
    alice.expect("<User Bob is offline.>")
    alice.send('chat bOB "still there?"')
    alice.expect("<User Bob is offline.>")


def test_a_direct_message_to_oneself_is_echoed_then_delivered(h: Harness) -> None:
    alice = h.login("Alice")
    alice.send('chat alice "note to self"', "users")
    alice.expect(
        "<To Alice> note to self", '<Message from Alice: "note to self">', "<Online users: Alice>"
    )


# -- the echo promises delivery ---------------------------------------------------------


def test_the_echo_waits_until_the_recipients_connection_took_the_message(h: Harness) -> None:
    alice, bob, carol = trio(h)
    bob.stop_reading()
    alice.send('chat Bob "hi"', "users")
    alice.expect_nothing()  # no echo yet, and the next reply waits behind it
    alice.send('chat Carol "meanwhile"', "help")
    # The sender's later commands are not held up: Carol has Alice's message
    # while Alice's message to Bob still waits.
    carol.expect('<Message from Alice: "meanwhile">')
    assert not alice.paused
    # Nobody else is held up.
    carol.send('chat Alice "meanwhile"')
    carol.expect("<To Alice> meanwhile")
    bob.read_all()
    assert bob.lines() == ['<Message from Alice: "hi">']
    # The replies come in command order.
    alice.expect(
        '<Message from Carol: "meanwhile">', "<To Bob> hi", "<Online users: Alice, Bob, Carol>",
        "<To Carol> meanwhile", HELP_LINE,
    )


def test_a_message_whose_sending_started_is_echoed_once_it_is_all_taken(h: Harness) -> None:
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    bob.stop_reading()
    alice.send('chat Bob "a long enough message"')
    bob.transport.take(10)
    h.advance(h.config.delivery_timeout / 2)
    alice.expect_nothing()
    bob.read_all()
    alice.expect("<To Bob> a long enough message")
    assert bob.lines() == ['<Message from Alice: "a long enough message">']


def test_a_started_message_stuck_past_the_timeout_cuts_the_recipient(h: Harness) -> None:
    """Part of it went out, so it cannot be taken back; the recipient is wedged
    and is cut off as a slow consumer, and the sender is told, not left waiting."""
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    bob.stop_reading()
    alice.send('chat Bob "a long enough message"')
    bob.transport.take(10)
    h.advance(h.config.delivery_timeout + 1)
    alice.expect("<User Bob is offline.>",
                 "<Message to Bob not delivered: Bob left before it could be sent.>")


def test_a_message_that_waits_delivery_timeout_is_withdrawn_and_never_arrives(
    make: MakeHarness,
) -> None:
    h = make(delivery_timeout=2.0)
    alice, bob, carol = trio(h)
    bob.stop_reading()
    carol.send('broadcast "queued ahead"')
    carol.expect("<To everyone> queued ahead")
    alice.send('chat Bob "are you there?"', "users")
    h.advance(1.875)
    alice.expect('<Broadcast from Carol: "queued ahead">')
    h.advance(0.125)
    alice.expect(
        "<Message to Bob not delivered: Bob is not reading.>", "<Online users: Alice, Bob, Carol>"
    )
    bob.start_reading()
    assert bob.lines() == ['<Broadcast from Carol: "queued ahead">']  # and never the message
    bob.send("users")
    bob.expect("<Online users: Alice, Bob, Carol>")
    alice.expect_nothing()  # no late echo either


def test_a_recipient_cut_off_with_messages_queued_gets_its_senders_not_delivered(
    h: Harness,
) -> None:
    alice, bob, carol = trio(h)
    bob.stop_reading()
    alice.send('chat Bob "one"')
    carol.send('chat Bob "two"')
    bob.drop()
    for sender in (alice, carol):
        sender.expect(
            "<User Bob is offline.>",
            "<Message to Bob not delivered: Bob left before it could be sent.>",
        )
    assert bob.closed
    assert b"Message from" not in bob.wire
    alice.send("users")
    alice.expect("<Online users: Alice, Carol>")


def test_a_sender_that_closes_right_after_a_message_still_gets_its_echo(h: Harness) -> None:
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    bob.stop_reading()
    alice.send('chat Bob "last words"')
    alice.close()
    assert not alice.closed
    bob.start_reading()
    alice.expect("<To Bob> last words")
    assert alice.closed
    assert bob.lines() == ['<Message from Alice: "last words">', "<User Alice is offline.>"]


def test_a_message_queued_for_a_user_who_then_says_bye_is_delivered_as_the_queue_drains(
    h: Harness,
) -> None:
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    bob.lines()
    bob.stop_reading()
    alice.send('chat Bob "before you go"')
    bob.send("bye")
    alice.expect("<User Bob is offline.>")  # Bob has left; his connection drains
    assert not bob.closed
    bob.start_reading()
    assert bob.lines() == ['<Message from Alice: "before you go">', "<User Bob is offline.>"]
    assert bob.closed
    alice.expect("<To Bob> before you go")  # it was handed over, so the echo is true


def test_a_message_that_would_pass_the_recipients_hard_limit_cuts_the_recipient_not_the_sender(
    make: MakeHarness,
) -> None:
    h = make(output_hard_limit=250, output_limit=100_000)
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    bob.stop_reading()
    alice.send("chat Bob " + "z" * 300, "users")
    assert bob.closed
    alice.expect(
        "<User Bob is offline.>",
        "<Message to Bob not delivered: Bob left before it could be sent.>",
        "<Online users: Alice>",
    )


# -- an answer that comes later ------------------------------------------------------


def test_lines_after_the_username_wait_in_order_until_the_claim_is_answered(
    make: MakeHarness,
) -> None:
    board = DeferredWhiteboard()
    h = make(whiteboard=board)
    alice = h.connect()
    alice.send("Alice", "users", "help")
    alice.expect_nothing()
    assert alice.paused
    alice.send('broadcast "sent while waiting"')
    board.answer_next()
    alice.expect(
        "<User Alice is online.>", "<Online users: Alice>", HELP_LINE,
        "<To everyone> sent while waiting",
    )
    assert not alice.paused


def test_a_refused_claim_lets_the_waiting_line_be_the_next_try(make: MakeHarness) -> None:
    board = DeferredWhiteboard()
    h = make(whiteboard=board)
    alice = h.connect()
    alice.send("Alice")
    board.answer_next()
    impostor = h.connect()
    impostor.send("alice", "Mallory", "users")
    board.answer_next()
    impostor.expect("<Username Alice is already taken.>")
    board.answer_next()
    impostor.expect("<User Mallory is online.>", "<Online users: Alice, Mallory>")


def test_of_two_claims_for_one_name_the_first_answered_wins(make: MakeHarness) -> None:
    board = DeferredWhiteboard()
    h = make(whiteboard=board)
    first, second = h.connect(), h.connect()
    first.send("Alice")
    second.send("ALICE")
    board.answer_all()
    first.expect("<User Alice is online.>")
    second.expect("<Username Alice is already taken.>")


@pytest.mark.parametrize("gone_by", ["drop", "login timeout"])
def test_a_name_claimed_for_a_connection_gone_meanwhile_is_released(
    make: MakeHarness, gone_by: str
) -> None:
    board = DeferredWhiteboard()
    h = make(whiteboard=board, login_timeout=5.0)
    watcher = h.connect()
    watcher.send("Watcher")
    board.answer_next()
    watcher.lines()
    ghost = h.connect()
    ghost.send("Alice")
    if gone_by == "drop":
        ghost.drop()
    else:
        h.advance(5)
        assert ghost.wire == b"<Login timed out.>\n"
    assert ghost.closed
    board.answer_next()
    assert ghost.wire in (b"", b"<Login timed out.>\n")  # never told it is online
    assert h.online() == ["Watcher"]
    watcher.expect_nothing()  # never online, so never offline either
    alice = h.connect()
    alice.send("alice")
    board.answer_next()
    alice.expect("<User alice is online.>")


def test_a_claim_answered_after_shutdown_began_is_released_and_announced_to_nobody(
    make: MakeHarness,
) -> None:
    board = DeferredWhiteboard()
    h = make(whiteboard=board)
    ghost = h.connect()
    ghost.send("Alice")
    h.shutdown()
    assert ghost.closed
    board.answer_next()
    assert ghost.wire == b"<Server is shutting down.>\n"
    assert h.online() == []


def test_a_login_then_end_of_input_is_answered_then_closed(make: MakeHarness) -> None:
    board = DeferredWhiteboard()
    h = make(whiteboard=board)
    watcher = h.connect()
    watcher.send("Watcher")
    board.answer_next()
    watcher.lines()
    alice = h.connect()
    alice.send("Alice")
    alice.close()
    assert not alice.closed
    board.answer_next()
    assert alice.wire == b"<User Alice is online.>\n"
    assert alice.closed
    watcher.expect("<User Alice is online.>", "<User Alice is offline.>")
    assert h.online() == ["Watcher"]


class SlowPublishing(MemoryWhiteboard[Connection]):
    """A roster whose broadcasts reach "the other servers" only when the test
    says so, as a cluster's do: the chat cannot tell it from Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Callable[[str | None], None]] = []

    def publish(self, data: bytes, on_result: Callable[[str | None], None]) -> None:
        self.waiting.append(on_result)

    def answer_all(self, refused: str | None = None) -> None:
        waiting, self.waiting = self.waiting, []
        for on_result in waiting:
            on_result(refused)


def _a_broadcast_then_a_message(make: MakeHarness, board: MemoryWhiteboard[Connection]
                                ) -> tuple[list[str], list[str], list[str]]:
    h = make(whiteboard=board)
    alice, bob, carol = trio(h)
    alice.send('broadcast "first"', 'chat Bob "second"', 'chat Carol "third"', "users")
    if isinstance(board, SlowPublishing):
        # Nothing yet: the broadcast is not on its way, and the messages
        # after it wait for its fan-out here; the sender is not held up.
        assert bob.lines() == carol.lines() == alice.lines() == []
        assert not alice.paused
        h.settle()
        board.answer_all()
        h.settle()
    return alice.lines(), bob.lines(), carol.lines()


def test_a_broadcast_published_later_keeps_every_order_a_published_one_keeps(
    make: MakeHarness,
) -> None:
    """The chat's one path, whichever way the roster answers: at once (in
    memory) or later (a cluster's Redis)."""
    at_once = _a_broadcast_then_a_message(make, MemoryWhiteboard())
    later = _a_broadcast_then_a_message(make, SlowPublishing())
    assert later == at_once
    alice, bob, carol = at_once
    assert alice == ["<To everyone> first", "<To Bob> second", "<To Carol> third",
                     "<Online users: Alice, Bob, Carol>"]
    assert bob == ['<Broadcast from Alice: "first">', '<Message from Alice: "second">']
    assert carol == ['<Broadcast from Alice: "first">', '<Message from Alice: "third">']


def test_a_broadcast_refused_later_is_answered_in_its_turn_and_reaches_nobody(
    make: MakeHarness,
) -> None:
    board = SlowPublishing()
    h = make(whiteboard=board)
    alice, bob, carol = trio(h)
    alice.send('broadcast "lost"', 'chat Bob "kept"')
    board.answer_all("the chat service is unavailable")
    alice.expect("<Broadcast not sent: the chat service is unavailable.>", "<To Bob> kept")
    bob.expect('<Message from Alice: "kept">')
    carol.expect_nothing()


# -- end of input and the original client's habits ---------------------------------------


def test_an_unterminated_last_line_is_handled_at_end_of_input(h: Harness) -> None:
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    bob.send_raw(b"bye")
    bob.expect_nothing()
    bob.close()
    bob.expect("<User Bob is offline.>")
    assert bob.closed
    alice.expect("<User Bob is offline.>")


def test_end_of_input_counts_as_bye_for_everyone_else(h: Harness) -> None:
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    bob.close()
    assert bob.closed
    bob.expect_nothing()
    alice.expect("<User Bob is offline.>")
    again = h.login("bob")
    alice.expect("<User bob is online.>")
    again.send("users")
    again.expect("<Online users: Alice, bob>")


def test_a_dropped_connection_counts_as_bye(h: Harness) -> None:
    alice, bob, carol = trio(h)
    bob.drop()
    alice.expect("<User Bob is offline.>")
    carol.expect("<User Bob is offline.>")
    assert h.online() == ["Alice", "Carol"]
    assert h.chat.connection_count == 2


def test_a_first_line_without_newline_is_the_username_after_a_pause_of_silence(
    make: MakeHarness,
) -> None:
    h = make(login_pause=0.5)
    watcher = h.login("Watcher")
    alice = h.connect()
    alice.send_raw(b"Ali")
    h.advance(0.25)
    alice.send_raw(b"ce")  # more bytes: the pause starts again
    h.advance(0.375)
    alice.expect_nothing()
    h.advance(0.125)
    alice.expect("<User Alice is online.>")
    watcher.expect("<User Alice is online.>")
    alice.send("users")
    alice.expect("<Online users: Alice, Watcher>")


def test_a_name_without_newline_after_a_blank_line_is_taken_after_the_pause(
    make: MakeHarness,
) -> None:
    h = make(login_pause=0.5)
    alice = h.connect()
    alice.send_raw(b"\r\nAlice")
    h.advance(0.5)
    alice.expect("<User Alice is online.>")


def test_a_pause_does_not_end_a_command_line(make: MakeHarness) -> None:
    h = make(login_pause=0.5)
    alice = h.login("Alice")
    alice.send_raw(b"users")
    h.advance(5)
    alice.expect_nothing()
    alice.send_raw(b"\n")
    alice.expect("<Online users: Alice>")


def test_a_connection_without_a_username_in_time_is_told_and_closed(make: MakeHarness) -> None:
    h = make(login_timeout=3.0)
    late = h.connect()
    h.advance(1)
    late.send("not valid!")
    late.expect("<Invalid username: a username is 1-32 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit.>")
    h.advance(1.875)
    assert not late.closed
    h.advance(0.125)
    late.expect("<Login timed out.>")
    assert late.closed
    assert h.chat.connection_count == 0


def test_a_logged_in_user_has_no_login_deadline(make: MakeHarness) -> None:
    h = make(login_timeout=3.0)
    alice = h.login("Alice")
    h.advance(10)
    assert not alice.closed
    alice.send("users")
    alice.expect("<Online users: Alice>")


@pytest.mark.parametrize("split", [False, True])
def test_an_overlong_line_is_refused_once_without_harm(make: MakeHarness, split: bool) -> None:
    h = make(max_line=16)
    alice = h.connect()
    alice.send_raw(b"A" * 40 + b"\nAlice\n")
    alice.expect("<Invalid username: line longer than 16 bytes, discarded.>",
                 "<User Alice is online.>")
    long_line = b"chat Alice " + b"x" * 100 + b"\nusers\n"
    if split:
        for i in range(0, len(long_line), 7):
            alice.send_raw(long_line[i:i + 7])
    else:
        alice.send_raw(long_line)
    alice.expect(INVALID.format("line longer than 16 bytes, discarded"), "<Online users: Alice>")
    alice.send("chat Alice 12345")  # exactly 16 bytes: fine
    alice.expect("<To Alice> 12345", '<Message from Alice: "12345">')


# -- admission and shutdown ---------------------------------------------------------------


def test_past_max_clients_the_server_is_full_and_a_freed_slot_is_reused(
    make: MakeHarness,
) -> None:
    h = make(max_clients=2)
    alice, bob = h.login("Alice"), h.login("Bob")
    extra = h.connect()
    assert extra.wire == b"<Server is full.>\n"
    assert extra.closed
    bob.send("bye")
    carol = h.login("Carol")
    carol.send("users")
    carol.expect("<Online users: Alice, Carol>")
    alice.expect("<User Bob is online.>", "<User Bob is offline.>", "<User Carol is online.>")


def test_max_clients_per_ip_refuses_the_extra_from_that_address_only(make: MakeHarness) -> None:
    h = make(max_clients_per_ip=1)
    h.login("Alice", host="10.0.0.1")
    extra = h.connect(host="10.0.0.1")
    assert extra.wire == b"<Too many connections from your address.>\n"
    assert extra.closed
    h.login("Bob", host="10.0.0.2")


def test_shutdown_tells_everyone_once_and_no_offline_notices_fan_out(h: Harness) -> None:
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.lines()
    waiting = h.connect()
    h.shutdown()
    for peer in (alice, bob, waiting):
        peer.expect("<Server is shutting down.>")
        assert peer.closed
    assert h.chat.connection_count == 0
    late = h.connect()
    assert late.wire == b"<Server is shutting down.>\n"
    assert late.closed


def test_at_shutdown_a_client_that_does_not_read_is_dropped_after_the_linger(
    make: MakeHarness,
) -> None:
    h = make(close_linger=2.0)
    alice = h.login("Alice")
    alice.stop_reading()
    h.shutdown()
    h.advance(1.875)
    assert not alice.closed
    h.advance(0.125)
    assert alice.closed
    assert alice.transport.calls[-2:] == ["close", "abort"]
    assert h.chat.connection_count == 0


# -- output limits -------------------------------------------------------------------------


def test_a_client_not_reading_its_own_replies_has_its_next_commands_wait(
    make: MakeHarness,
) -> None:
    h = make(output_high_water=100)
    alice = h.login("Alice")
    alice.stop_reading()
    alice.send("help", "users")  # help alone is more than 100 bytes
    assert alice.queued > 100
    assert alice.paused
    assert b"Online users" not in alice.wire
    alice.send("users")  # waits in TCP
    alice.start_reading()
    alice.expect(HELP_LINE, "<Online users: Alice>", "<Online users: Alice>")
    assert not alice.paused


def test_the_soft_limit_cuts_a_client_queued_above_it_for_the_grace_period(
    make: MakeHarness,
) -> None:
    h = make(output_limit=150, slow_consumer_grace=2.0, output_high_water=10_000)
    alice, bob, carol = trio(h)
    bob.stop_reading()
    carol.stop_reading()
    text = "x" * 73  # a 100-byte broadcast line
    alice.send(f'broadcast "{text}"', f'broadcast "{text}"')
    assert bob.queued == carol.queued == 200
    h.advance(2)  # judged over the limit from the first check (t=1)
    carol.start_reading()  # Carol catches up in time
    h.advance(0.875)
    assert not bob.closed
    h.advance(0.125)
    assert bob.closed
    assert not carol.closed
    assert b"Broadcast" not in bob.wire  # its queue was discarded
    alice.lines()
    carol.expect(f'<Broadcast from Alice: "{text}">', f'<Broadcast from Alice: "{text}">',
                 "<User Bob is offline.>")
    assert h.online() == ["Alice", "Carol"]


def test_the_hard_limit_cuts_at_once(make: MakeHarness) -> None:
    h = make(output_hard_limit=250, output_limit=100_000)
    alice, bob, carol = trio(h)
    bob.stop_reading()
    text = "x" * 73
    alice.send(*[f'broadcast "{text}"'] * 3)
    assert bob.closed
    assert bob.wire.endswith(b"<User Carol is online.>\n")
    # Bob is cut by the third broadcast, whose echo Alice had already been sent.
    alice.expect(*[f"<To everyone> {text}"] * 3, "<User Bob is offline.>")
    # The notice follows the broadcast that cut Bob: a cut in the middle of a
    # fan-out is announced once that fan-out is done, never nested inside it.
    carol.expect(*[f'<Broadcast from Alice: "{text}">'] * 3, "<User Bob is offline.>")


def test_over_the_budgets_high_water_mark_the_largest_queues_not_read_are_cut_first(
    make: MakeHarness,
) -> None:
    """Over half the budget, queues the kernel took nothing of between two
    checks are cut, largest first, until the total is under a quarter."""
    h = make(output_budget=1000, output_limit=100_000)
    alice, bob, carol = trio(h)
    dave = h.login("Dave")
    for peer in (alice, bob, carol):
        peer.lines()
    text = "x" * 73
    bob.stop_reading()
    alice.send(f'broadcast "{text}"')
    carol.stop_reading()
    alice.send(f'broadcast "{text}"')
    dave.lines()
    dave.stop_reading()
    alice.send(f'broadcast "{text}"')
    assert (bob.queued, carol.queued, dave.queued) == (300, 200, 100)
    h.advance(1)  # the first check: nobody has been seen not reading yet
    assert not (bob.closed or carol.closed or dave.closed)
    h.advance(1)
    assert bob.closed and carol.closed and not dave.closed
    alice.expect(*[f"<To everyone> {text}"] * 3, "<User Bob is offline.>",
                 "<User Carol is offline.>")
    dave.start_reading()
    dave.expect(f'<Broadcast from Alice: "{text}">', "<User Bob is offline.>",
                "<User Carol is offline.>")


def test_over_half_the_budget_broadcasts_wait_until_the_queues_are_under_a_quarter(
    make: MakeHarness,
) -> None:
    """Past the high-water mark a broadcast waits (its sender's later lines
    with it) instead of anyone being cut; once readers have read the queues
    down, it goes, in order."""
    h = make(output_budget=800, output_limit=100_000)
    alice, bob, carol = trio(h)
    for peer in (alice, bob, carol):
        peer.lines()
    text = "x" * 73  # 100 bytes for each recipient
    bob.stop_reading()
    carol.stop_reading()
    alice.send(*[f'broadcast "{text}"'] * 3, f'broadcast "{text}!"', "users")
    assert (bob.queued, carol.queued) == (300, 300)  # over 400: the fourth waits
    alice.expect(*[f"<To everyone> {text}"] * 3)
    bob.read_all()
    h.advance(0.1)
    alice.expect_nothing()  # 300 queued for Carol: not yet under a quarter (200)
    carol.read_all()
    h.advance(0.1)
    alice.expect(f"<To everyone> {text}!", "<Online users: Alice, Bob, Carol>")
    bob.read_all()
    carol.read_all()
    for peer in (bob, carol):
        assert peer.lines()[-1] == f'<Broadcast from Alice: "{text}!">'
        assert not peer.closed


def test_a_queue_cut_at_the_soft_limit_no_longer_counts_against_the_budget(
    make: MakeHarness,
) -> None:
    h = make(output_limit=150, slow_consumer_grace=1.0, output_budget=700,
             output_high_water=10_000)
    alice, bob, carol = trio(h)
    dave = h.login("Dave")
    for peer in (alice, bob, carol):
        peer.lines()
    text = "x" * 73
    bob.stop_reading()
    alice.send(f'broadcast "{text}"', f'broadcast "{text}"')
    assert bob.queued == 200
    h.advance(1)  # Bob is over the soft limit from now
    carol.lines()
    carol.stop_reading()
    long_text = "y" * 576
    dave.lines()
    dave.send(f"chat Carol {long_text}")  # 600 bytes queued for Carol
    assert carol.queued == 600
    h.advance(1)  # Bob's grace is over: cut.  Carol's 600 alone are within the budget.
    assert bob.closed
    assert not carol.closed
    carol.start_reading()
    carol.expect(f'<Message from Dave: "{long_text}">', "<User Bob is offline.>")
    dave.expect("<User Bob is offline.>", f"<To Carol> {long_text}")


def test_a_queue_cut_at_the_soft_limit_is_not_cut_again_for_the_budget(
    make: MakeHarness,
) -> None:
    h = make(output_limit=150, slow_consumer_grace=1.0, output_budget=450,
             output_high_water=10_000)
    alice, bob, carol = trio(h)
    for peer in (alice, bob, carol):
        peer.lines()
    text = "x" * 73
    bob.stop_reading()
    alice.send(f'broadcast "{text}"', f'broadcast "{text}"')
    h.advance(1)  # Bob is over the soft limit from now
    carol.stop_reading()
    alice.send(f'broadcast "{text}"')
    assert (bob.queued, carol.queued) == (300, 100)
    h.advance(1)  # Bob's grace is over: cut once (the fixture checks the transport saw one abort)
    assert bob.closed
    assert bob.transport.calls.count("abort") == 1
    assert not carol.closed


# -- flood control ----------------------------------------------------------------------


def test_lines_over_the_rate_wait_and_none_is_dropped(make: MakeHarness) -> None:
    h = make(flood=FloodLimits(lines_per_second=4, lines_burst=3))
    alice = h.login("Alice")  # the login line took one token
    alice.send(*["users"] * 4)
    alice.expect(*["<Online users: Alice>"] * 2)
    assert alice.paused
    h.advance(0.25)
    alice.expect("<Online users: Alice>")
    h.advance(0.125)
    alice.expect_nothing()
    h.advance(0.125)
    alice.expect("<Online users: Alice>")
    assert not alice.paused


def test_a_broadcasts_recipients_are_charged_to_its_sender(make: MakeHarness) -> None:
    h = make(flood=FloodLimits(deliveries_per_second=8, deliveries_burst=3))
    alice, bob, _carol = trio(h)
    h.login("Dave")
    h.login("Eve")
    alice.lines()
    alice.send('broadcast "to four"', "users")  # four deliveries: one in debt
    alice.expect("<To everyone> to four")
    h.advance(0.125)
    alice.expect_nothing()
    bob.send("users")  # others are not held up
    bob.lines()
    h.advance(0.125)
    alice.expect("<Online users: Alice, Bob, Carol, Dave, Eve>")


def test_logins_are_metered_per_address(make: MakeHarness) -> None:
    h = make(flood=FloodLimits(logins_per_second=1, logins_burst=2))
    h.login("Alice", host="10.0.0.1")
    h.login("Bob", host="10.0.0.1")
    third = h.connect(host="10.0.0.1")
    third.send("Carol")
    third.expect_nothing()
    h.login("Dave", host="10.0.0.2")  # another address is not held up
    h.advance(0.875)
    third.expect_nothing()
    h.advance(0.125)
    third.expect("<User Carol is online.>")
    assert h.online() == ["Alice", "Bob", "Carol", "Dave"]


def test_a_login_line_held_back_by_the_line_rate_costs_one_login_only(
    make: MakeHarness,
) -> None:
    h = make(flood=FloodLimits(lines_per_second=4, lines_burst=1,
                               logins_per_second=1, logins_burst=2))
    first = h.connect(host="10.0.0.1")
    first.send("not valid!", "Alice")  # two attempts; the second waits for the line rate
    first.expect("<Invalid username: a username is 1-32 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit.>")
    h.advance(0.25)
    first.expect("<User Alice is online.>")
    # Two attempts cost two logins of the burst of two; a quarter second refilled a
    # quarter of one, so the address may try again at once.
    second = h.connect(host="10.0.0.1")
    second.send("Bob")
    second.expect("<User Bob is online.>")


# -- containment ----------------------------------------------------------------------------


def _fail_for(monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    original = ChatService._command_line

    def command_line(self: ChatService, connection: Connection, raw: bytes) -> None:
        if connection.username == victim:
            raise RuntimeError("injected failure")
        original(self, connection, raw)

    monkeypatch.setattr(ChatService, "_command_line", command_line)


def test_a_failure_handling_one_clients_line_ends_that_client_only(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob, carol = trio(h)
    _fail_for(monkeypatch, "Bob")
    bob.send("users", "users")
    assert bob.closed
    bob.expect_nothing()
    alice.expect("<User Bob is offline.>")
    carol.expect("<User Bob is offline.>")
    assert "injected failure" in caplog.text
    alice.send('chat Carol "still here"')
    alice.expect("<To Carol> still here")
    carol.expect('<Message from Alice: "still here">')
    monkeypatch.undo()
    again = h.login("Bob")  # the name is free
    again.send("users")
    again.expect("<Online users: Alice, Bob, Carol>")


def test_a_failure_in_an_answer_run_by_another_clients_handoff_ends_the_sender_only(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, carol = trio(h)
    bob.stop_reading()
    alice.send('chat Bob "hi"')  # its echo is answered when Bob's kernel takes "hi"
    original = Connection.answer

    def answer(self: Connection, slot: Slot, answer: object = b"") -> None:
        if self.username == "Alice":
            raise RuntimeError("injected failure")
        original(self, slot, answer)  # type: ignore[arg-type]

    monkeypatch.setattr(Connection, "answer", answer)
    bob.start_reading()
    assert alice.closed
    assert not bob.closed
    assert bob.lines() == ['<Message from Alice: "hi">', "<User Alice is offline.>"]
    carol.expect("<User Alice is offline.>")


def test_a_failure_in_one_recipients_send_during_a_broadcast_ends_that_recipient_only(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob, carol = trio(h)
    dave = h.login("Dave")
    for peer in (alice, bob, carol):
        peer.lines()

    def broken_write(data: bytes, on_handoff: object = None) -> None:
        raise RuntimeError("injected send failure")

    carol.transport.write = broken_write  # type: ignore[method-assign]
    alice.send('broadcast "hello"', "users")
    assert carol.closed
    alice.expect("<To everyone> hello", "<User Carol is offline.>",
                 "<Online users: Alice, Bob, Dave>")
    # The fan-out goes on after Carol: Bob (before her) and Dave (after) both
    # get it, and then, the fan-out done, the notice that Carol left.
    bob.expect('<Broadcast from Alice: "hello">', "<User Carol is offline.>")
    dave.expect('<Broadcast from Alice: "hello">', "<User Carol is offline.>")
    assert "injected send failure" in caplog.text


# -- phases ---------------------------------------------------------------------------------


def test_a_connection_moves_only_along_the_phase_table() -> None:
    assert next_phase(Phase.LOGIN, Move.PASSWORD_ASKED) is Phase.PASSWORD
    assert next_phase(Phase.PASSWORD, Move.PASSWORD_DONE) is Phase.LOGIN
    assert next_phase(Phase.LOGIN, Move.NAME_CLAIMED) is Phase.CHATTING
    for phase in (Phase.LOGIN, Phase.PASSWORD, Phase.CHATTING):
        assert next_phase(phase, Move.LEAVE) is Phase.CLOSING
    with pytest.raises(RuntimeError, match="'name claimed' is not a move from CHATTING"):
        next_phase(Phase.CHATTING, Move.NAME_CLAIMED)
    with pytest.raises(RuntimeError):
        next_phase(Phase.CLOSED, Move.LEAVE)


def test_the_password_step_is_a_phase_of_its_own() -> None:
    h = Harness()
    peer = h.connect()
    connection = peer.transport.connection
    assert isinstance(connection, Connection)
    connection.ask_password("Alice")
    assert (connection.phase, connection.password_for) == (Phase.PASSWORD, "Alice")
    peer.send("x" * 5000)  # an overlong line here is invalid input, not an invalid name
    assert peer.lines()[0].startswith("<Invalid input: line longer than")
    connection.password_done()
    assert (connection.phase, connection.password_for) == (Phase.LOGIN, None)


def test_lines_held_for_a_reason_of_the_servers_wait_in_order_behind_no_answer(
    h: Harness,
) -> None:
    alice, bob, carol = trio(h)
    bob.stop_reading()
    alice.send('chat Bob "slow"')  # an answer awaited, before the hold
    connection = alice.transport.connection
    assert isinstance(connection, Connection)
    connection.hold_lines()
    alice.send("users", 'chat Carol "later"')
    carol.expect_nothing()
    assert alice.paused
    connection.release_lines()
    carol.expect('<Message from Alice: "later">')  # not behind Bob's answer
    bob.read_all()
    alice.expect("<To Bob> slow", "<Online users: Alice, Bob, Carol>", "<To Carol> later")


def test_without_registered_names_every_operator_command_is_refused_with_the_reason() -> None:
    h = Harness()
    alice, bob = h.login("Alice"), h.login("Bob")
    alice.expect("<User Bob is online.>")
    for command in ("kick Bob", "ban Bob 1h spam", "unban Bob", "mute Bob", "unmute Bob", "bans"):
        alice.send(command)
        alice.expect(f'<Invalid input: {NO_OPERATORS}. Type "help" for commands.>')
    bob.expect_nothing()  # nothing reached the target
    alice.send('chat Bob "still here"')
    bob.expect('<Message from Alice: "still here">')
