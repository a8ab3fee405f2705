"""Client commands: what a client sends, as values, declared once in one table.

The first line of a connection is the username (:class:`Login`).  Every
later line is one command: its word, then its arguments, as its row of
:data:`COMMANDS` defines them.  The server's ``help`` line lists every row's
usage: ``chat <user> "<message>"``, ``broadcast "<message>"``, ``users`` and
the rest.

A message is written in quotes, with escapes, or bare: the rest of the line.
A password is written like a message: in quotes with escapes, or bare (the
rest of the line for ``register``, one word without spaces for each of
``password``'s two).  The line a client sends after ``<Password required for
NAME.>`` is a password in the same form
(:func:`~protocol.arguments.parse_password`), so a password typed the same
way works in both places.

Command words are case-insensitive and words are separated by spaces only: a
TAB is an ordinary character, so ``chat<TAB>Bob hi`` is not a command and
``chat Bob<TAB>hi`` names no valid recipient.  Inside quotes ``\\"`` and
``\\\\`` (and ``\\xHH``/``\\uHHHH``, see :mod:`protocol.escaping`) are escapes; a
bare message is taken exactly as typed, TABs included.

The parsers raise :class:`RemoteProtocolError`, the formatter
:class:`LocalProtocolError`.

Adding a command
----------------
Everything the protocol knows about a command is its row in :data:`COMMANDS`;
:func:`parse_command`, :func:`format_command`, :data:`COMMAND_NAMES` (which
the client completes), the server's help line (``HelpText``) and the tests'
round trips are all derived from the table.  To add, say, ``kick``:

1. Its value: a frozen, slotted dataclass deriving from :class:`Command`,
   each field annotated with an argument kind from :mod:`protocol.arguments`
   (``name: Username``), so that the round-trip property can make values for
   it.  A new kind of argument is an :class:`~protocol.arguments.Argument`
   member and one strategy in ``tests/strategies.py``.
2. If it takes arguments, two functions beside the others below:
   ``_parse_kick(arguments)`` gets what follows the command word (leading
   spaces dropped) and returns the value, None when the arguments do not
   have the command's shape (the sender is then shown its usage), or raises
   :class:`RemoteProtocolError` with a reason; ``_format_kick(command)``
   writes the arguments back so that the parser returns an equal value, and
   raises :class:`LocalProtocolError` for a value the wire cannot carry.
   Build both from the readers and checks in :mod:`protocol.arguments`.
3. One row: ``CommandSpec("kick", Kick, "<user> [<reason>]", _parse_kick,
   _format_kick)``.  A command without arguments is just
   ``CommandSpec("bans", Bans)``.  The row's position is its place in the
   help line.

Then the server handles the new value (``reactor/chat.py``) and, when it
answers with a new line, that line is an event in :mod:`protocol.events`.
The rest of the package imports the new class from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from protocol.arguments import (
    EVERYONE,
    Command,
    Conversation,
    Message,
    MessageId,
    NewPassword,
    PageSize,
    Password,
    Username,
    check_conversation,
    check_message,
    check_message_id,
    check_new_password,
    check_page_size,
    checked_name,
    existing_password,
    format_password,
    new_password,
    quote,
    read_message_id,
    read_page_size,
    read_text,
    read_word,
)
from protocol.errors import RemoteProtocolError
from protocol.moderation import (
    Ban,
    Bans,
    Kick,
    Mute,
    Unban,
    Unmute,
    format_ban,
    format_kick,
    format_mute,
    format_unban,
    format_unmute,
    parse_ban,
    parse_kick,
    parse_mute,
    parse_unban,
    parse_unmute,
)
from protocol.usernames import VALID_NAMES, is_valid_username, username_key, validate_username


@dataclass(frozen=True, slots=True)
class Login:
    """The first line of a connection: the username.  Not a command word."""

    name: Username


@dataclass(frozen=True, slots=True)
class Chat(Command):
    """A direct message to one user."""

    to: Username
    text: Message


@dataclass(frozen=True, slots=True)
class Broadcast(Command):
    """A message to everybody else online."""

    text: Message


@dataclass(frozen=True, slots=True)
class Users(Command):
    """Who is online."""


@dataclass(frozen=True, slots=True)
class Help(Command):
    """The server's one-line summary of the commands."""


@dataclass(frozen=True, slots=True)
class Bye(Command):
    """Log out: the server says the sender is offline and closes the connection."""


@dataclass(frozen=True, slots=True)
class Register(Command):
    """Register the name the sender is logged in as, with this password."""

    password: NewPassword = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChangePassword(Command):
    """Change the password of the name the sender is logged in as."""

    old: Password = field(repr=False)
    new: NewPassword = field(repr=False)


@dataclass(frozen=True, slots=True)
class History(Command):
    """The latest messages of one conversation: with a user, or ``everyone`` (the broadcasts).

    ``before`` pages backwards: only messages older than that id.  ``count``
    asks for at most that many (the server's page size when None).
    """

    peer: Conversation
    before: MessageId | None = None
    count: PageSize | None = None


_TAB_AS_SEPARATOR = "a tab does not separate words; use a space"


# -- each command's arguments: read, and written back -------------------------


def _parse_chat(arguments: str) -> Chat | None:
    recipient, _, message = arguments.partition(" ")
    if "\t" in recipient:
        raise RemoteProtocolError(_TAB_AS_SEPARATOR)
    if not recipient or not message.strip(" "):
        return None
    if recipient not in VALID_NAMES and not is_valid_username(recipient):
        raise RemoteProtocolError("the recipient is not a valid username")
    return Chat(recipient, read_text(message.lstrip(" "), "message"))


def _format_chat(command: Chat) -> str:
    checked_name(command.to)
    check_message(command.text)
    return f"{command.to} {quote(command.text)}"


def _parse_broadcast(arguments: str) -> Broadcast | None:
    return Broadcast(read_text(arguments, "message")) if arguments else None


def _format_broadcast(command: Broadcast) -> str:
    check_message(command.text)
    return quote(command.text)


def _parse_register(arguments: str) -> Register | None:
    if not arguments:
        return None
    return Register(new_password(read_text(arguments, "password")))


def _format_register(command: Register) -> str:
    check_new_password(command.password)
    return quote(command.password)


def _parse_change_password(arguments: str) -> ChangePassword | None:
    old, after = read_word(arguments)
    new, after = read_word(after)
    if old is None or new is None or after:
        return None
    return ChangePassword(existing_password(old), new_password(new))


def _format_change_password(command: ChangePassword) -> str:
    format_password(command.old)  # the same checks as a password line
    check_new_password(command.new)
    return f"{quote(command.old)} {quote(command.new)}"


def _parse_history(arguments: str) -> History | None:
    words = [word for word in arguments.split(" ") if word]
    if not words:
        return None
    peer, *rest = words
    if "\t" in peer:
        raise RemoteProtocolError(_TAB_AS_SEPARATOR)
    if username_key(peer) == EVERYONE:
        peer = EVERYONE
    elif not is_valid_username(peer):
        raise RemoteProtocolError("history is of a conversation: a username, or everyone")
    before = None
    if rest and rest[0].lower() == "before":
        if len(rest) < 2:
            return None
        before = read_message_id(rest[1])
        rest = rest[2:]
    if len(rest) > 1:
        return None
    return History(peer, before, read_page_size(rest[0]) if rest else None)


def _format_history(command: History) -> str:
    line = check_conversation(command.peer)
    if command.before is not None:
        line += f" before {check_message_id(command.before)}"
    if command.count is not None:
        line += f" {check_page_size(command.count)}"
    return line


# -- the table ------------------------------------------------------------------

C = TypeVar("C", bound=Command)


@dataclass(frozen=True, slots=True)
class CommandSpec(Generic[C]):
    """One command: its word, its value, and how its arguments are read and written.

    A command without arguments leaves ``arguments``, ``parse`` and
    ``format`` out; anything after its word is then refused.
    """

    name: str  # the command word, lower case
    kind: type[C]
    arguments: str = ""  # their shape, for the help line and the usage error
    parse: Callable[[str], C | None] | None = None
    format: Callable[[C], str] | None = None

    def __post_init__(self) -> None:
        if (self.parse is None) != (self.format is None) or self.name != self.name.lower():
            raise ValueError(f"malformed command table entry: {self.name}")

    @property
    def usage(self) -> str:
        """How to write the command, as the help line and a usage error show it."""
        return f"{self.name} {self.arguments}" if self.arguments else self.name


COMMANDS: tuple[CommandSpec[Any], ...] = (
    CommandSpec("chat", Chat, '<user> "<message>"', _parse_chat, _format_chat),
    CommandSpec("broadcast", Broadcast, '"<message>"', _parse_broadcast, _format_broadcast),
    CommandSpec("users", Users),
    CommandSpec("help", Help),
    CommandSpec("bye", Bye),
    CommandSpec("register", Register, '"<password>"', _parse_register, _format_register),
    CommandSpec(
        "password", ChangePassword, '"<old>" "<new>"', _parse_change_password,
        _format_change_password,
    ),
    CommandSpec(
        "history", History, "<user>|everyone [before <id>] [<count>]", _parse_history,
        _format_history,
    ),
    # The operators' (protocol.moderation); anyone else is refused by the server.
    CommandSpec("kick", Kick, '<user> ["<reason>"]', parse_kick, format_kick),
    CommandSpec("ban", Ban, '<user>|<address> [<duration>] ["<reason>"]', parse_ban, format_ban),
    CommandSpec("unban", Unban, "<user>|<address>", parse_unban, format_unban),
    CommandSpec("mute", Mute, "<user> [<duration>]", parse_mute, format_mute),
    CommandSpec("unmute", Unmute, "<user>", parse_unmute, format_unmute),
    CommandSpec("bans", Bans),
)

COMMAND_NAMES = tuple(spec.name for spec in COMMANDS)
_BY_NAME: dict[str, CommandSpec[Any]] = {spec.name: spec for spec in COMMANDS}
_BY_KIND: dict[type, CommandSpec[Any]] = {spec.kind: spec for spec in COMMANDS}
if len(_BY_NAME) != len(COMMANDS) or len(_BY_KIND) != len(COMMANDS):
    raise ValueError("a command word or class appears twice in COMMANDS")


# -- parsing and formatting, derived from the table -----------------------------

# The hot line in its common form: ``chat``, one space, a name already found
# valid, one space, one quoted message with nothing escaped, nothing after it.
# For such a line the general parser returns exactly Chat(name, message),
# after a table look-up and a dozen string operations; this takes a few.
_new_chat = cast(Callable[[type[Chat]], Chat], object.__new__)
_set_to = Chat.__dict__["to"].__set__
_set_text = Chat.__dict__["text"].__set__


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
                command = _new_chat(Chat)
                _set_to(command, to)
                _set_text(command, text)
                return command
    stripped = line.strip(" ")
    if not stripped:
        raise RemoteProtocolError("empty command")
    word, _, rest = stripped.partition(" ")
    word = word.lower()
    spec = _BY_NAME.get(word)
    if spec is None:
        if "\t" in word and word.partition("\t")[0] in _BY_NAME:
            raise RemoteProtocolError(_TAB_AS_SEPARATOR)
        raise RemoteProtocolError("unknown command")
    rest = rest.lstrip(" ")
    parse = spec.parse
    if parse is None:
        if rest:
            raise RemoteProtocolError(f"{word} takes no arguments")
        return spec.kind()
    parsed = parse(rest)
    if parsed is None:
        raise RemoteProtocolError(f"usage is {spec.usage}")
    return parsed


def format_command(command: Command | Login) -> bytes:
    """Encode a command as one wire line, ending in ``\\n``.

    Messages are always quoted and escaped, so any text, control characters
    and all, survives the trip and ``parse_command`` gives it back unchanged.
    Raises :class:`LocalProtocolError` for an invalid username or message.
    """
    spec = _BY_KIND.get(type(command))
    if spec is not None:
        line = spec.name if spec.format is None else f"{spec.name} {spec.format(command)}"
    elif isinstance(command, Login):
        line = checked_name(command.name)
    else:
        raise TypeError(f"not a command: {command!r}")
    return line.encode("utf-8") + b"\n"

