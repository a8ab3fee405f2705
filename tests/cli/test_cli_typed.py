"""What the user types, turned into actions: wire commands, IRC-style commands, refusals."""

from __future__ import annotations

import pytest

from cli.typed import HELP_TEXT, Quit, Refused, Send, SetQuery, ShowHelp, interpret, too_long
from protocol import DEFAULT_MAX_LINE, Broadcast, Chat, Help, History, Users, format_command


@pytest.mark.parametrize(("typed", "action"), [
    # The original commands, exactly as on the wire.
    (r'chat Bob "path C:\temp and a \"quote\""', Send(Chat("Bob", 'path C:\\temp and a "quote"'))),
    ("chat Bob bare text, as typed", Send(Chat("Bob", "bare text, as typed"))),
    ('broadcast "hi all"', Send(Broadcast("hi all"))),
    ("users", Send(Users())),
    ("help", Send(Help())),
    ("bye", Quit()),
    ("BYE", Quit()),
    # The ones people reach for; text is literal, no quoting.
    ('/msg Bob say "hi" to C:\\x1b', Send(Chat("Bob", 'say "hi" to C:\\x1b'))),
    ("/MSG bob  two  spaces ", Send(Chat("bob", " two  spaces "))),
    ('/broadcast say "hi" to C:\\x1b', Send(Broadcast('say "hi" to C:\\x1b'))),
    ("/BROADCAST  hello all ", Send(Broadcast("hello all "))),
    ("/query Bob", SetQuery("Bob")),
    ("/query", SetQuery(None)),
    ("/who", Send(Users())),
    ("/quit", Quit()),
    ("/quit see you", Quit()),
    ("/help", ShowHelp()),
    # /history is the wire command, read by the wire's own parser.
    ("/history Bob", Send(History("Bob", None, None))),
    ("/HISTORY everyone 5", Send(History("everyone", None, 5))),
    ("/history bob before 1733552263123-0 50", Send(History("bob", "1733552263123-0", 50))),
    # A paste of several lines is one message.
    ("/msg Bob one\ntwo", Send(Chat("Bob", "one\ntwo"))),
    ('chat Bob "one\ntwo"', Send(Chat("Bob", "one\ntwo"))),
    ("", None),
    ("   ", None),
])
def test_typed_lines(typed: str, action: object) -> None:
    assert interpret(typed) == action


def test_in_a_query_plain_text_goes_to_the_partner() -> None:
    assert interpret("users", query="Bob") == Send(Chat("Bob", "users"))
    assert interpret("a\ttab and\nmore", query="Bob") == Send(Chat("Bob", "a\ttab and\nmore"))
    assert interpret("//etc/hosts is here", query="Bob") == Send(Chat("Bob", "/etc/hosts is here"))
    assert interpret("/who", query="Bob") == Send(Users())
    assert interpret("/query", query="Bob") == SetQuery(None)


@pytest.mark.parametrize(("typed", "reason"), [
    ("frobnicate", '"frobnicate" is not a command; type /help for the commands'),
    ("msg Bob hi", '"msg" is not a command; did you mean /msg?'),
    ("quit", '"quit" is not a command; did you mean /quit?'),
    ("brodcast hi", '"brodcast" is not a command; did you mean broadcast?'),
    ("/mgs Bob hi", '"/mgs" is not a command; did you mean /msg?'),
    ("chat Bob", 'usage is chat <user> "<message>" (or: /msg <user> <text>)'),
    ('chat Bob "no end', "unterminated quote"),
    ("/msg Bob", "usage: /msg <user> <text>"),
    ("/broadcast", "usage: /broadcast <text>"),
    ("/broadcast  ", "usage: /broadcast <text>"),
    ("/brodcast hi", '"/brodcast" is not a command; did you mean /broadcast?'),
    ("/msg -x hi", "-x is not a valid username: a username is 1-32 ASCII letters, digits, "
                   "'_', '-' or '.', starting with a letter or digit"),
    ("/query everyone", "everyone is not a valid username: the name everyone is reserved"),
    ("/history", "/history: usage is history <user>|everyone [before <id>] [<count>]"),
    ("/history Bob 500", "/history: a history page holds 1 to 100 messages"),
    ("/history -x", "/history: history is of a conversation: a username, or everyone"),
    ("hello\nworld", '"hello" is not a command; did you mean help?; a paste of 2 lines is '
                     "sent as one message: start it with /msg <user> or open a /query"),
])
def test_refusals_name_what_was_typed_and_suggest(typed: str, reason: str) -> None:
    assert interpret(typed) == Refused(reason)


def test_an_overlong_message_is_refused_with_how_much_too_long() -> None:
    # "chat Bob " and two quotes: 11 bytes; the rest is the limit.
    room = DEFAULT_MAX_LINE - 11
    assert interpret("/msg Bob " + "x" * room) == Send(Chat("Bob", "x" * room))
    assert interpret("/msg Bob " + "x" * (room + 1)) == Refused(
        "the message is 1 character too long (the server takes lines of at most 4,096 bytes)")
    # Characters that are escaped on the wire take more room: a tab is \x09.
    assert too_long(Chat("Bob", "\t" * 1021)) is None
    assert too_long(Chat("Bob", "\t" * 1100)) == (
        "the message is 79 characters too long (the server takes lines of at most 4,096 bytes)")
    # What the client lets through, the server's limit lets through.
    fitting = Broadcast("é" * 2038 + "x")
    assert too_long(fitting) is None and len(format_command(fitting)) - 1 <= DEFAULT_MAX_LINE


def test_the_help_lists_every_slash_command() -> None:
    for command in ("/msg <user> <text>", "/broadcast <text>", "/query <user>", "/who", "/quit",
                    "/register", "/password", "/help"):
        assert command in HELP_TEXT, command
