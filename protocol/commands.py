"""Client commands: what a client sends, as values, with one parser and one formatter.

The grammar, one command per line::

    <username>                      the first line of a connection
    chat <user> "<message>"         direct message; a bare rest-of-line works too
    broadcast "<message>"           to everybody else online
    users | help | bye
    register "<password>"           make the name you are logged in as yours
    password "<old>" "<new>"        change its password

A password is written like a message: in quotes with escapes, or bare (the
rest of the line for ``register``, one word without spaces for each of
``password``'s two).  The line a client sends after ``<Password required for
NAME.>`` is a password in the same form (:func:`parse_password`), so a
password typed the same way works in both places.

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
from dataclasses import dataclass, field

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.escaping import QUOTED_PATTERN, escape, unescape
from protocol.usernames import (
    VALID_NAMES,
    is_valid_username,
    username_problem,
    validate_username,
)


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


@dataclass(frozen=True, slots=True)
class Register:
    """Register the name the sender is logged in as, with this password."""

    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChangePassword:
    old: str = field(repr=False)
    new: str = field(repr=False)


Command = Chat | Broadcast | Users | Help | Bye | Register | ChangePassword

COMMAND_NAMES = ("chat", "broadcast", "users", "help", "bye", "register", "password")
CHAT_USAGE = 'chat <user> "<message>"'
BROADCAST_USAGE = 'broadcast "<message>"'
REGISTER_USAGE = 'register "<password>"'
PASSWORD_USAGE = 'password "<old>" "<new>"'

# NIST SP 800-63B: at least 8 characters; the upper bound only keeps the
# work of hashing (and the line) bounded.
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256

# Matched at the start of a message; what follows the closing quote is checked.
_QUOTED = re.compile(QUOTED_PATTERN)
_TAB_AS_SEPARATOR = "a tab does not separate words; use a space"

# The hot line in its common form: ``chat``, one space, a name already found
# valid, one space, one quoted message with nothing escaped, nothing after it.
# For such a line the general parser below returns exactly Chat(name,
# message), after a dozen string operations and calls; this takes a few.
_new_command = object.__new__
_set_to = Chat.to.__set__  # type: ignore[attr-defined]
_set_text = Chat.text.__set__  # type: ignore[attr-defined]


def parse_login(line: str) -> Login:
    """Parse the first line of a connection; surrounding spaces are ignored."""
    return Login(validate_username(line.strip(" ")))


def parse_command(line: str) -> Command:
    """Parse one line of text (already decoded, terminator removed).

    Raises :class:`RemoteProtocolError` with a reason fit to show the sender,
    and nothing else, whatever ``line`` holds.
    """
    if line[:5] == "chat ":
        to, _, quoted = line[5:].partition(" ")
        if to in VALID_NAMES and len(quoted) > 2 and quoted[0] == '"' == quoted[-1]:
            text = quoted[1:-1]
            if '"' not in text and "\\" not in text:
                # Chat(to, text) without the frozen dataclass's __init__,
                # which sets each field through object.__setattr__.
                command = _new_command(Chat)
                _set_to(command, to)
                _set_text(command, text)
                return command
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
    if word == "register":
        if not rest:
            raise RemoteProtocolError(f"usage is {REGISTER_USAGE}")
        return Register(_new_password(_parse_text(rest, "password")))
    if word == "password":
        old, after = _parse_word(rest)
        new, after = _parse_word(after)
        if old is None or new is None or after:
            raise RemoteProtocolError(f"usage is {PASSWORD_USAGE}")
        if len(old) > MAX_PASSWORD_LENGTH:
            raise RemoteProtocolError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
        return ChangePassword(old, _new_password(new))
    if word in ("users", "help", "bye"):
        if rest:
            raise RemoteProtocolError(f"{word} takes no arguments")
        return {"users": Users, "help": Help, "bye": Bye}[word]()
    if "\t" in word and word.partition("\t")[0] in COMMAND_NAMES:
        raise RemoteProtocolError(_TAB_AS_SEPARATOR)
    raise RemoteProtocolError("unknown command")


def _parse_message(text: str) -> str:
    return _parse_text(text, "message")


def _parse_text(text: str, what: str) -> str:
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
    value = unescape(match.group(1))
    if not value:
        raise RemoteProtocolError(f"the {what} is empty")
    return value


def _parse_word(text: str) -> tuple[str | None, str]:
    """One argument of ``password``: quoted, or a bare word; and what follows it."""
    if not text:
        return None, ""
    if not text.startswith('"'):
        word, _, rest = text.partition(" ")
        return word, rest.lstrip(" ")
    match = _QUOTED.match(text)
    if match is None:
        raise RemoteProtocolError("unterminated quote")
    rest = text[match.end() :]
    if rest and not rest.startswith(" "):
        raise RemoteProtocolError("text after the closing quote")
    value = unescape(match.group(1))
    if not value:
        raise RemoteProtocolError("the password is empty")
    return value, rest.lstrip(" ")


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be a new password, or None if it can."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password has at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"a password has at most {MAX_PASSWORD_LENGTH} characters"
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return "the password is not valid Unicode"
    return None


def _new_password(password: str) -> str:
    problem = password_problem(password)
    if problem is not None:
        raise RemoteProtocolError(problem)
    return password


def parse_password(line: str) -> str:
    """Parse the line that answers ``<Password required for NAME.>``.

    In quotes with escapes, or bare: the line as typed, surrounding spaces
    dropped.  Only the form is checked (and the upper length bound): a
    password too short to have been registered is simply a wrong one.
    """
    password = _parse_text(line.lstrip(" "), "password")
    if not password:
        raise RemoteProtocolError("the password is empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise RemoteProtocolError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return password


def format_password(password: str) -> bytes:
    """The line that answers ``<Password required for NAME.>``: always quoted."""
    if not password:
        raise LocalProtocolError("the password is empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise LocalProtocolError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    try:
        return (_quote(password) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError("the password is not valid Unicode") from None


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
        case Register(password):
            _check_new_password(password)
            line = f"register {_quote(password)}"
        case ChangePassword(old, new):
            format_password(old)  # the same checks as a password line
            _check_new_password(new)
            line = f"password {_quote(old)} {_quote(new)}"
        case _:
            raise TypeError(f"not a command: {command!r}")
    return line.encode("utf-8") + b"\n"


def _checked_name(name: str) -> str:
    problem = username_problem(name)
    if problem is not None:
        raise LocalProtocolError(problem)
    return name


def _check_new_password(password: str) -> None:
    problem = password_problem(password)
    if problem is not None:
        raise LocalProtocolError(problem)


def _check_message(text: str) -> None:
    if not text:
        raise LocalProtocolError("the message is empty")
    # Surrogates cannot be encoded; catch them here rather than as a UnicodeError.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError("the message is not valid Unicode") from None


__all__ = [
    "Login", "Chat", "Broadcast", "Users", "Help", "Bye", "Register", "ChangePassword",
    "Command", "COMMAND_NAMES", "MIN_PASSWORD_LENGTH", "MAX_PASSWORD_LENGTH",
    "parse_login", "parse_command", "format_command", "parse_password", "format_password",
    "password_problem",
]
