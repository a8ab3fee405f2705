"""Server events: every line the server sends, as values, with one formatter and one parser.

Each event is one line of the form ``<...>\\n`` (the sender's echoes
``<To Bob> text`` carry their text after the bracket).  Text that came from a
user is always escaped (see :mod:`protocol.escaping`), so an event line never
holds a raw control, format or invisible character and no message can pose as
another event.  Names are checked on the way out and on the way in, and
reasons are server-written printable ASCII.

``format_event`` raises :class:`LocalProtocolError` for a value it cannot
write; ``parse_event`` raises :class:`RemoteProtocolError` for a line that is
not an event.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.arguments import EVERYONE, MESSAGE_ID_PATTERN, check_conversation, check_message_id
from protocol.commands import COMMANDS
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.escaping import _ASCII_NEEDS_ESCAPE, QUOTED_PATTERN, escape, find_unsafe, unescape
from protocol.moderation import DURATION_PATTERN as _DURATION
from protocol.moderation import duration_problem
from protocol.servertime import SERVER_TIME_PATTERN, check_server_time, parse_server_time
from protocol.usernames import (
    RESERVED_USERNAMES,
    USERNAME_PATTERN,
    VALID_NAMES,
    is_valid_username,
    username_problem,
)


@dataclass(frozen=True, slots=True)
class UserOnline:
    name: str


@dataclass(frozen=True, slots=True)
class UserOffline:
    """A user went offline; also the reply to a message for an offline user."""

    name: str


@dataclass(frozen=True, slots=True)
class UserUnknown:
    """Reply to a message for a name never seen since the server started."""

    name: str


@dataclass(frozen=True, slots=True)
class MessageSent:
    """The sender's echo of a direct message."""

    to: str
    text: str


@dataclass(frozen=True, slots=True)
class MessageFrom:
    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class NotDelivered:
    """Sent instead of the echo when a direct message could not be delivered.

    For instance the recipient stopped reading and its connection could take
    no more, or the chat service was unavailable.  ``reason`` is written by
    the server (printable ASCII, no final period), like ``InvalidInput``'s.
    """

    to: str
    reason: str


@dataclass(frozen=True, slots=True)
class BroadcastSent:
    """The sender's echo of a broadcast."""

    text: str


@dataclass(frozen=True, slots=True)
class BroadcastFrom:
    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class OnlineUsers:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HelpText:
    pass


@dataclass(frozen=True, slots=True)
class InvalidInput:
    reason: str


@dataclass(frozen=True, slots=True)
class InvalidUsername:
    reason: str


@dataclass(frozen=True, slots=True)
class UsernameTaken:
    name: str


@dataclass(frozen=True, slots=True)
class ServerFull:
    pass


@dataclass(frozen=True, slots=True)
class TooManyFromAddress:
    pass


@dataclass(frozen=True, slots=True)
class LoginTimedOut:
    pass


@dataclass(frozen=True, slots=True)
class ShuttingDown:
    pass


@dataclass(frozen=True, slots=True)
class PasswordRequired:
    """The name is registered: the next line must be its password."""

    name: str


@dataclass(frozen=True, slots=True)
class WrongPassword:
    """A password for ``name`` was wrong (at login, or the old one of ``password``)."""

    name: str


@dataclass(frozen=True, slots=True)
class TooManyTries:
    """Too many wrong passwords on this connection: it is closed after this line."""


@dataclass(frozen=True, slots=True)
class ServerBusy:
    """A password could not be hashed now: the server's queue of hashes is
    full.  Nothing happened (no try is counted); the line may be sent again."""


@dataclass(frozen=True, slots=True)
class Registered:
    """The reply to ``register``: the name is now the sender's."""

    name: str


@dataclass(frozen=True, slots=True)
class PasswordChanged:
    """The reply to ``password``."""

    name: str


@dataclass(frozen=True, slots=True)
class BroadcastNotSent:
    """Sent instead of the echo when a broadcast reached nobody (for instance,
    the chat service that links the servers was unavailable)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ServiceUnavailable:
    """A login that cannot be decided now: the chat service is out of reach.
    The connection stays open and may try again."""

    reason: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The server closes this connection for a reason of its own (for
    instance, it lost its place in the chat); the client may reconnect."""

    reason: str


# -- stored messages: offline delivery and history ----------------------------
# Each names its kind first ("Message to X stored", "Waiting message",
# "History #id"), and its text is escaped and quoted as a live message's, so
# no stored line reads as a live event and no text can end one early.


@dataclass(frozen=True, slots=True)
class MessageStored:
    """Instead of the echo: ``to``, a registered name, is offline; the message waits for them."""

    to: str


@dataclass(frozen=True, slots=True)
class WaitingMessage:
    """A direct message that waited while its recipient was offline, delivered at login.

    ``time`` is when it was sent (server time, :mod:`protocol.servertime`).
    """

    sender: str
    time: str
    text: str


@dataclass(frozen=True, slots=True)
class WaitingDelivered:
    """To the sender: the message it sent to ``to`` at ``time``, stored, was delivered at login."""

    to: str
    time: str


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """One stored message, as a reply to ``history``.

    ``to`` is the recipient, or ``everyone`` for a broadcast; the reader sent
    it when ``sender`` is the reader, received it otherwise.  ``id`` pages
    further back (``history PEER before ID``).
    """

    id: str
    time: str
    sender: str
    to: str
    text: str


@dataclass(frozen=True, slots=True)
class HistoryEnd:
    """Closes a ``history`` reply: ``count`` lines of conversation ``peer`` were sent."""

    peer: str
    count: int


@dataclass(frozen=True, slots=True)
class Kicked:
    """An operator disconnects this user (the connection closes after it)."""

    by: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Banned:
    """This user or address is banned: disconnected now, or refused at login.
    ``duration`` is how long it still lasts (None: until unbanned)."""

    by: str
    duration: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Muted:
    """An operator mutes this user: their messages are refused meanwhile."""

    by: str
    duration: str | None = None


@dataclass(frozen=True, slots=True)
class Unmuted:
    by: str


@dataclass(frozen=True, slots=True)
class YouAreMuted:
    """The answer to a message from a muted user: it went to nobody."""


@dataclass(frozen=True, slots=True)
class Moderation:
    """What an operator's command did, or the list of bans (text of the server's own)."""

    text: str


Event = (
    UserOnline | UserOffline | UserUnknown | MessageSent | MessageFrom | NotDelivered
    | BroadcastSent | BroadcastFrom | OnlineUsers | HelpText | InvalidInput | InvalidUsername
    | UsernameTaken | ServerFull | TooManyFromAddress | LoginTimedOut | ShuttingDown
    | PasswordRequired | WrongPassword | TooManyTries | Registered | PasswordChanged
    | BroadcastNotSent | ServiceUnavailable | Disconnected | ServerBusy
    | MessageStored | WaitingMessage | WaitingDelivered | HistoryLine | HistoryEnd
    | Kicked | Banned | Muted | Unmuted | YouAreMuted | Moderation
)

# Every command's usage, in the order of the command table.
HELP_LINE = (
    f"<Commands: {' | '.join(spec.usage for spec in COMMANDS)}."
    ' Inside quotes write \\" for a quote and \\\\ for a backslash.>'
)
_FIXED_LINES: dict[type, str] = {
    HelpText: HELP_LINE,
    ServerFull: "<Server is full.>",
    TooManyFromAddress: "<Too many connections from your address.>",
    LoginTimedOut: "<Login timed out.>",
    ShuttingDown: "<Server is shutting down.>",
    TooManyTries: "<Too many wrong passwords.>",
    ServerBusy: "<Server busy: try again in a moment.>",
    YouAreMuted: "<You are muted: your message was not sent.>",
}
_FIXED_EVENTS: dict[str, Event] = {line: kind() for kind, line in _FIXED_LINES.items()}
_INPUT_SUFFIX = '. Type "help" for commands.>'
# Server-written reasons: plain printable ASCII.
_REASON = re.compile(r"[ -~]+")


def format_event(event: Event) -> bytes:
    """Encode an event as one wire line ending in ``\\n``.

    A fan-out calls this once and hands the same bytes to every recipient.
    Raises :class:`LocalProtocolError` for an invalid name or reason, or for
    text that is not Unicode (a lone surrogate).
    """
    fast = _FAST.get(type(event))
    if fast is not None:
        return fast(event)
    return _encode(_format(event) + "\n")


def _encode(line: str) -> bytes:
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError("the text is not valid Unicode") from None


# The events of every message, formatted straight from their fields: the
# server's hot paths call these rather than make an event to format.  Each
# gives exactly what format_event gives for the event.

# The last text found to need no escaping, quoted or bare (ASCII with no
# control, backslash or quote): a direct message formats its text twice, the
# delivery and the echo.  Held, so that ``is`` can never match a new string
# that took a freed one's place.
_clean = ""

def format_message_from(sender: str, text: str) -> bytes:
    """``format_event(MessageFrom(sender, text))``."""
    if sender not in VALID_NAMES:
        _checked_name(sender)
    global _clean
    if text is _clean or (text.isascii() and _ASCII_NEEDS_ESCAPE.search(text) is None):
        _clean = text
        # escape() and _encode() written out for the common case: ASCII
        # with nothing to escape is itself, and ASCII always encodes.
        return f'<Message from {sender}: "{text}">\n'.encode()
    return _encode(f'<Message from {sender}: "{escape(text)}">\n')


def format_message_sent(to: str, text: str) -> bytes:
    """``format_event(MessageSent(to, text))``."""
    if to not in VALID_NAMES:
        _checked_name(to)
    global _clean
    if text is _clean or (text.isascii() and _ASCII_NEEDS_ESCAPE.search(text) is None):
        _clean = text
        return f"<To {to}> {text}\n".encode()
    return _encode(f"<To {to}> {escape(text, quoted=False)}\n")


def format_broadcast_from(sender: str, text: str) -> bytes:
    """``format_event(BroadcastFrom(sender, text))``."""
    if sender not in VALID_NAMES:
        _checked_name(sender)
    global _clean
    if text is _clean or (text.isascii() and _ASCII_NEEDS_ESCAPE.search(text) is None):
        _clean = text
        return f'<Broadcast from {sender}: "{text}">\n'.encode()
    return _encode(f'<Broadcast from {sender}: "{escape(text)}">\n')


def format_broadcast_sent(text: str) -> bytes:
    """``format_event(BroadcastSent(text))``."""
    global _clean
    if text is _clean or (text.isascii() and _ASCII_NEEDS_ESCAPE.search(text) is None):
        _clean = text
        return f"<To everyone> {text}\n".encode()
    return _encode(f"<To everyone> {escape(text, quoted=False)}\n")


_FAST: dict[type, Callable[[Any], bytes]] = {
    MessageFrom: lambda e: format_message_from(e.sender, e.text),
    MessageSent: lambda e: format_message_sent(e.to, e.text),
    BroadcastFrom: lambda e: format_broadcast_from(e.sender, e.text),
    BroadcastSent: lambda e: format_broadcast_sent(e.text),
}


def _format(event: Event) -> str:
    match event:
        case UserOnline(name):
            return f"<User {_checked_name(name)} is online.>"
        case UserOffline(name):
            return f"<User {_checked_name(name)} is offline.>"
        case UserUnknown(name):
            return f"<User {_checked_name(name)} does not exist.>"
        case MessageSent(to, text):
            return f"<To {_checked_name(to)}> {escape(text, quoted=False)}"
        case MessageFrom(sender, text):
            return f'<Message from {_checked_name(sender)}: "{escape(text)}">'
        case NotDelivered(to, reason):
            return f"<Message to {_checked_name(to)} not delivered: {_checked_reason(reason)}.>"
        case BroadcastSent(text):
            return f"<To everyone> {escape(text, quoted=False)}"
        case BroadcastFrom(sender, text):
            return f'<Broadcast from {_checked_name(sender)}: "{escape(text)}">'
        case OnlineUsers(names):
            return f"<Online users: {_checked_names(names)}>"
        case InvalidInput(reason):
            return f"<Invalid input: {_checked_reason(reason)}{_INPUT_SUFFIX}"
        case InvalidUsername(reason):
            return f"<Invalid username: {_checked_reason(reason)}.>"
        case UsernameTaken(name):
            return f"<Username {_checked_name(name)} is already taken.>"
        case PasswordRequired(name):
            return f"<Password required for {_checked_name(name)}.>"
        case WrongPassword(name):
            return f"<Wrong password for {_checked_name(name)}.>"
        case Registered(name):
            return f"<Username {_checked_name(name)} is now registered.>"
        case PasswordChanged(name):
            return f"<Password changed for {_checked_name(name)}.>"
        case BroadcastNotSent(reason):
            return f"<Broadcast not sent: {_checked_reason(reason)}.>"
        case ServiceUnavailable(reason):
            return f"<Chat service unavailable: {_checked_reason(reason)}.>"
        case Disconnected(reason):
            return f"<Disconnected: {_checked_reason(reason)}.>"
        case MessageStored(to):
            return f"<Message to {_checked_name(to)} stored until they log in.>"
        case WaitingMessage(sender, time, text):
            return (
                f"<Waiting message from {_checked_name(sender)}, sent {check_server_time(time)}:"
                f' "{escape(text)}">'
            )
        case WaitingDelivered(to, time):
            return (
                f"<Waiting message to {_checked_name(to)}, sent {check_server_time(time)},"
                " delivered.>"
            )
        case HistoryLine(message_id, time, sender, to, text):
            return (
                f"<History #{check_message_id(message_id)} {check_server_time(time)}"
                f' {_checked_name(sender)} to {check_conversation(to)}: "{escape(text)}">'
            )
        case HistoryEnd(peer, count):
            if type(count) is not int or not 0 <= count < 10**9:
                raise LocalProtocolError(f"not a count: {count!r}")
            return f"<End of history with {check_conversation(peer)}: {count} shown.>"
        case Kicked(by, reason):
            return f"<Kicked by {_checked_name(by)}{_why(reason)}>"
        case Banned(by, duration, reason):
            return f"<Banned by {_checked_name(by)}{_for(duration)}{_why(reason)}>"
        case Muted(by, duration):
            return f"<Muted by {_checked_name(by)}{_for(duration)}.>"
        case Unmuted(by):
            return f"<Unmuted by {_checked_name(by)}.>"
        case Moderation(text):
            return f'<Moderation: "{escape(text)}">'
        case _:
            line = _FIXED_LINES.get(type(event))
            if line is None:
                raise TypeError(f"not an event: {event!r}")
            return line


def _why(reason: str | None) -> str:
    # An operator's reason is user text: quoted and escaped like a message.
    if reason is None:
        return "."
    if not reason:
        raise LocalProtocolError("the reason is empty")
    return f': "{escape(reason)}"'


def _for(duration: str | None) -> str:
    if duration is None:
        return ""
    problem = duration_problem(duration)
    if problem is not None:
        raise LocalProtocolError(problem)
    return f" for {duration}"


def _checked_name(name: str) -> str:
    # A name is written raw into the line, so it must be one the parser reads
    # back as that name: never "everyone" ("<To everyone>" is a broadcast).
    if not is_valid_username(name):
        raise LocalProtocolError(f"unfit username: {username_problem(name)}")
    return name


def _checked_names(names: tuple[str, ...]) -> str:
    # One regex pass over the joined list rather than a check per name: the
    # list of a full server holds thousands.  A name with ", " in it would
    # change the count, so the count is compared too.
    listed = ", ".join(names)
    if (
        _NAME_LIST.fullmatch(listed)
        and listed.count(", ") == max(len(names) - 1, 0)
        and not _may_hold_reserved(listed)
    ):
        return listed
    for name in names:  # to say which, or to find the list fine after all
        _checked_name(name)
    return listed


def _may_hold_reserved(listed: str) -> bool:
    lowered = listed.lower()
    return any(reserved in lowered for reserved in RESERVED_USERNAMES)


def _checked_reason(reason: str) -> str:
    # Reasons are written by the server, never copied from input; this check
    # keeps it that way (a control character or a trailing period would break
    # the line or its round trip through the client's parser).
    if not _REASON.fullmatch(reason) or reason.endswith("."):
        raise LocalProtocolError(f"unfit reason text: {reason!r}")
    return reason


_NAME = f"({USERNAME_PATTERN})"
# Unambiguous (a name cannot hold ", "), so a near miss fails in linear time.
_NAME_LIST_PATTERN = f"(?:{USERNAME_PATTERN}(?:, {USERNAME_PATTERN})*)?"
_NAME_LIST = re.compile(_NAME_LIST_PATTERN)

_PATTERNS: list[tuple[re.Pattern[str], Callable[..., Event]]] = [
    (re.compile(rf"<User {_NAME} is online\.>"), UserOnline),
    (re.compile(rf"<User {_NAME} is offline\.>"), UserOffline),
    (re.compile(rf"<User {_NAME} does not exist\.>"), UserUnknown),
    (re.compile(r"<To everyone> (.*)", re.DOTALL), BroadcastSent),
    (re.compile(rf"<To {_NAME}> (.*)", re.DOTALL), MessageSent),
    (re.compile(rf"<Message from {_NAME}: {QUOTED_PATTERN}>"), MessageFrom),
    (re.compile(rf"<Message to {_NAME} not delivered: (.+)\.>"), NotDelivered),
    (re.compile(rf"<Broadcast from {_NAME}: {QUOTED_PATTERN}>"), BroadcastFrom),
    (re.compile(rf"<Online users: ({_NAME_LIST_PATTERN})>"), OnlineUsers),
    (re.compile(r"<Invalid input: (.+)\. Type \"help\" for commands\.>"), InvalidInput),
    (re.compile(r"<Invalid username: (.+)\.>"), InvalidUsername),
    (re.compile(rf"<Username {_NAME} is already taken\.>"), UsernameTaken),
    (re.compile(rf"<Password required for {_NAME}\.>"), PasswordRequired),
    (re.compile(rf"<Wrong password for {_NAME}\.>"), WrongPassword),
    (re.compile(rf"<Username {_NAME} is now registered\.>"), Registered),
    (re.compile(rf"<Password changed for {_NAME}\.>"), PasswordChanged),
    (re.compile(r"<Broadcast not sent: (.+)\.>"), BroadcastNotSent),
    (re.compile(r"<Chat service unavailable: (.+)\.>"), ServiceUnavailable),
    (re.compile(r"<Disconnected: (.+)\.>"), Disconnected),
    (re.compile(rf"<Message to {_NAME} stored until they log in\.>"), MessageStored),
    (re.compile(rf"<Waiting message from {_NAME}, sent ({SERVER_TIME_PATTERN}): {QUOTED_PATTERN}>"),
     WaitingMessage),
    (re.compile(rf"<Waiting message to {_NAME}, sent ({SERVER_TIME_PATTERN}), delivered\.>"),
     WaitingDelivered),
    (re.compile(
        rf"<History #({MESSAGE_ID_PATTERN}) ({SERVER_TIME_PATTERN}) {_NAME} to"
        rf" ({EVERYONE}|{USERNAME_PATTERN}): {QUOTED_PATTERN}>"
    ), HistoryLine),
    (re.compile(
        rf"<End of history with ({EVERYONE}|{USERNAME_PATTERN}): (0|[1-9][0-9]{{0,8}}) shown\.>"
    ), HistoryEnd),
    (re.compile(rf"<Kicked by {_NAME}(?:\.|: {QUOTED_PATTERN})>"), Kicked),
    (re.compile(rf"<Banned by {_NAME}(?: for ({_DURATION}))?(?:\.|: {QUOTED_PATTERN})>"),
     Banned),
    (re.compile(rf"<Muted by {_NAME}(?: for ({_DURATION}))?\.>"), Muted),
    (re.compile(rf"<Unmuted by {_NAME}\.>"), Unmuted),
    (re.compile(rf"<Moderation: {QUOTED_PATTERN}>"), Moderation),
]
_TEXT_EVENTS = (MessageSent, MessageFrom, BroadcastSent, BroadcastFrom, WaitingMessage,
                HistoryLine, Kicked, Banned, Moderation)
# Events carrying a server time, at this place among their fields.
_TIMED_EVENTS = {WaitingMessage: 1, WaitingDelivered: 1, HistoryLine: 1}
# Events whose first field is a username.
_NAME_EVENTS = (
    UserOnline, UserOffline, UserUnknown, MessageSent, MessageFrom, NotDelivered, BroadcastFrom,
    UsernameTaken, PasswordRequired, WrongPassword, Registered, PasswordChanged, MessageStored,
    WaitingMessage, WaitingDelivered, Kicked, Banned, Muted, Unmuted,
)


def parse_event(line: str) -> Event:
    """Parse one server line (terminator removed) into an event.

    Raises :class:`RemoteProtocolError`, and nothing else, for a line that is
    not a well-formed event -- including one that carries raw a character the
    server always escapes (a control or format character, an overlong run of
    combining marks), or a name no user can have.
    """
    unsafe = find_unsafe(line)
    if unsafe is not None:
        raise RemoteProtocolError(
            f"event line carries a raw U+{ord(unsafe):04X}, which the server always escapes"
        )
    fixed = _FIXED_EVENTS.get(line)
    if fixed is not None:
        return fixed
    for pattern, kind in _PATTERNS:
        match = pattern.fullmatch(line)
        if match is None:
            continue
        groups = match.groups()
        if kind is OnlineUsers:
            names = tuple(groups[0].split(", ")) if groups[0] else ()
            if _may_hold_reserved(groups[0]):
                for name in names:
                    _check_received_name(name)
            return OnlineUsers(names)
        if kind in _NAME_EVENTS:
            _check_received_name(groups[0])
        elif kind is HistoryLine:
            _check_received_name(groups[2])
            if groups[3] != EVERYONE:
                _check_received_name(groups[3])
        elif kind is HistoryEnd:
            if groups[0] != EVERYONE:
                _check_received_name(groups[0])
            return HistoryEnd(groups[0], int(groups[1]))
        if kind in _TIMED_EVENTS:
            parse_server_time(groups[_TIMED_EVENTS[kind]])
        if kind in _TEXT_EVENTS:
            *head, text = groups
            groups = (*head, None if text is None else unescape(text))
        return kind(*groups)
    raise RemoteProtocolError("not a server event")


def _check_received_name(name: str) -> None:
    problem = username_problem(name)
    if problem is not None:
        raise RemoteProtocolError(f"an event names no valid user: {problem}")
