"""What the user typed, turned into an action: the wire commands plus the ones people reach for.

The original commands (``chat Bob "hi"``, ``broadcast``, ``users``, ``help``,
``bye``) work exactly as on the wire, parsed by :func:`protocol.parse_command`.
Alongside them, IRC-style commands whose text is taken literally, no quoting:

    /msg <user> <text>    a direct message
    /broadcast <text>     a message to everyone online
    /query <user>         plain text now goes to <user>; /query alone ends it
    /who                  who is online (= users)
    /history <user>|everyone [<count>]   the latest messages (= history, read by protocol/)
    /quit                 log out (= bye)
    /help                 this client's help (shown locally)

In a query, a line starting with ``//`` sends the text after the first ``/``.
Every message is checked against the server's line limit before it is sent,
so an overlong one is refused here, with how much too long it is.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from protocol import (
    COMMAND_NAMES,
    DEFAULT_MAX_LINE,
    Broadcast,
    Bye,
    Chat,
    Command,
    ProtocolError,
    Users,
    format_command,
    is_valid_username,
    parse_command,
    validate_username,
)


@dataclass(frozen=True, slots=True)
class Send:
    command: Command


@dataclass(frozen=True, slots=True)
class SetQuery:
    target: str | None


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class ShowHelp:
    pass


@dataclass(frozen=True, slots=True)
class AskPasswords:
    """``/register`` or ``/password``: the passwords are asked for with no echo."""

    change: bool  # False: register; True: change the password


@dataclass(frozen=True, slots=True)
class Reconnect:
    """``/reconnect``: come back after an operator's kick (never automatic)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Not sent; ``reason`` says why (it may quote what was typed)."""

    reason: str


Action = Send | SetQuery | Quit | ShowHelp | AskPasswords | Reconnect | Refused

SUGGESTABLE = (*COMMAND_NAMES,
               "/msg", "/broadcast", "/query", "/quit", "/who", "/history", "/help",
               "/register", "/password", "/reconnect")

HELP_TEXT = """\
Commands:
  /msg <user> <text>      send <user> a direct message (text as typed, no quotes needed)
  /query <user>           talk to <user>: plain lines go to them; /query alone ends it
  /broadcast <text>       send everyone online a message (or: broadcast <text>)
  /who  (or users)        who is online
  /history <user> [<n>]   the latest n messages with <user> (/history everyone: broadcasts);
                          add "before <id>" to page back from a line's #id
  /quit (or bye)          log out and exit; Ctrl-D on an empty line does too
  /register               make your name yours: asks for a password (no echo)
  /password               change that password (asks for the old and the new one)
  /reconnect              log in again after an operator kicked you out
  /help                   this help
The server's own forms work too: chat <user> "<message>" (inside quotes \\" and \\\\).
Keys: Tab completes commands and names, Up/Ctrl-R search history, Ctrl-C clears the line
(on an empty line it logs out). A multi-line paste is sent as one message."""


def interpret(text: str, query: str | None = None,
              max_line: int = DEFAULT_MAX_LINE) -> Action | None:
    """Turn one typed (or pasted) input into an action; None for a blank line."""
    if not text.strip(" \t\n"):
        return None
    action = _interpret(text, query)
    if isinstance(action, Send):
        reason = too_long(action.command, max_line)
        if reason is not None:
            return Refused(reason)
    return action


def _interpret(text: str, query: str | None) -> Action:
    if text.startswith("//") and query is not None:
        return Send(Chat(query, text[1:]))
    if text.startswith("/"):
        return _slash(text)
    if query is not None:
        return Send(Chat(query, text))
    try:
        command = parse_command(text)
    except ProtocolError as error:
        return Refused(_explain(text, error.reason))
    return Quit() if isinstance(command, Bye) else Send(command)


def _slash(text: str) -> Action:
    word, _, rest = text[1:].partition(" ")
    word = word.lower()
    rest = rest.lstrip(" ")
    if word == "msg":
        name, _, message = rest.partition(" ")
        if not name or not message.strip(" \t\n"):
            return Refused("usage: /msg <user> <text>")
        problem = _name_problem(name)
        if problem:
            return Refused(problem)
        return Send(Chat(name, message))
    if word == "broadcast":
        if not rest.strip(" \t\n"):
            return Refused("usage: /broadcast <text>")
        return Send(Broadcast(rest))
    if word == "query":
        name = rest.strip(" ")
        if not name:
            return SetQuery(None)
        problem = _name_problem(name)
        return Refused(problem) if problem else SetQuery(name)
    if word in ("quit", "exit", "bye"):
        return Quit()
    if word in ("who", "users", "names"):
        return Send(Users())
    if word == "help":
        return ShowHelp()
    if word == "reconnect":
        return Reconnect()
    if word == "history":
        # The wire command's own parser: one grammar for both forms.
        try:
            return Send(parse_command(f"history {rest}"))
        except ProtocolError as error:
            return Refused(f"/history: {error.reason}")
    if word in ("register", "password"):
        if rest.strip(" "):
            return Refused(f"/{word} takes no arguments: it asks for the password"
                           " without showing it")
        return AskPasswords(change=word == "password")
    return Refused(_unknown(text.split(" ", 1)[0]))


def _name_problem(name: str) -> str | None:
    if is_valid_username(name):
        return None
    try:
        validate_username(name)
    except ProtocolError as error:
        return f"{name} is not a valid username: {error.reason}"
    return None  # pragma: no cover - is_valid_username agrees with validate_username


def _explain(text: str, reason: str) -> str:
    lines = text.count("\n") + 1
    paste = (f"; a paste of {lines} lines is sent as one message: start it with /msg <user>"
             " or open a /query" if lines > 1 else "")
    if reason == "unknown command":
        return _unknown(text.lstrip(" ").split(" ", 1)[0]) + paste
    word = text.lstrip(" ").split(" ", 1)[0].lower()
    hint = " (or: /msg <user> <text>)" if word == "chat" and reason.startswith("usage") else ""
    return f"{reason}{hint}{paste}"


def _unknown(word: str) -> str:
    shown = word.split("\n", 1)[0]
    close = difflib.get_close_matches(shown.lower(), SUGGESTABLE, n=1, cutoff=0.6)
    if not close and not shown.startswith("/"):
        close = difflib.get_close_matches("/" + shown.lower(), SUGGESTABLE, n=1, cutoff=0.6)
    advice = f'did you mean {close[0]}?' if close else "type /help for the commands"
    return f'"{shown}" is not a command; {advice}'


def too_long(command: Command, max_line: int = DEFAULT_MAX_LINE) -> str | None:
    """Why the server would refuse ``command`` for its length, or None if it fits."""
    if not isinstance(command, Chat | Broadcast):
        return None
    try:
        size = len(format_command(command)) - 1
    except ProtocolError as error:
        return error.reason
    if size <= max_line:
        return None
    text = command.text

    def fits(length: int) -> bool:
        shorter = Chat(command.to, text[:length]) if isinstance(command, Chat) \
            else Broadcast(text[:length])
        return len(format_command(shorter)) - 1 <= max_line

    # The longest prefix that fits: escapes make bytes per character vary.
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if middle == 0 or fits(middle):
            low = middle
        else:
            high = middle - 1
    excess = len(text) - low
    noun = "character" if excess == 1 else "characters"
    return (f"the message is {excess:,} {noun} too long "
            f"(the server takes lines of at most {max_line:,} bytes)")
