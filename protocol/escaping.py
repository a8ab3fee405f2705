"""Quoting and visible escaping of message text.

Why this exists: a message travels inside a server event line that the
recipient's terminal shows.  If the text could carry a raw newline, carriage
return, escape sequence or Unicode line separator, a sender could forge a line
that looks like it came from the server (``<User Admin is online.>``) or run a
terminal escape on the recipient's screen.  Invisible and format characters
are the quieter version of the same attack: a zero-width space makes ``Bob``
and ``B\\u200bob`` look alike, a bidi override makes a line display as
another, a tag character hides text nobody sees.  So every such character is
written as a visible backslash escape, and the escapes are reversible: a
client can recover exactly what the sender typed, and decide itself what is
harmless to render (a zero-width joiner inside an emoji, say).

What is escaped in every event line, chosen by Unicode general category
rather than by a list, so that whole classes are covered:

* categories Cc (controls, TAB included), Cf (format: U+00AD soft hyphen,
  U+061C, U+200B-U+200F zero-width and direction marks, U+202A-U+202E and
  U+2066-U+2069 bidi embeddings, overrides and isolates, U+2060-U+2064 word
  joiner and invisible operators, U+FEFF, U+FFF9-U+FFFB, the tag block
  U+E0000-U+E007F...), Cs (surrogates), Co (private use), Cn (unassigned,
  which includes the 66 noncharacters U+FDD0-U+FDEF and U+xxFFFE/U+xxFFFF),
  Zl and Zp (U+2028, U+2029);
* the Hangul fillers U+115F, U+1160, U+3164, U+FFA0: letters (Lo) that
  render as nothing, the classic way to fake a blank name;
* the combining marks (Mn, Me) in a run after the first
  :data:`MAX_COMBINING_MARKS`: real scripts stack at most about four on one
  base character (Vietnamese, Devanagari, Hebrew points and cantillation),
  while "Zalgo" text stacks dozens that spill over the lines above and below.
  The excess is escaped rather than dropped, so the text still round-trips.

Categories are those of Python's :mod:`unicodedata` (Unicode 14.0.0 in
Python 3.11; see ``unicodedata.unidata_version``).  A character assigned in a
later Unicode version is Cn here and so is escaped until Python's database
knows it: the safe direction to be wrong in.

What a client may send raw is a separate, narrower rule (see
:func:`find_refused`): C0 controls other than TAB, DEL, C1 controls and
U+2028/U+2029 are refused, because they break lines and drive terminals; a
run of more than :data:`MAX_COMBINING_MARKS` combining marks is refused too.
Everything else above is accepted raw and escaped on delivery, so pasted text
with a zero-width joiner or a right-to-left mark still gets through.

Escapes understood inside quotes: ``\\\\`` ``\\"`` ``\\xHH`` ``\\uHHHH``
``\\UHHHHHHHH``.  Any other backslash is kept literally, so that a person typing
``C:\\dir`` on ``nc`` is not punished for it.  This module also owns the
quoted-string grammar, :data:`QUOTED_PATTERN`, used by commands and events.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from protocol.errors import RemoteProtocolError

MAX_COMBINING_MARKS = 8

ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
COMBINING_CATEGORIES = frozenset({"Mn", "Me"})
# Letters that render as nothing (Hangul choseong/jungseong fillers, the
# Hangul filler and its halfwidth form).
INVISIBLE_LETTERS = "\u115f\u1160\u3164\uffa0"

# A quoted string, as a regex source string with one group: the escaped text
# between the quotes.  Anything but a quote or backslash, or a backslash and
# any character (a newline too: ``(?s:...)``).  Possessive, so that an
# unterminated quote fails in linear time.
QUOTED_PATTERN = r'"((?:[^"\\]++|\\(?s:.))*+)"'

_Ranges = list[tuple[int, int]]


def _unicode_ranges() -> tuple[_Ranges, _Ranges]:
    """Code point ranges of the escaped categories and of the combining marks.

    Asking ``unicodedata.category`` about all 1,114,112 code points one by one
    takes about half a second, so blocks are classified in bulk first, with
    string methods that run in C over the same Unicode database, and only
    what they cannot decide is asked character by character:

    * a block of letters only (``str.isalpha``: categories L*) holds neither
      kind (the CJK and Hangul blocks);
    * Python calls a character non-printable exactly when its category is C*
      or Z* (bar the space), and ``repr`` writes every non-printable character
      as an escape of known length; a block whose ``repr`` is all escapes and
      which holds no whitespace (the Zs spaces) is entirely C*, Zl or Zp:
      escaped as a whole (the unassigned planes, private use);
    * anything else is halved until it is small, then asked per character.

    About 30,000 ``category`` calls in all; the test suite compares the
    result with a plain per-character scan.
    """
    escaped: _Ranges = []
    marks: _Ranges = []
    category = unicodedata.category
    whitespace = re.compile(r"\s")

    def visit(plane: str, base: int, lo: int, hi: int) -> None:
        block = plane[lo:hi]
        if block.isalpha():
            return
        if base + lo >= 0x100 and not any(c.isprintable() for c in block[:: 1 + len(block) // 8]):
            width = 10 if base else 6  # \UHHHHHHHH or \uHHHH, and the two quotes
            if len(repr(block)) == width * len(block) + 2 and not whitespace.search(block):
                escaped.append((base + lo, base + hi - 1))
                return
        if hi - lo > 64:
            middle = (lo + hi) // 2
            visit(plane, base, lo, middle)
            visit(plane, base, middle, hi)
            return
        for offset, char in enumerate(block, base + lo):
            kind = category(char)
            if kind in ESCAPED_CATEGORIES:
                escaped.append((offset, offset))
            elif kind in COMBINING_CATEGORIES:
                marks.append((offset, offset))

    for base, plane in _planes():
        for lo in range(0, 0x10000, 0x1000):
            visit(plane, base, lo, lo + 0x1000)
    escaped += [(ord(char), ord(char)) for char in INVISIBLE_LETTERS]
    escaped += _noncharacters()  # Cn today, and by Unicode's stability policy, forever
    return _merged(escaped), _merged(marks)


def _planes() -> Iterator[tuple[int, str]]:
    """Each of the 17 planes as a string of its 65,536 code points, in order."""
    # Built as UTF-32 bytes and decoded in one call per plane; map(chr) would
    # cost ten times as much.
    units = bytearray(4 * 0x10000)
    units[0::4] = bytes(range(256)) * 256
    units[1::4] = b"".join(bytes([high]) * 256 for high in range(256))
    for number in range(17):
        units[2::4] = bytes([number]) * 0x10000
        if number == 0:
            below, above = 4 * 0xD800, 4 * 0xE000
            surrogates = "".join(map(chr, range(0xD800, 0xE000)))
            plane = units[:below].decode("utf-32-le") + surrogates + units[above:].decode(
                "utf-32-le"
            )
        else:
            plane = units.decode("utf-32-le")
        yield number << 16, plane


def _noncharacters() -> _Ranges:
    ranges = [(0xFDD0, 0xFDEF)]
    ranges += [((plane << 16) | 0xFFFE, (plane << 16) | 0xFFFF) for plane in range(17)]
    return ranges


def _merged(ranges: _Ranges) -> _Ranges:
    out: _Ranges = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(last, out[-1][1]))
        else:
            out.append((first, last))
    return out


def _class_body(ranges: _Ranges) -> str:
    """The inside of a regex character class matching exactly ``ranges``.

    The characters are written literally: the regex parser is pure Python and
    reads a literal in a tenth of the time of a ``\\UHHHHHHHH`` escape.
    """
    parts = []
    for first, last in ranges:
        lo = re.escape(chr(first))
        parts.append(lo if first == last else f"{lo}-{re.escape(chr(last))}")
    return "".join(parts)


def _split_bmp(ranges: _Ranges) -> tuple[_Ranges, _Ranges]:
    bmp = [(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF]
    astral = [(max(a, 0x10000), b) for a, b in ranges if b >= 0x10000]
    return bmp, astral


def _without_surrogates(ranges: _Ranges) -> _Ranges:
    below = [(first, min(last, 0xD7FF)) for first, last in ranges]
    pieces = below + [(max(first, 0xE000), last) for first, last in ranges]
    return _merged([(first, last) for first, last in pieces if first <= last])


_ESCAPED_RANGES, _MARK_RANGES = _unicode_ranges()

# The patterns below are built for speed, since escaping runs on every
# delivered message.  Each starts with one character class holding every
# character that could start a match (and every astral character), which lets
# the regex engine skip all other characters in a tight loop in C; lookbehinds
# then sort out what the character was.  The engine looks a character up in
# a class's BMP part in constant time but compares it with the astral ranges
# one by one, so those are consulted only for astral characters, and as a
# binary search.
_ASTRAL = r"\U00010000-\U0010ffff"
_MARK_BMP_RANGES, _MARK_ASTRAL_RANGES = _split_bmp(_MARK_RANGES)
_MARK_BMP = f"[{_class_body(_MARK_BMP_RANGES)}]"


def _astral_class(ranges: _Ranges) -> str:
    """A regex matching one astral character (one is assumed) if it is in ``ranges``.

    A binary search written as nested lookaheads: the engine tries a flat
    class's 350-odd astral ranges one by one, about a microsecond per emoji
    on the machine this was measured on; this takes about a quarter of that.
    """
    if len(ranges) <= 12:
        return f"[{_class_body(ranges)}]" if ranges else "(?!)"
    middle = len(ranges) // 2
    lower = f"[\\U00010000-{re.escape(chr(ranges[middle][0] - 1))}]"
    return (
        f"(?:(?={lower}){_astral_class(ranges[:middle])}"
        f"|(?!{lower}){_astral_class(ranges[middle:])})"
    )


_MARK_ASTRAL = _astral_class(_MARK_ASTRAL_RANGES)
_MARK = f"(?:{_MARK_BMP}|(?=[{_ASTRAL}]){_MARK_ASTRAL})"


def _pattern(ranges: _Ranges, extra: str = "") -> re.Pattern[str]:
    """One character of ``ranges`` (or of ``extra``), or an overlong run of marks.

    A run of marks matches whole; its first MAX_COMBINING_MARKS stay raw.
    """
    bmp, astral = _split_bmp(ranges)
    first = f"[{_class_body(_merged(bmp + _MARK_BMP_RANGES))}{extra}{_ASTRAL}]"
    return re.compile(
        f"{first}(?:"
        f"(?<![{_class_body(_MARK_BMP_RANGES)}{_ASTRAL}])"  # one of bmp or extra
        f"|(?<=[{_ASTRAL}])(?<={_astral_class(astral)})"
        f"|(?<={_MARK}){_MARK}{{{MAX_COMBINING_MARKS},}}"
        ")"
    )


# Surrogates are left to the caller: they are not characters and cannot be
# written in UTF-8 at all, so the formatters refuse text holding one, and the
# client's display turns the ones it made itself (undecodable bytes) into \xHH.
_NEEDS_ESCAPE = _pattern(_without_surrogates(_ESCAPED_RANGES), r'\\"')
_SURROGATE = re.compile("[\ud800-\udfff]")
# The common case, ASCII text, needs only the controls and the escape characters.
_ASCII_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f\x7f\\"]')
_ASCII_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
# Refused raw in a client's line: what breaks lines and drives terminals (C0
# but TAB, DEL, C1, U+2028/U+2029), and a run of too many combining marks.
_REFUSED = _pattern([(0x00, 0x08), (0x0A, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029)])
_ESCAPE_SEQUENCE = re.compile(
    r'\\(?:(["\\])|x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8}))'
)


def _first_offender(match: re.Match[str] | None) -> str | None:
    if match is None:
        return None
    found = match.group()
    # A run of marks offends from the first one past the limit.
    return found[MAX_COMBINING_MARKS] if len(found) > 1 else found


def escape_sequence(char: str) -> str:
    """The escape that writes ``char``: ``\\x1b``, ``\\u200b``, ``\\U000e0041``."""
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape_quoted(match: re.Match[str]) -> str:
    found = match.group()
    if len(found) > 1:
        allowed = MAX_COMBINING_MARKS
        return found[:allowed] + "".join(map(escape_sequence, found[allowed:]))
    if found in '\\"':
        return "\\" + found
    return escape_sequence(found)


def _escape_bare(match: re.Match[str]) -> str:
    found = match.group()
    return found if found == '"' else _escape_quoted(match)


def escape(text: str, *, quoted: bool = True) -> str:
    """Return ``text`` with every unsafe character as a visible escape.

    With ``quoted=True`` the double quote is escaped too, for text that sits
    between quotes; a bare rest-of-line (``<To Bob> ...``) only needs the
    backslash and the unsafe characters escaped to be reversible.  Lone
    surrogates are left in place (see the comment on ``_NEEDS_ESCAPE``).
    """
    if text.isascii():
        # The common case: plain ASCII with nothing to escape is returned as
        # it is, found by one search rather than a sub() with a callback.
        if _ASCII_NEEDS_ESCAPE.search(text) is None:
            return text
        pattern = _ASCII_NEEDS_ESCAPE
    else:
        pattern = _NEEDS_ESCAPE
    return pattern.sub(_escape_quoted if quoted else _escape_bare, text)


def _unescape_one(match: re.Match[str]) -> str:
    literal, byte, bmp, astral = match.groups()
    if literal is not None:
        return literal
    code = int(byte or bmp or astral, 16)
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        raise RemoteProtocolError(f"escape \\{match.group()[1:]} is not a Unicode character")
    return chr(code)


def unescape(text: str) -> str:
    """Reverse :func:`escape`; unknown backslash sequences stay as they are."""
    if "\\" not in text:
        return text
    return _ESCAPE_SEQUENCE.sub(_unescape_one, text)


def find_unsafe(text: str) -> str | None:
    """Return the first character that never appears raw in an event line, if any.

    That is a character of the escaped categories (surrogates included), a
    Hangul filler, or a combining mark beyond :data:`MAX_COMBINING_MARKS` in
    a row.
    """
    if text.isascii():
        return _first_offender(_ASCII_UNSAFE.search(text))
    surrogate = _SURROGATE.search(text)
    end = surrogate.start() if surrogate else len(text)
    for match in _NEEDS_ESCAPE.finditer(text, 0, end):
        if match.group() not in '\\"':
            return _first_offender(match)
    return surrogate.group() if surrogate else None


def find_refused(text: str) -> str | None:
    """Return the first character a client may not send raw, if any.

    A C0 control other than TAB, DEL, a C1 control, U+2028 or U+2029, or a
    combining mark beyond :data:`MAX_COMBINING_MARKS` in a row.  Inside quotes
    each can still be written as an escape.
    """
    return _first_offender(_REFUSED.search(text))


def is_combining_mark(char: str) -> bool:
    """True for a character of category Mn or Me."""
    return unicodedata.category(char) in COMBINING_CATEGORIES


def describe_character(char: str) -> str:
    """Name a character the way error messages show it: ``U+001B``."""
    return f"U+{ord(char):04X}"
