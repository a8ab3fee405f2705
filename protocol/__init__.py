"""The reactor-chat wire protocol, sans I/O.

Bytes and text only: no sockets, threads or clocks, so that the server, the
client and the benchmark share one definition of the wire and every rule is
testable with plain values.  See ``commands`` (client to server, one table
entry per command, its arguments in ``arguments``), ``events``
(server to client), ``escaping`` (how text is kept visible and reversible),
``framing`` (the receive buffer), ``usernames`` and ``errors`` (``ProtocolError``
and, as in h11, whose fault it was: ``RemoteProtocolError`` from the parsers,
``LocalProtocolError`` from the formatters).
"""

from protocol.arguments import (
    EVERYONE,
    MAX_HISTORY_PAGE,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    format_password,
    parse_password,
    password_problem,
)
from protocol.commands import (
    COMMAND_NAMES,
    COMMANDS,
    Broadcast,
    Bye,
    ChangePassword,
    Chat,
    Command,
    CommandSpec,
    Help,
    History,
    Login,
    Register,
    Users,
    format_command,
    parse_command,
    parse_login,
)
from protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.escaping import MAX_COMBINING_MARKS, escape, unescape
from protocol.events import (
    Banned,
    BroadcastFrom,
    BroadcastNotSent,
    BroadcastSent,
    Disconnected,
    Event,
    HelpText,
    HistoryEnd,
    HistoryLine,
    InvalidInput,
    InvalidUsername,
    Kicked,
    LoginTimedOut,
    MessageFrom,
    MessageSent,
    MessageStored,
    Moderation,
    Muted,
    NotDelivered,
    OnlineUsers,
    PasswordChanged,
    PasswordRequired,
    Registered,
    ServerBusy,
    ServerFull,
    ServiceUnavailable,
    ShuttingDown,
    TooManyFromAddress,
    TooManyTries,
    Unmuted,
    UsernameTaken,
    UserOffline,
    UserOnline,
    UserUnknown,
    WaitingDelivered,
    WaitingMessage,
    WrongPassword,
    YouAreMuted,
    format_event,
    parse_event,
)
from protocol.framing import DEFAULT_MAX_LINE, LineBuffer, LineTooLong
from protocol.lines import decode_line
from protocol.moderation import (
    Ban,
    Bans,
    Kick,
    Mute,
    Unban,
    Unmute,
    canonical_address,
    duration_seconds,
    is_address,
)
from protocol.servertime import format_server_time, parse_server_time
from protocol.usernames import (
    MAX_USERNAME_LENGTH,
    USERNAME_PATTERN,
    is_valid_username,
    username_key,
    username_problem,
    validate_username,
)

__all__ = [
    "COMMANDS", "COMMAND_NAMES", "CommandSpec", "Broadcast", "Bye", "Chat", "Command", "Help",
    "Login", "Users",
    "format_command", "parse_command", "parse_login", "ProtocolError", "RemoteProtocolError",
    "LocalProtocolError", "MAX_COMBINING_MARKS", "escape", "unescape",
    "BroadcastFrom", "BroadcastSent", "Event", "HelpText", "InvalidInput", "InvalidUsername",
    "LoginTimedOut", "MessageFrom", "MessageSent", "NotDelivered", "OnlineUsers", "ServerBusy",
    "ServerFull",
    "ShuttingDown", "TooManyFromAddress", "UserOffline", "UserOnline", "UsernameTaken",
    "UserUnknown", "format_event", "parse_event", "DEFAULT_MAX_LINE", "LineBuffer",
    "LineTooLong", "decode_line", "MAX_USERNAME_LENGTH", "USERNAME_PATTERN", "is_valid_username",
    "username_key", "username_problem", "validate_username",
    "Register", "ChangePassword", "MIN_PASSWORD_LENGTH", "MAX_PASSWORD_LENGTH",
    "format_password", "parse_password", "password_problem",
    "PasswordRequired", "WrongPassword", "TooManyTries", "Registered", "PasswordChanged",
    "BroadcastNotSent", "ServiceUnavailable", "Disconnected",
    "EVERYONE", "MAX_HISTORY_PAGE", "History", "HistoryEnd", "HistoryLine", "MessageStored",
    "WaitingDelivered", "WaitingMessage", "format_server_time", "parse_server_time",
    "Kick", "Ban", "Unban", "Mute", "Unmute", "Bans", "canonical_address", "duration_seconds",
    "is_address", "Kicked", "Banned", "Muted", "Unmuted", "YouAreMuted", "Moderation",
]
