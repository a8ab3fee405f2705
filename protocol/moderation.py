"""The operators' commands: kick, ban, unban, mute, unmute, bans.

Their rows are in :data:`protocol.commands.COMMANDS` like every command's;
their values, parsers and formatters live here, with the two argument kinds
only they use:

* a **target**: a username, or an IP address (IPv4 or IPv6, written as
  :mod:`ipaddress` writes it).  A target that reads as an IP address is an
  address, even though a username may be written with digits and dots.
* a **duration**: a whole number and one unit, ``s``, ``m``, ``h`` or ``d``
  (``90s``, ``10m``, ``2h``, ``7d``), at most :data:`MAX_DURATION` in all.
  Left out, a ban or a mute lasts until it is lifted.

``ban NAME|ADDRESS [DURATION] [REASON]``: the word after the target is a
duration when it reads as one, else the reason starts there.  A reason is
written like a message (quoted with escapes, or bare to the end of the
line); the formatter always quotes it, so a reason that begins like a
duration survives the round trip.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated

from protocol.arguments import (
    Argument,
    Command,
    Message,
    Username,
    check_message,
    checked_name,
    quote,
    read_text,
)
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.usernames import username_problem

Target = Annotated[str, Argument.TARGET]
Duration = Annotated[str, Argument.DURATION]
Reason = Message

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 3650 * 86400  # ten years: longer is "until lifted", which leaving it out says
DURATION_PATTERN = "[0-9]{1,9}[smhd]"
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")


def duration_seconds(duration: str) -> int:
    """Seconds in a duration written as this module's docstring says."""
    match = _DURATION.fullmatch(duration)
    if match is None:
        raise ValueError(f"not a duration: {duration!r}")
    return int(match.group(1)) * UNITS[match.group(2)]


def duration_problem(duration: str) -> str | None:
    """Why ``duration`` is not one, or None."""
    match = _DURATION.fullmatch(duration)
    if match is None:
        return "a duration is a number and a unit: 30s, 10m, 2h or 7d"
    if str(int(match.group(1))) != match.group(1) or match.group(1) == "0":
        return "a duration is a positive number without leading zeros, then s, m, h or d"
    if duration_seconds(duration) > MAX_DURATION:
        return "a duration is at most 3650d; leave it out for no end"
    return None


def is_address(target: str) -> bool:
    """Does the target name an IP address (rather than a user)?"""
    try:
        ipaddress.ip_address(target)
    except ValueError:
        return False
    return True


def canonical_address(host: str) -> str:
    """How an address is written and compared: ``ipaddress``'s own spelling
    (an IPv4-mapped IPv6 peer counts as its IPv4 address)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


@dataclass(frozen=True, slots=True)
class Kick(Command):
    """Disconnect a user now, telling them why; they may log in again."""

    name: Username
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class Ban(Command):
    """Keep a name or an address out, for a while or until unbanned; whoever
    it names is disconnected now."""

    target: Target
    duration: Duration | None = None
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class Unban(Command):
    target: Target


@dataclass(frozen=True, slots=True)
class Mute(Command):
    """Refuse a user's messages, for a while or until unmuted."""

    name: Username
    duration: Duration | None = None


@dataclass(frozen=True, slots=True)
class Unmute(Command):
    name: Username


@dataclass(frozen=True, slots=True)
class Bans(Command):
    """List the bans and mutes in force."""


# -- reading ---------------------------------------------------------------------


def _first_word(arguments: str) -> tuple[str, str]:
    word, _, rest = arguments.partition(" ")
    if "\t" in word:
        raise RemoteProtocolError("a tab does not separate words; use a space")
    return word, rest.lstrip(" ")


def _name(word: str) -> str:
    problem = username_problem(word)
    if problem is not None:
        raise RemoteProtocolError(f"not a valid username: {problem}")
    return word


def _target(word: str) -> str:
    if is_address(word):
        return canonical_address(word)
    return _name(word)


def _duration(word: str) -> str:
    problem = duration_problem(word)
    if problem is not None:
        raise RemoteProtocolError(problem)
    return word


def _reason(rest: str) -> str | None:
    return read_text(rest, "reason") if rest else None


def _looks_like_duration(word: str) -> bool:
    return _DURATION.fullmatch(word) is not None


def parse_kick(arguments: str) -> Kick | None:
    word, rest = _first_word(arguments)
    return Kick(_name(word), _reason(rest)) if word else None


def parse_ban(arguments: str) -> Ban | None:
    word, rest = _first_word(arguments)
    if not word:
        return None
    duration = None
    second, after = _first_word(rest)
    if _looks_like_duration(second):
        duration, rest = _duration(second), after
    return Ban(_target(word), duration, _reason(rest))


def parse_unban(arguments: str) -> Unban | None:
    word, rest = _first_word(arguments)
    return Unban(_target(word)) if word and not rest else None


def parse_mute(arguments: str) -> Mute | None:
    word, rest = _first_word(arguments)
    if not word:
        return None
    second, after = _first_word(rest)
    if after or (second and not _looks_like_duration(second)):
        return None
    return Mute(_name(word), _duration(second) if second else None)


def parse_unmute(arguments: str) -> Unmute | None:
    word, rest = _first_word(arguments)
    return Unmute(_name(word)) if word and not rest else None


# -- writing ---------------------------------------------------------------------


def _checked_target(target: str) -> str:
    if is_address(target):
        if canonical_address(target) != target:
            raise LocalProtocolError(f"write the address as {canonical_address(target)}")
        return target
    return checked_name(target)


def _checked_duration(duration: str | None) -> str:
    if duration is None:
        return ""
    problem = duration_problem(duration)
    if problem is not None:
        raise LocalProtocolError(problem)
    return " " + duration


def _quoted_reason(reason: str | None) -> str:
    if reason is None:
        return ""
    check_message(reason)
    return " " + quote(reason)


def format_kick(command: Kick) -> str:
    return checked_name(command.name) + _quoted_reason(command.reason)


def format_ban(command: Ban) -> str:
    return (_checked_target(command.target) + _checked_duration(command.duration)
            + _quoted_reason(command.reason))


def format_unban(command: Unban) -> str:
    return _checked_target(command.target)


def format_mute(command: Mute) -> str:
    return checked_name(command.name) + _checked_duration(command.duration)


def format_unmute(command: Unmute) -> str:
    return checked_name(command.name)
