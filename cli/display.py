"""Turning server bytes into text that is safe to put on a terminal.

Why this exists: a terminal executes what it is sent.  ``ESC ] 0 ; ... BEL``
sets the window title, ``ESC [ 2 J`` clears the screen, a raw ``\\r`` lets a
line overwrite itself, and a C1 byte such as U+009B is a CSI on many
terminals.  A correct server never sends any of them raw (the protocol escapes
user text), but the client must not depend on the server being correct.  So
every line is shown in one of two forms, and never raw:

* a well-formed event is parsed with :func:`protocol.parse_event` and shown as
  :func:`protocol.format_event` writes it -- for a correct server that is the
  line exactly as received, already escaped by the protocol;
* anything else is shown with every unsafe character as a visible backslash
  escape (the protocol's own ``\\xHH`` notation), and bytes that are not UTF-8
  as ``\\xHH`` too.

The output of :func:`render` therefore never contains a C0/C1 control
character, DEL, a Unicode line separator, a bidi override or a lone surrogate,
which ``tests/cli/test_cli_display.py`` checks for arbitrary bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol import (
    Event,
    LineTooLong,
    ProtocolError,
    escape,
    format_event,
    parse_event,
)

# Server lines can be much longer than the server's input limit (the online
# users list of a full server is tens of kilobytes), so the client allows far
# more; the limit only exists so that a hostile server cannot exhaust memory.
MAX_SERVER_LINE = 1 << 20

# Bytes that were not UTF-8 survive decoding with "surrogateescape" as lone
# surrogates U+DC80..U+DCFF; they cannot be printed, so they become \xHH.
_SMUGGLED_BYTE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True, slots=True)
class ServerLine:
    """One line from the server, ready to show.

    ``event`` is the parsed event, or None for a line that is not a
    well-formed event; ``text`` is always safe to write to a terminal.
    """

    text: str
    event: Event | None = None


def render(item: bytes | LineTooLong) -> ServerLine:
    """Classify one received line and produce its safe display form."""
    if isinstance(item, LineTooLong):
        return ServerLine(f"[a server line longer than {item.limit} bytes was not shown]")
    try:
        text = item.decode("utf-8")
    except UnicodeDecodeError:
        return ServerLine(visible(item))
    try:
        event = parse_event(text)
    except ProtocolError:
        return ServerLine(visible(item))
    try:
        shown = format_event(event).decode("utf-8")[:-1]
    except ValueError:
        # An event the protocol can parse but would not itself write (say an
        # "<Invalid input: ...>" with a non-ASCII reason).  Still an event,
        # still shown only in escaped form.
        shown = visible(item)
    return ServerLine(shown, event)


def visible(raw: bytes) -> str:
    """Show arbitrary bytes as text with every unsafe character escaped.

    Backslashes are doubled, so the result is unambiguous: ``\\x1b`` on screen
    means the server sent an ESC byte, ``\\\\x1b`` that it sent the four
    characters.
    """
    text = escape(raw.decode("utf-8", errors="surrogateescape"), quoted=False)
    return _SMUGGLED_BYTE.sub(lambda match: f"\\x{ord(match.group()) - 0xDC00:02x}", text)
