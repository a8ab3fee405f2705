"""Server events as people read them: labels, styles, timestamps and safe, wrapped text.

The wire form (``<Message from Bob: "C:\\\\temp">``) is for programs; a person
wants to see what Bob typed (``C:\\temp``).  So message text is shown
unescaped, as :func:`protocol.parse_event` returns it, with two exceptions
that keep the terminal safe:

* characters a terminal would act on or that are invisible -- C0/C1 controls
  and DEL, the Unicode line/paragraph separators, and the categories Cf
  (format: bidi overrides and isolates, zero-width spaces), Cs, Co and Cn, and
  the Hangul fillers -- are shown as a visible token in the ``escape`` style:
  ``\\x1b`` for a control character, ``<U+200B>`` for the others.  A
  zero-width joiner between two emoji is kept, so 👩‍💻 stays one picture.
* combining marks past :data:`protocol.MAX_COMBINING_MARKS` in a row (the
  "Zalgo" pile that would spill into the rows above and below) are shown as
  ``<U+0301>`` tokens too;
* a newline inside a message starts a new row and a tab becomes spaces to the
  next multiple of four columns: that is what the sender typed.

Every line is wrapped here, to the terminal width, with a hanging indent:
continuation rows start with spaces, and a run of spaces at a row break is
dropped.  A message padded with spaces so that ``-- Admin is online`` would
land at the start of a row (the line-wrap spoof) therefore never lines up with
a real event, which always starts in column 0 with its timestamp.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prompt_toolkit.formatted_text import FormattedText, StyleAndTextTuples
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth

from protocol import (
    MAX_COMBINING_MARKS,
    BroadcastFrom,
    BroadcastNotSent,
    BroadcastSent,
    Disconnected,
    Event,
    HelpText,
    HistoryEnd,
    HistoryLine,
    InvalidInput,
    MessageFrom,
    MessageSent,
    MessageStored,
    NotDelivered,
    OnlineUsers,
    PasswordChanged,
    PasswordRequired,
    Registered,
    ServiceUnavailable,
    ShuttingDown,
    UserOffline,
    UserOnline,
    UserUnknown,
    WaitingDelivered,
    WaitingMessage,
    WrongPassword,
    parse_server_time,
    username_key,
)
from protocol.escaping import (
    ESCAPED_CATEGORIES,
    INVISIBLE_LETTERS,
    find_unsafe,
    is_combining_mark,
)

STYLE = Style.from_dict({
    "time": "ansibrightblack",
    "dm-in": "bold ansimagenta",
    "broadcast-in": "bold ansicyan",
    "own": "ansigreen",
    "pending": "ansiyellow",
    "late": "bold ansiyellow",
    "failed": "bold ansired",
    "error": "ansired",
    "presence": "ansiblue",
    "info": "",
    "unknown": "ansiyellow",
    "escape": "reverse",
    "toolbar.online": "bold",
    "toolbar.offline": "bold ansired",
})

TIMESTAMP_FORMATS = {"off": None, "HH:MM": "%H:%M", "HH:MM:SS": "%H:%M:%S"}
TAB_STOP = 4

_ZWJ = "\u200d"


def is_harmful(char: str) -> bool:
    """True for a character that must not reach the terminal raw.

    The categories the protocol always escapes on the wire (C0/C1 controls,
    format characters such as bidi overrides, surrogates, private use,
    unassigned and noncharacters, line/paragraph separators) and the Hangul
    fillers, which draw as blank space.
    """
    return char in INVISIBLE_LETTERS or unicodedata.category(char) in ESCAPED_CATEGORIES


def token_for(char: str) -> str:
    """The visible stand-in for a harmful character."""
    code = ord(char)
    if unicodedata.category(char) == "Cc":
        return f"\\x{code:02x}"
    return f"<U+{code:04X}>"


def _emoji_side(char: str) -> bool:
    return unicodedata.category(char) == "So" or char == "\ufe0f"


@dataclass(frozen=True, slots=True)
class _Cell:
    style: str
    text: str
    width: int
    kind: str  # "char", "space", "tab", "newline"


def _cells(fragments: Iterable[tuple[str, str]]) -> list[_Cell]:
    """Split styled text into display cells; harmful characters become one token cell."""
    out: list[_Cell] = []
    marks = 0  # combining marks in a row: past the protocol's cap they would pile up
    for style, text in fragments:
        for index, char in enumerate(text):
            marks = marks + 1 if is_combining_mark(char) else 0
            if marks > MAX_COMBINING_MARKS:
                token = token_for(char)
                out.append(_Cell("class:escape", token, len(token), "char"))
            elif char == "\n":
                out.append(_Cell(style, "", 0, "newline"))
            elif char == "\t":
                out.append(_Cell(style, " ", 0, "tab"))
            elif char == " ":
                out.append(_Cell(style, " ", 1, "space"))
            elif char == _ZWJ and 0 < index < len(text) - 1 and _emoji_side(text[index - 1]) \
                    and unicodedata.category(text[index + 1]) == "So":
                out.append(_Cell(style, char, 0, "char"))
            elif is_harmful(char):
                token = token_for(char)
                out.append(_Cell("class:escape", token, len(token), "char"))
            else:
                out.append(_Cell(style, char, get_cwidth(char), "char"))
    return out


def _words(cells: list[_Cell]) -> list[list[_Cell]]:
    """Group cells: each run of non-space cells is one word; spaces, tabs and newlines alone."""
    groups: list[list[_Cell]] = []
    for cell in cells:
        if cell.kind == "char" and groups and groups[-1][-1].kind == "char":
            groups[-1].append(cell)
        else:
            groups.append([cell])
    return groups


def wrap(prefix: StyleAndTextTuples, body: StyleAndTextTuples, width: int | None,
         indent: int) -> list[StyleAndTextTuples]:
    """Lay out ``prefix`` + ``body`` in rows of at most ``width`` columns.

    Rows after the first start with ``indent`` spaces; spaces at a row break
    are dropped; a word longer than a row is cut.  ``width=None`` breaks only
    at newlines in the body (for output that is not a terminal).
    """
    one_row = _one_row(prefix, body, width, indent)
    return [one_row] if one_row is not None else wrap_cells(prefix, body, width, indent)


def wrap_cells(prefix: StyleAndTextTuples, body: StyleAndTextTuples, width: int | None,
               indent: int) -> list[StyleAndTextTuples]:
    """:func:`wrap` the general way, cell by cell (what its fast path must match)."""
    rows: list[StyleAndTextTuples] = []
    row: StyleAndTextTuples = []
    col = 0
    body_col = 0  # columns of body text on this row, for tab stops

    def put(cell: _Cell, text: str | None = None, cell_width: int | None = None) -> None:
        nonlocal col, body_col
        w = cell.width if cell_width is None else cell_width
        row.append((cell.style, cell.text if text is None else text))
        col += w
        body_col += w

    wrapped = False  # just broke a row for width: swallow the spaces that follow

    def new_row(for_width: bool = True) -> None:
        nonlocal row, col, body_col, wrapped
        wrapped = for_width
        rows.append(row)
        row = [("", " " * indent)] if indent else []
        col = indent
        body_col = 0

    for style, text in prefix:
        row.append((style, text))
        col += get_cwidth(text)
    limit = None if width is None else max(width, indent + 8)
    for group in _words(_cells(body)):
        first = group[0]
        if first.kind == "newline":
            new_row(for_width=False)
            continue
        if first.kind in ("space", "tab"):
            w = 1 if first.kind == "space" else TAB_STOP - body_col % TAB_STOP
            if wrapped:
                continue
            if limit is not None and col + w > limit:
                new_row()  # and drop the space: a break swallows it
                continue
            put(first, " " * w, w)
            continue
        wrapped = False
        word_width = sum(cell.width for cell in group)
        if limit is not None and col + word_width > limit and col > indent \
                and word_width <= limit - indent:
            new_row()
        for cell in group:
            if limit is not None and col + cell.width > limit and col > indent:
                new_row()
            put(cell)
        wrapped = False
    rows.append(row)
    return [_merge(r) for r in rows]


def _one_row(prefix: StyleAndTextTuples, body: StyleAndTextTuples, width: int | None,
             indent: int) -> StyleAndTextTuples | None:
    """What :func:`wrap` makes of a line that fits on one row and has nothing to
    escape, lay out or break (no tab, newline or pile of marks); else None.

    Most lines are such lines, and one regex search over the text is far
    cheaper than laying it out cell by cell.
    """
    text = "".join(fragment[1] for fragment in body)
    if find_unsafe(text) is not None:
        return None
    if width is not None:
        used = sum(get_cwidth(fragment[1]) for fragment in prefix) + get_cwidth(text)
        if used > max(width, indent + 8):
            return None
    return _merge([*prefix, *body])


def _merge(row: StyleAndTextTuples) -> StyleAndTextTuples:
    """Join neighbours of one style; drop trailing spaces (invisible, and they would wrap)."""
    while row and not row[-1][1].strip(" "):
        row = row[:-1]
    if row:
        row = [*row[:-1], (row[-1][0], row[-1][1].rstrip(" "))]
    merged: StyleAndTextTuples = []
    for style, text in row:
        if merged and merged[-1][0] == style:
            merged[-1] = (style, merged[-1][1] + text)
        elif text:
            merged.append((style, text))
    return merged


def plain(fragments: StyleAndTextTuples) -> str:
    return "".join(text for _, text in fragments)


@dataclass(frozen=True, slots=True)
class Line:
    """One thing to show: a label (e.g. ``Bob → you: ``) and optional message text."""

    style: str
    label: str
    body: str = ""
    body_style: str = ""


class Presenter:
    """Turns events and client notices into rows for a terminal or a plain stream."""

    def __init__(self, own_name: str, timestamps: str | None = "%H:%M",
                 clock: callable = time.localtime,  # type: ignore[valid-type]
                 zone: Callable[[float], time.struct_time] = time.localtime) -> None:
        self.own_name = own_name
        self.timestamps = timestamps
        self.clock = clock
        self.zone = zone  # how a stored message's server time (UTC) is shown

    @property
    def indent(self) -> int:
        if self.timestamps is None:
            return 4
        return len(time.strftime(self.timestamps, time.localtime(0))) + 5

    def rows(self, line: Line, width: int | None) -> list[StyleAndTextTuples]:
        prefix: StyleAndTextTuples = []
        if self.timestamps is not None:
            stamp = time.strftime(self.timestamps, self.clock())
            prefix.append(("class:time", f"[{stamp}] "))
        prefix.append((line.style, line.label))
        body = [(line.body_style, line.body)] if line.body else []
        return wrap(prefix, body, width, self.indent)

    def formatted(self, line: Line, width: int | None) -> FormattedText:
        out: StyleAndTextTuples = []
        for row in self.rows(line, width):
            out.extend(row)
            out.append(("", "\n"))
        return FormattedText(out)

    def text(self, line: Line, width: int | None = None) -> str:
        return "\n".join(plain(row) for row in self.rows(line, width))

    # -- what each event looks like -------------------------------------------

    def _is_me(self, name: str) -> bool:
        return username_key(name) == username_key(self.own_name)

    def _when(self, server_time: str) -> str:
        """A stored message's time as the reader's clock shows it, to the minute."""
        seconds = parse_server_time(server_time) / 1000
        return time.strftime("%Y-%m-%d %H:%M", self.zone(seconds))

    def event(self, event: Event | NotDelivered | None, wire_text: str) -> Line:
        """The line for an event that is not a reply to one of our commands."""
        match event:
            case UserOnline(name):
                if self._is_me(name):
                    return Line("class:presence", f"-- logged in as {name}")
                return Line("class:presence", f"-- {name} is online")
            case UserOffline(name):
                if self._is_me(name):
                    return Line("class:presence", "-- logged out")
                return Line("class:presence", f"-- {name} is offline")
            case MessageFrom(sender, text):
                return Line("class:dm-in", f"{sender} → you: ", text)
            case BroadcastFrom(sender, text):
                return Line("class:broadcast-in", f"{sender} → everyone: ", text)
            case MessageSent(to, text):
                return Line("class:own", f"✓ you → {to}: ", text)
            case BroadcastSent(text):
                return Line("class:own", "✓ you → everyone: ", text)
            case OnlineUsers(names):
                return Line("class:info", f"-- online ({len(names)}): ", ", ".join(names))
            case HelpText():
                return Line("class:info", "-- ", wire_text[1:-1] + HELP_SUFFIX)
            case InvalidInput(reason):
                return Line("class:failed", "✗ the server refused a command: ", reason)
            case UserUnknown(name):
                return Line("class:info", f"-- user {name} does not exist")
            case NotDelivered(to, reason):
                return Line("class:failed", f"✗ a message to {to} was not delivered: ", reason)
            case ShuttingDown():
                return Line("class:presence", "-- the server is shutting down")
            case BroadcastNotSent(reason):
                return Line("class:failed", "✗ a broadcast was not sent: ", reason)
            case ServiceUnavailable(reason):
                return Line("class:failed", "✗ the chat service is unavailable: ", reason)
            case Disconnected(reason):
                return Line("class:presence", "-- disconnected by the server: ", reason)
            case PasswordRequired(name):
                return Line("class:info", f"-- {name} is registered: password required")
            case WrongPassword(name):
                return Line("class:failed", f"✗ wrong password for {name}")
            case Registered(name):
                return Line("class:own", f"✓ {name} is now registered: logging in as {name} "
                                         "will ask for the password")
            case PasswordChanged(name):
                return Line("class:own", f"✓ password changed for {name}")
            case MessageStored(to):
                return Line("class:own", f"✓ {to} is offline: the message waits for their login")
            case WaitingMessage(sender, sent, text):
                return Line("class:dm-in", f"{sender} → you (while away, {self._when(sent)}): ",
                            text)
            case WaitingDelivered(to, sent):
                return Line("class:own", f"✓ {to} got your message of {self._when(sent)}")
            case HistoryLine(message_id, sent, sender, to, text):
                who = "you" if self._is_me(sender) else sender
                whom = "you" if self._is_me(to) else to
                return Line("class:info", f"[{self._when(sent)} #{message_id}] {who} → {whom}: ",
                            text)
            case HistoryEnd(peer, count):
                return Line("class:info", f"-- end of history with {peer}: {count} shown")
            case None:
                return Line("class:unknown", "", wire_text, "class:unknown")
            case _:
                return Line("class:info", "-- ", wire_text.strip("<>"))


HELP_SUFFIX = (" Also: /msg <user> <text>, /broadcast <text>, /query <user>, /who, /quit,"
               " /help.")
