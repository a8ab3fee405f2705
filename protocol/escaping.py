"""Quoting and visible escaping of message text.

Why this exists: a message travels inside a server event line that the
recipient's terminal shows.  If the text could carry a raw newline, carriage
return, escape sequence or Unicode line separator, a sender could forge a line
that looks like it came from the server (``<User Admin is online.>``) or run a
terminal escape on the recipient's screen.  So every character that could do
that is written as a visible backslash escape, and the escapes are reversible:
a client can recover exactly what the sender typed.

Escapes understood inside quotes: ``\\\\`` ``\\"`` ``\\xHH`` ``\\uHHHH``
``\\UHHHHHHHH``.  Any other backslash is kept literally, so that a person typing
``C:\\dir`` on ``nc`` is not punished for it.
"""

from __future__ import annotations

import re

from protocol.errors import ProtocolError

# Characters never allowed raw in a line on the wire: C0 controls, DEL, C1
# controls (U+0085 NEL among them), the Unicode line and paragraph separators
# (some terminals and many text widgets break lines on them) and the bidi
# overrides/isolates, which can make one line display as another.
_UNSAFE_RANGES = (
    "\x00-\x1f\x7f-\x9f"
    "\u2028\u2029"
    "\u202a-\u202e\u2066-\u2069"
)
UNSAFE_CHARACTER = re.compile(f"[{_UNSAFE_RANGES}]")
_NEEDS_ESCAPE_QUOTED = re.compile(f'[{_UNSAFE_RANGES}\\\\"]')
_NEEDS_ESCAPE_BARE = re.compile(f"[{_UNSAFE_RANGES}\\\\]")
_ESCAPE_SEQUENCE = re.compile(
    r'\\(?:(["\\])|x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8}))'
)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in '\\"':
        return "\\" + char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, *, quoted: bool = True) -> str:
    """Return ``text`` with every unsafe character as a visible escape.

    With ``quoted=True`` the double quote is escaped too, for text that sits
    between quotes; a bare rest-of-line (``<To Bob> ...``) only needs the
    backslash and the unsafe characters escaped to be reversible.
    """
    pattern = _NEEDS_ESCAPE_QUOTED if quoted else _NEEDS_ESCAPE_BARE
    return pattern.sub(_escape_one, text)


def _unescape_one(match: re.Match[str]) -> str:
    literal, byte, bmp, astral = match.groups()
    if literal is not None:
        return literal
    code = int(byte or bmp or astral, 16)
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        raise ProtocolError(f"escape \\{match.group()[1:]} is not a Unicode character")
    return chr(code)


def unescape(text: str) -> str:
    """Reverse :func:`escape`; unknown backslash sequences stay as they are."""
    if "\\" not in text:
        return text
    return _ESCAPE_SEQUENCE.sub(_unescape_one, text)


def find_unsafe(text: str) -> str | None:
    """Return the first character that may not appear raw in a line, if any."""
    match = UNSAFE_CHARACTER.search(text)
    return match.group() if match else None


def describe_character(char: str) -> str:
    """Name a character the way error messages show it: ``U+001B``."""
    return f"U+{ord(char):04X}"
