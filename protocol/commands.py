"""Client commands: what a client sends, as values, with one parser and one formatter.

The grammar, one command per line::

    <username>                      the first line of a connection
    chat <user> "<message>"         direct message; a bare rest-of-line works too
    broadcast "<message>"           to everybody else online
    users | help | bye

Command words are case-insensitive and words are separated by spaces only: a
TAB is an ordinary character, so ``chat<TAB>Bob hi`` is not a command and
``chat Bob<TAB>hi`` names no valid recipient.  Inside quotes ``\\"`` and
``\\\\`` (and ``\\xHH``/``\\uHHHH``, see :mod:`protocol.escaping`) are escapes; a
bare message is taken exactly as typed, TABs included.

The parsers raise :class:`RemoteProtocolError`, the formatter
:class:`LocalProtocolError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.escaping import QUOTED_PATTERN, escape, unescape
from protocol.usernames import is_valid_username, username_problem, validate_username


@dataclass(frozen=True, slots=True)
class Login:
    """The first line of a connection: the username."""

    name: str


@dataclass(frozen=True, slots=True)
class Chat:
    to: str
    text: str


@dataclass(frozen=True, slots=True)
class Broadcast:
    text: str


@dataclass(frozen=True, slots=True)
class Users:
    pass


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Bye:
    pass


Command = Chat | Broadcast | Users | Help | Bye

COMMAND_NAMES = ("chat", "broadcast", "users", "help", "bye")
CHAT_USAGE = 'chat <user> "<message>"'
BROADCAST_USAGE = 'broadcast "<message>"'

# Matched at the start of a message; what follows the closing quote is checked.
_QUOTED = re.compile(QUOTED_PATTERN)
_TAB_AS_SEPARATOR = "a tab does not separate words; use a space"


def parse_login(line: str) -> Login:
    """Parse the first line of a connection; surrounding spaces are ignored."""
    return Login(validate_username(line.strip(" ")))


def parse_command(line: str) -> Command:
    """Parse one line of text (already decoded, terminator removed).

    Raises :class:`RemoteProtocolError` with a reason fit to show the sender,
    and nothing else, whatever ``line`` holds.
    """
    stripped = line.strip(" ")
    if not stripped:
        raise RemoteProtocolError("empty command")
    word, _, rest = stripped.partition(" ")
    word = word.lower()
    rest = rest.lstrip(" ")
    if word == "chat":
        recipient, _, message = rest.partition(" ")
        if "\t" in recipient:
            raise RemoteProtocolError(_TAB_AS_SEPARATOR)
        if not recipient or not message.strip(" "):
            raise RemoteProtocolError(f"usage is {CHAT_USAGE}")
        if not is_valid_username(recipient):
            raise RemoteProtocolError("the recipient is not a valid username")
        return Chat(recipient, _parse_message(message.lstrip(" ")))
    if word == "broadcast":
        if not rest:
            raise RemoteProtocolError(f"usage is {BROADCAST_USAGE}")
        return Broadcast(_parse_message(rest))
    if word in ("users", "help", "bye"):
        if rest:
            raise RemoteProtocolError(f"{word} takes no arguments")
        return {"users": Users, "help": Help, "bye": Bye}[word]()
    if "\t" in word and word.partition("\t")[0] in COMMAND_NAMES:
        raise RemoteProtocolError(_TAB_AS_SEPARATOR)
    raise RemoteProtocolError("unknown command")


def _parse_message(text: str) -> str:
    if not text.startswith('"'):
        # The unquoted form: the rest of the line, exactly as typed.
        return text.rstrip(" ")
    inner = text[1:-1]
    if len(text) > 2 and text[-1] == '"' and '"' not in inner and "\\" not in inner:
        # The common case: one quoted string, nothing escaped, nothing after
        # it -- what the regex below would match, without running it.
        return inner
    match = _QUOTED.match(text)
    if match is None:
        raise RemoteProtocolError("unterminated quote")
    if text[match.end() :].strip(" "):
        raise RemoteProtocolError("text after the closing quote")
    message = unescape(match.group(1))
    if not message:
        raise RemoteProtocolError("the message is empty")
    return message


def _quote(text: str) -> str:
    return '"' + escape(text, quoted=True) + '"'


def format_command(command: Command | Login) -> bytes:
    """Encode a command as one wire line, ending in ``\\n``.

    Messages are always quoted and escaped, so any text, control characters
    and all, survives the trip and ``parse_command`` gives it back unchanged.
    Raises :class:`LocalProtocolError` for an invalid username or message.
    """
    match command:
        case Login(name):
            line = _checked_name(name)
        case Chat(to, text):
            _checked_name(to)
            _check_message(text)
            line = f"chat {to} {_quote(text)}"
        case Broadcast(text):
            _check_message(text)
            line = f"broadcast {_quote(text)}"
        case Users():
            line = "users"
        case Help():
            line = "help"
        case Bye():
            line = "bye"
        case _:
            raise TypeError(f"not a command: {command!r}")
    return line.encode("utf-8") + b"\n"


def _checked_name(name: str) -> str:
    problem = username_problem(name)
    if problem is not None:
        raise LocalProtocolError(problem)
    return name


def _check_message(text: str) -> None:
    if not text:
        raise LocalProtocolError("the message is empty")
    # Surrogates cannot be encoded; catch them here rather than as a UnicodeError.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError("the message is not valid Unicode") from None


__all__ = [
    "Login", "Chat", "Broadcast", "Users", "Help", "Bye", "Command",
    "COMMAND_NAMES", "parse_login", "parse_command", "format_command",
]
