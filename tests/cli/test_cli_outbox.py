"""Matching the server's answers to our commands: the FIFO of outstanding commands."""

from __future__ import annotations

from cli.outbox import Outbox, Resolution
from protocol import (
    Broadcast,
    BroadcastFrom,
    BroadcastSent,
    Bye,
    Chat,
    Help,
    HelpText,
    History,
    HistoryEnd,
    HistoryLine,
    InvalidInput,
    MessageFrom,
    MessageSent,
    MessageStored,
    NotDelivered,
    OnlineUsers,
    UserOffline,
    UserOnline,
    Users,
    UserUnknown,
)


def _outcomes(resolutions: list[Resolution]) -> list[tuple[object, bool | None, str]]:
    return [(r.outgoing.command, r.delivered, r.reason) for r in resolutions]


def test_answers_come_in_order_and_unsolicited_events_are_not_answers() -> None:
    box = Outbox("Alice")
    box.sent(Chat("Bob", "one"), 0.0)
    box.sent(Users(), 0.0)
    box.sent(Broadcast("all"), 0.0)
    box.sent(Help(), 0.0)
    for event in (MessageFrom("Bob", "hi"), BroadcastFrom("Carol", "x"), UserOnline("Dave"),
                  UserOffline("Carol")):
        assert box.on_event(event) == ([], False)
    assert _outcomes(box.on_event(MessageSent("BOB", "one"))[0]) == [
        (Chat("Bob", "one"), True, "")]
    assert _outcomes(box.on_event(OnlineUsers(("Alice", "Bob")))[0]) == [(Users(), None, "")]
    assert _outcomes(box.on_event(BroadcastSent("all"))[0]) == [(Broadcast("all"), True, "")]
    assert _outcomes(box.on_event(HelpText())[0]) == [(Help(), None, "")]
    assert len(box) == 0


def test_refusals_say_why() -> None:
    box = Outbox("Alice")
    box.sent(Chat("Bob", "a"), 0.0)
    box.sent(Chat("Nobody", "b"), 0.0)
    box.sent(Chat("Carol", "c"), 0.0)
    box.sent(Broadcast("d"), 0.0)
    box.sent(Users(), 0.0)
    assert _outcomes(box.on_event(UserOffline("bob"))[0]) == [
        (Chat("Bob", "a"), False, "bob is offline")]
    assert _outcomes(box.on_event(UserUnknown("Nobody"))[0]) == [
        (Chat("Nobody", "b"), False, "Nobody does not exist")]
    assert _outcomes(box.on_event(NotDelivered("Carol", "the connection was closing"))[0]) == [
        (Chat("Carol", "c"), False, "the connection was closing")]
    assert _outcomes(box.on_event(InvalidInput("too long"))[0]) == [
        (Broadcast("d"), False, "the server refused it: too long")]
    assert _outcomes(box.on_event(InvalidInput("what"))[0]) == [
        (Users(), None, "the server refused it: what")]


def test_an_offline_notice_is_an_answer_only_for_a_message_to_that_user_at_the_head() -> None:
    box = Outbox("Alice")
    box.sent(Users(), 0.0)
    box.sent(Chat("Bob", "hi"), 0.0)
    # Bob's presence notice while "users" is still unanswered: presence.
    assert box.on_event(UserOffline("Bob")) == ([], False)
    assert box.on_event(UserOffline("Carol")) == ([], False)
    box.on_event(OnlineUsers(("Alice",)))
    # Now the message to Bob is at the head: the safer reading, an answer.
    resolutions, was_reply = box.on_event(UserOffline("Bob"))
    assert was_reply and _outcomes(resolutions) == [(Chat("Bob", "hi"), False, "Bob is offline")]
    # The second offline line (the real answer, if the first was presence)
    # finds nothing outstanding: presence.
    assert box.on_event(UserOffline("Bob")) == ([], False)


def test_a_message_reported_refused_by_a_presence_line_is_corrected_by_its_echo() -> None:
    # Bob left (presence, taken as the answer), came back, and then our
    # message reached him: its echo arrives with nothing outstanding for it.
    box = Outbox("Alice")
    box.sent(Chat("Bob", "hi"), 0.0)
    assert box.on_event(UserOffline("Bob"))[0][0].delivered is False
    assert box.on_event(UserOnline("Bob")) == ([], False)
    resolutions, was_reply = box.on_event(MessageSent("Bob", "hi"))
    assert was_reply
    assert [(r.outgoing.command, r.delivered, r.corrected) for r in resolutions] == [
        (Chat("Bob", "hi"), True, True)]


def test_bye_is_answered_by_our_own_offline_notice() -> None:
    box = Outbox("Alice")
    box.sent(Bye(), 0.0)
    assert box.on_event(UserOffline("Bob")) == ([], False)
    assert _outcomes(box.on_event(UserOffline("alice"))[0]) == [(Bye(), None, "")]


def test_an_answer_that_skips_the_head_resolves_the_skipped_as_unknown() -> None:
    box = Outbox("Alice")
    box.sent(Help(), 0.0)
    box.sent(Chat("Bob", "x"), 0.0)
    assert _outcomes(box.on_event(MessageSent("Bob", "x"))[0]) == [
        (Help(), None, "no answer recognised"), (Chat("Bob", "x"), True, "")]


def test_dropping_the_connection_leaves_nothing_outstanding() -> None:
    box = Outbox("Alice")
    box.sent(Chat("Bob", "x"), 0.0)
    assert [entry.command for entry in box.drop_all()] == [Chat("Bob", "x")]
    assert box.pending() == []


def test_a_history_reply_and_a_stored_message_answer_their_commands() -> None:
    box = Outbox("Alice")
    box.sent(History("Bob", None, 2), 0.0)
    box.sent(Chat("Carol", "later"), 0.0)
    box.sent(Users(), 0.0)
    line = HistoryLine("7", "2026-12-07T06:17:43.123Z", "Bob", "Alice", "yo")
    assert box.on_event(line) == ([], False)  # the reply's body, not its end
    assert _outcomes(box.on_event(HistoryEnd("Bob", 1))[0]) == [
        (History("Bob", None, 2), None, "")]
    assert _outcomes(box.on_event(MessageStored("Carol"))[0]) == [
        (Chat("Carol", "later"), None, "")]
    # The next refusal is the users command's, not an earlier line's.
    assert _outcomes(box.on_event(InvalidInput("no"))[0]) == [
        (Users(), None, "the server refused it: no")]
