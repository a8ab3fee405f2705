"""Tab completion: command names first, then the online users after ``chat``, ``/msg``, ``/query``."""

from __future__ import annotations

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from cli.completion import ChatCompleter, Roster
from protocol import OnlineUsers, UserOffline, UserOnline


def _complete(completer: ChatCompleter, text: str) -> list[str]:
    found = completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
    return [text[: len(text) + c.start_position] + c.text for c in found]


def test_the_roster_follows_the_users_reply_and_online_offline_notices() -> None:
    roster = Roster("Alice")
    roster.observe(OnlineUsers(("Alice", "carol", "Bob")))
    assert roster.names() == ["Bob", "carol"]
    roster.observe(UserOnline("dave"))
    roster.observe(UserOffline("BOB"))
    roster.observe(None)  # a line that was not an event changes nothing
    assert roster.names() == ["carol", "dave"]


def test_the_first_word_completes_to_a_command() -> None:
    completer = ChatCompleter(Roster("Alice"))
    assert _complete(completer, "ch") == ["chat "]
    assert _complete(completer, "Br") == ["broadcast "]
    assert _complete(completer, "B") == ["broadcast ", "bye ", "ban ", "bans "]
    assert _complete(completer, "") == ["chat ", "broadcast ", "users ", "help ", "bye ",
                                        "register ", "password ", "history ", "kick ", "ban ",
                                        "unban ",
                                        "mute ", "unmute ", "bans ", "/msg ", "/broadcast ",
                                        "/query ", "/who ", "/quit ", "/help ", "/register ",
                                        "/password ", "/history "]
    assert _complete(completer, "/r") == ["/register "]
    assert _complete(completer, "/b") == ["/broadcast "]
    assert _complete(completer, "/q") == ["/query ", "/quit "]


def test_the_word_after_chat_completes_to_an_online_user_but_not_oneself() -> None:
    roster = Roster("Alice")
    roster.observe(OnlineUsers(("Alice", "Bob", "Bea", "Carol")))
    completer = ChatCompleter(roster)
    assert _complete(completer, "chat b") == ["chat Bea ", "chat Bob "]
    assert _complete(completer, "CHAT  car") == ["CHAT  Carol "]
    assert _complete(completer, "chat a") == []


def test_nothing_is_offered_inside_a_message() -> None:
    roster = Roster("Alice")
    roster.observe(UserOnline("Bob"))
    completer = ChatCompleter(roster)
    assert _complete(completer, 'chat Bob "b') == []
    assert _complete(completer, "broadcast b") == []


def test_names_complete_after_msg_and_query_and_only_slash_commands_in_a_query() -> None:
    roster = Roster("Alice")
    roster.observe(OnlineUsers(("Alice", "Bob")))
    in_query = False
    completer = ChatCompleter(roster, lambda: in_query)
    assert _complete(completer, "/msg b") == ["/msg Bob "]
    assert _complete(completer, "/query B") == ["/query Bob "]
    assert _complete(completer, "/msg Bob hi b") == []
    in_query = True
    assert _complete(completer, "ch") == []  # plain text for Bob, not a command
    assert _complete(completer, "/qu") == ["/query ", "/quit "]
