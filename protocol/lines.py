"""From raw wire bytes to a checked line of text."""

from __future__ import annotations

from protocol.errors import ProtocolError
from protocol.escaping import describe_character, escape, find_unsafe


def decode_line(raw: bytes) -> str:
    """Decode one line (terminator already removed) and check its characters.

    A line must be valid UTF-8 and may contain no raw control character or
    Unicode line separator: those are what forged events and terminal escapes
    are made of.  Inside quotes a sender can still write them as ``\\xHH``.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"the line is not valid UTF-8 (byte {exc.start + 1})") from None
    unsafe = find_unsafe(text)
    if unsafe is not None:
        name = describe_character(unsafe)
        raise ProtocolError(
            f"character {name} is not allowed raw; inside quotes write it as {escape(unsafe)}"
        )
    return text
