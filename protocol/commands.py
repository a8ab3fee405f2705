"""Client commands: what a client sends, as values, with one parser and one formatter.

The grammar, one command per line::

    <username>                      the first line of a connection
    chat <user> "<message>"         direct message; a bare rest-of-line works too
    broadcast "<message>"           to everybody else online
    users | help | bye

Command words are case-insensitive.  Inside quotes ``\\"`` and ``\\\\`` (and
``\\xHH``/``\\uHHHH``, see :mod:`protocol.escaping`) are escapes; a bare message
is taken exactly as typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.errors import ProtocolError
from protocol.escaping import escape, unescape
from protocol.usernames import is_valid_username, validate_username


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

# A quoted string: anything but a quote or backslash, or a backslash and any
# character.  Anchored at the start; what follows the closing quote is checked.
_QUOTED = re.compile(r'"((?:[^"\\]++|\\.)*+)"', re.DOTALL)


def parse_login(line: str) -> Login:
    """Parse the first line of a connection; surrounding spaces are ignored."""
    return Login(validate_username(line.strip(" ")))


def parse_command(line: str) -> Command:
    """Parse one line of text (already decoded, terminator removed).

    Raises :class:`ProtocolError` with a reason fit to show the sender, and
    nothing else, whatever ``line`` holds.
    """
    stripped = line.strip(" ")
    if not stripped:
        raise ProtocolError("empty command")
    word, _, rest = stripped.partition(" ")
    word = word.lower()
    rest = rest.lstrip(" ")
    if word == "chat":
        recipient, _, message = rest.partition(" ")
        if not recipient or not message.strip(" "):
            raise ProtocolError(f"usage is {CHAT_USAGE}")
        if not is_valid_username(recipient):
            raise ProtocolError("the recipient is not a valid username")
        return Chat(recipient, _parse_message(message.lstrip(" ")))
    if word == "broadcast":
        if not rest:
            raise ProtocolError(f"usage is {BROADCAST_USAGE}")
        return Broadcast(_parse_message(rest))
    if word in ("users", "help", "bye"):
        if rest:
            raise ProtocolError(f"{word} takes no arguments")
        return {"users": Users, "help": Help, "bye": Bye}[word]()
    raise ProtocolError("unknown command")


def _parse_message(text: str) -> str:
    if not text.startswith('"'):
        # The unquoted form: the rest of the line, exactly as typed.
        return text.rstrip(" ")
    match = _QUOTED.match(text)
    if match is None:
        raise ProtocolError("unterminated quote")
    if text[match.end() :].strip(" "):
        raise ProtocolError("text after the closing quote")
    message = unescape(match.group(1))
    if not message:
        raise ProtocolError("the message is empty")
    return message


def _quote(text: str) -> str:
    return '"' + escape(text, quoted=True) + '"'


def format_command(command: Command | Login) -> bytes:
    """Encode a command as one wire line, ending in ``\\n``.

    Messages are always quoted and escaped, so any text, control characters
    and all, survives the trip and ``parse_command`` gives it back unchanged.
    """
    match command:
        case Login(name):
            line = validate_username(name)
        case Chat(to, text):
            validate_username(to)
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


def _check_message(text: str) -> None:
    if not text:
        raise ProtocolError("the message is empty")
    # Surrogates cannot be encoded; catch them here rather than as a UnicodeError.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("the message is not valid Unicode") from None


__all__ = [
    "Login", "Chat", "Broadcast", "Users", "Help", "Bye", "Command",
    "COMMAND_NAMES", "parse_login", "parse_command", "format_command",
]
