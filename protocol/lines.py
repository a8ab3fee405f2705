"""From raw wire bytes to a checked line of text."""

from __future__ import annotations

import re

from protocol.errors import RemoteProtocolError
from protocol.escaping import (
    MAX_COMBINING_MARKS,
    describe_character,
    escape_sequence,
    find_refused,
    is_combining_mark,
)

# What find_refused refuses among ASCII characters: C0 controls but TAB, and DEL.
_ASCII_REFUSED = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def decode_line(raw: bytes) -> str:
    """Decode one line (terminator already removed) and check its characters.

    A line must be valid UTF-8 and may not carry raw what forged events and
    terminal escapes are made of: a C0 control other than TAB, DEL, a C1
    control, U+2028 or U+2029.  Nor may it stack more than
    ``MAX_COMBINING_MARKS`` combining marks on one character.  Inside quotes
    a sender can still write any of them as an escape (``\\x1b``,
    ``\\u0301``).  Everything else, TAB, zero-width and format characters
    included, is accepted here and escaped whenever it is delivered (see
    :mod:`protocol.escaping`).
    """
    if raw.isascii():
        # The common case.  In ASCII only the C0 controls but TAB, and DEL,
        # are refused (no C1, no U+2028/U+2029, no combining marks), and
        # isprintable() is False for exactly those and TAB: a printable line
        # is find_refused's "nothing refused" without running its regex.
        text = raw.decode("ascii")
        if text.isprintable() or _ASCII_REFUSED.search(raw) is None:
            return text
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(
            f"the line is not valid UTF-8 (byte {exc.start + 1})"
        ) from None
    refused = find_refused(text)
    if refused is None:
        return text
    sequence = escape_sequence(refused)
    if is_combining_mark(refused):
        raise RemoteProtocolError(
            f"more than {MAX_COMBINING_MARKS} combining marks on one character;"
            f" inside quotes write the rest as escapes such as {sequence}"
        )
    raise RemoteProtocolError(
        f"character {describe_character(refused)} is not allowed raw;"
        f" inside quotes write it as {sequence}"
    )
