"""Username rules, shared by the server, the client and the event parser."""

from __future__ import annotations

import re

from protocol.errors import ProtocolError

MAX_USERNAME_LENGTH = 32
_USERNAME = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
_ALLOWED = re.compile(r"[A-Za-z0-9_.\-]*")


# "everyone" would make the echo of a direct message to that user,
# "<To everyone> ...", read as the echo of a broadcast.
RESERVED_USERNAMES = frozenset({"everyone"})


def validate_username(name: str) -> str:
    """Return ``name`` if it is a valid username, else raise ProtocolError.

    Usernames are 1-32 ASCII letters, digits, ``_``, ``-`` or ``.``.  The
    narrow alphabet is deliberate: a name appears inside every event line, so
    it must never carry spaces, quotes, angle brackets or anything a terminal
    would interpret.  The reason never echoes the rejected text back.
    """
    if _USERNAME.fullmatch(name):
        if username_key(name) in RESERVED_USERNAMES:
            raise ProtocolError(f"the name {name} is reserved")
        return name
    if not name:
        raise ProtocolError("a username cannot be empty")
    if len(name) > MAX_USERNAME_LENGTH:
        raise ProtocolError(f"a username has at most {MAX_USERNAME_LENGTH} characters")
    if not _ALLOWED.fullmatch(name):
        raise ProtocolError("use only letters, digits, '_', '-' and '.'")
    raise ProtocolError("not a valid username")  # pragma: no cover - unreachable


def is_valid_username(name: str) -> bool:
    return _USERNAME.fullmatch(name) is not None and username_key(name) not in RESERVED_USERNAMES


def username_key(name: str) -> str:
    """The case-insensitive identity of a username (``Alice`` == ``alice``)."""
    return name.casefold()
