"""What a command's arguments hold, and how each is read from a line and written back.

The pieces every command's parser and formatter are made of (see
:mod:`protocol.commands`): a quoted-or-bare text, a password word, the
password rules, and the checks a formatter makes before writing a value.
Readers raise :class:`RemoteProtocolError` (the peer's mistake), checks
raise :class:`LocalProtocolError` (ours).

A command's fields are annotated with the kinds below (``to: Username``).
To the type checker they are plain ``str``; the :class:`Argument` marker
inside says which values the field may hold, so that a test can make values
for any command from its annotations alone and check that each survives a
trip over the wire.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.escaping import QUOTED_PATTERN, escape, unescape
from protocol.usernames import username_problem


class Argument(enum.Enum):
    """The values a command's field may hold (the value is a description)."""

    USERNAME = "a valid username"
    MESSAGE = "any non-empty text"
    PASSWORD = "a password as sent at login: 1 to MAX_PASSWORD_LENGTH characters"
    NEW_PASSWORD = "a password that password_problem accepts"
    CONVERSATION = "a valid username, or everyone for the broadcasts"
    MESSAGE_ID = "a message id as history lines show it"
    PAGE_SIZE = "a number of messages, 1 to MAX_HISTORY_PAGE"
    TARGET = "a valid username or an IP address (protocol.moderation)"
    DURATION = "a number and a unit, 10m (protocol.moderation)"


class Command:
    """What a logged-in client asks of the server: one row of
    :data:`protocol.commands.COMMANDS` (here, below every module that
    declares commands)."""

    __slots__ = ()


Username = Annotated[str, Argument.USERNAME]
Message = Annotated[str, Argument.MESSAGE]
Password = Annotated[str, Argument.PASSWORD]
NewPassword = Annotated[str, Argument.NEW_PASSWORD]
Conversation = Annotated[str, Argument.CONVERSATION]
MessageId = Annotated[str, Argument.MESSAGE_ID]
PageSize = Annotated[int, Argument.PAGE_SIZE]

# The conversation of the broadcasts, as ``history`` names it: a name no user can have.
EVERYONE = "everyone"
# Most messages one history request returns (IRCv3 servers cap at 50 to 1,000).
MAX_HISTORY_PAGE = 100
# A message id: digits, or two runs of digits (a Redis stream entry id, time-sequence).
MESSAGE_ID_PATTERN = r"[0-9]{1,20}(?:-[0-9]{1,20})?"
_MESSAGE_ID = re.compile(MESSAGE_ID_PATTERN)

# NIST SP 800-63B: at least 8 characters; the upper bound only keeps the
# work of hashing (and the line) bounded.
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256

# Matched at the start of a text; what follows the closing quote is checked.
_QUOTED = re.compile(QUOTED_PATTERN)


# -- reading (the peer's mistakes: RemoteProtocolError) -----------------------


def read_text(text: str, what: str) -> str:
    """A message-like argument that runs to the end of the line.

    Quoted, with escapes, and nothing but spaces after the closing quote; or
    bare: the rest of the line exactly as typed, trailing spaces dropped.
    ``what`` names the value in the error for an empty quoted one.
    """
    if text[:1] != '"':
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


def read_word(text: str) -> tuple[str | None, str]:
    """One password argument, quoted or a bare word, and what follows it.

    None when ``text`` is empty: the argument is missing.
    """
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


def read_message_id(word: str) -> str:
    """A message id (``before``'s argument), as a history line showed it."""
    if _MESSAGE_ID.fullmatch(word) is None:
        raise RemoteProtocolError("a message id is written as history lines show it, like 42")
    return word


def read_page_size(word: str) -> int:
    """How many messages a history page holds: 1 to :data:`MAX_HISTORY_PAGE`."""
    if not (len(word) <= 3 and word.isascii() and word.isdigit()) or not (
        1 <= int(word) <= MAX_HISTORY_PAGE
    ):
        raise RemoteProtocolError(f"a history page holds 1 to {MAX_HISTORY_PAGE} messages")
    return int(word)


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


def new_password(password: str) -> str:
    """``password`` if it can be a new password, else the peer is told why."""
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
    password = read_text(line.lstrip(" "), "password")
    if not password:
        raise RemoteProtocolError("the password is empty")
    return _not_too_long(password)


def _not_too_long(password: str) -> str:
    if len(password) > MAX_PASSWORD_LENGTH:
        raise RemoteProtocolError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return password


def existing_password(password: str) -> str:
    """A password that was set before (``password``'s old one): only its length is checked."""
    return _not_too_long(password)


# -- writing (our own mistakes: LocalProtocolError) ---------------------------


def quote(text: str) -> str:
    """``text`` in quotes, escaped so that :func:`read_text` gives it back."""
    return '"' + escape(text, quoted=True) + '"'


def format_password(password: str) -> bytes:
    """The line that answers ``<Password required for NAME.>``: always quoted."""
    if not password:
        raise LocalProtocolError("the password is empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise LocalProtocolError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    try:
        return (quote(password) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError("the password is not valid Unicode") from None


def checked_name(name: str) -> str:
    problem = username_problem(name)
    if problem is not None:
        raise LocalProtocolError(problem)
    return name


def check_conversation(name: str) -> str:
    return name if name == EVERYONE else checked_name(name)


def check_message_id(message_id: str) -> str:
    if _MESSAGE_ID.fullmatch(message_id) is None:
        raise LocalProtocolError(f"not a message id: {message_id!r}")
    return message_id


def check_page_size(count: int) -> int:
    if type(count) is not int or not 1 <= count <= MAX_HISTORY_PAGE:
        raise LocalProtocolError(f"a history page holds 1 to {MAX_HISTORY_PAGE} messages")
    return count


def check_new_password(password: str) -> None:
    problem = password_problem(password)
    if problem is not None:
        raise LocalProtocolError(problem)


def check_message(text: str) -> None:
    if not text:
        raise LocalProtocolError("the message is empty")
    # Surrogates cannot be encoded; catch them here rather than as a UnicodeError.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError("the message is not valid Unicode") from None
