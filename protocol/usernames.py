"""Username rules, shared by the server, the client and the event parser.

This module owns the username grammar: :data:`USERNAME_PATTERN` is the one
regular expression for a name, and the command and event grammars are built
from it rather than repeating it.
"""

from __future__ import annotations

import functools
import re

from protocol.errors import RemoteProtocolError

MAX_USERNAME_LENGTH = 32

# A regex source string (no anchors, no groups) for one username, for other
# grammars to embed.  The first character is a letter or digit so that a name
# never looks like an option (``-x``, ``--help``), a path (``.``, ``..``) or
# punctuation (``...``) in a command line or a log.
USERNAME_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_USERNAME_LENGTH - 1}}}"

# The rule in words, for the error a wrong name gets.
USERNAME_RULE = (
    f"a username is 1-{MAX_USERNAME_LENGTH} ASCII letters, digits, '_', '-' or '.',"
    " starting with a letter or digit"
)

# "everyone" would make the echo of a direct message to that user,
# "<To everyone> ...", read as the echo of a broadcast.
RESERVED_USERNAMES = frozenset({"everyone"})

_USERNAME = re.compile(USERNAME_PATTERN)


# Names repeat on every line that carries them (each echo, each delivery):
# remembering the verdict for the names in use turns a regex match into a
# dict lookup.  Bounded, so that a client cycling names grows nothing.
@functools.lru_cache(maxsize=4096)
def username_problem(name: str) -> str | None:
    """Why ``name`` is not a valid username, or None if it is one.

    The reason never echoes rejected characters back, only the rule; a
    reserved name is named, since it is plain ASCII.
    """
    if _USERNAME.fullmatch(name):
        if username_key(name) in RESERVED_USERNAMES:
            return f"the name {name} is reserved"
        return None
    if not name:
        return "a username cannot be empty"
    if len(name) > MAX_USERNAME_LENGTH:
        return f"a username has at most {MAX_USERNAME_LENGTH} characters"
    return USERNAME_RULE


def validate_username(name: str) -> str:
    """Return ``name`` if it is a valid username, else raise RemoteProtocolError.

    Usernames are 1-32 ASCII letters, digits, ``_``, ``-`` or ``.``, starting
    with a letter or digit.  The narrow alphabet is deliberate: a name appears
    inside every event line, so it must never carry spaces, quotes, angle
    brackets or anything a terminal would interpret.  This is the check for a
    name that came in; the formatters raise ``LocalProtocolError`` instead.
    """
    problem = username_problem(name)
    if problem is not None:
        raise RemoteProtocolError(problem)
    return name


def is_valid_username(name: str) -> bool:
    return username_problem(name) is None


def username_key(name: str) -> str:
    """The case-insensitive identity of a username (``Alice`` == ``alice``)."""
    return name.casefold()
