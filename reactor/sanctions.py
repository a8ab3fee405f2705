"""Sanctions on this server's users: what operators' kicks, bans and mutes do here.

The operator commands, the store of bans and mutes and their spread across a
cluster are the login step's (``reactor/accounts/moderation.py``); it tells
the chat side what to do through :class:`~reactor.contracts.ModerationEvents`,
which :class:`Sanctions` keeps: the users named are disconnected with their
line, or muted until a time, and a muted user's messages are refused.

Separate from :mod:`reactor.chat` because none of it is what a line causes:
it acts on the roster's sessions when the login step says so, and the chat
asks it one thing, only for a user under a mute (:meth:`Sanctions.refuses`).
"""

from __future__ import annotations

from collections.abc import Callable

from protocol import YouAreMuted, canonical_address, format_event, username_key
from reactor.connection import Connection
from reactor.contracts import Roster

_MUTED = format_event(YouAreMuted())


class Sanctions:
    """The chat side of moderation (:class:`~reactor.contracts.ModerationEvents`)."""

    def __init__(self, whiteboard: Roster[Connection], clock: Callable[[], float]) -> None:
        self.whiteboard = whiteboard
        self.clock = clock

    def refuses(self, connection: Connection) -> bool:
        """Refuse the message of a muted user (True), or lift a mute past its end."""
        muted_until = connection.muted_until
        if muted_until is not None and self.clock() < muted_until:
            connection.reply(_MUTED)
            return True
        connection.muted_until = None
        return False

    def moderation_disconnect(self, targets: dict[str, tuple[bytes, str]]) -> set[str]:
        hit: set[str] = set()
        for session in list(self.whiteboard.online_sessions()):
            if session.username is None or not session.is_open:
                continue
            target = username_key(session.username)
            if target not in targets:
                target = canonical_address(session.peer_host)
                if target not in targets:
                    continue
            line, reason = targets[target]
            hit.add(target)
            session.send(line)
            session.close(reason)
        return hit

    def moderation_mutes(self, mutes: dict[str, tuple[float, bytes | None]],
                         complete: bool) -> None:
        now = self.clock()
        for session in list(self.whiteboard.online_sessions()):
            if session.username is None:
                continue
            was_muted = session.muted_until is not None and session.muted_until > now
            found = mutes.get(username_key(session.username))
            if found is None:
                if complete:
                    session.muted_until = None
                continue
            seconds, line = found
            session.muted_until = now + seconds if seconds > 0 else None
            if line is not None and was_muted != (seconds > 0):
                session.send(line)

    def online_anywhere(self, name: str) -> bool:
        return self.whiteboard.lookup(name) is not None
