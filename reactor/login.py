"""Logging in: from a client's first line to its name online.

A login line names a user; with registered names (``--accounts``) the login
step may ask for a password first; then the name is claimed on the roster,
which answers at once in memory and later in a cluster.  The client hears
the verdict -- an invalid or taken name, the service out of reach -- or its
connection starts chatting and the chat announces it.  Logins are metered
per address (:class:`~reactor.flow.LoginMeters`), and a client that does not
log in in time is told so and closed.

Separate from :mod:`reactor.chat` because it is the other phase of a
connection: the chat acts on the lines of users who have a name, this on
those of clients still getting one.  The two share the roster and the
counters, and the chat is told of each new user here (``on_login``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from protocol import (
    InvalidUsername,
    ProtocolError,
    ServiceUnavailable,
    UsernameTaken,
    decode_line,
    format_event,
    parse_login,
)
from protocol.events import LoginTimedOut
from reactor.connection import Connection, Slot
from reactor.contracts import LoginStep, Roster
from reactor.flow import FloodLimits, LoginMeters
from reactor.metrics import ChatStats

log = logging.getLogger("reactor")

_LOGIN_TIMED_OUT = format_event(LoginTimedOut())


class Login:
    """The lines of a connection in its login and password phases, and the
    claim of its name on the roster."""

    def __init__(self, whiteboard: Roster[Connection], accounts: LoginStep | None,
                 flood: FloodLimits, stats: ChatStats,
                 on_login: Callable[[Connection, str], None]) -> None:
        self.whiteboard = whiteboard
        self.accounts = accounts
        self.stats = stats
        # Logins per address (asked by the connection through the chat's
        # login_wait, emptied of paid-up addresses by its housekeeping).
        self.meters = LoginMeters(flood)
        # The chat's: a user of this server is online (announce it).
        self._on_login = on_login

    def timed_out(self, connection: Connection) -> None:
        self.stats.login_refusals["timed_out"] += 1
        connection.send(_LOGIN_TIMED_OUT)
        connection.close("login timed out")

    def line(self, connection: Connection, raw: bytes) -> None:
        """A line in the login phase: the name the client asks for."""
        if not raw.strip(b" "):
            return
        try:
            name = parse_login(decode_line(raw)).name
        except ProtocolError as error:
            self.stats.login_refusals["invalid_name"] += 1
            connection.send(format_event(InvalidUsername(error.reason)))
            return
        if self.accounts is not None:
            # Taken already: say so now, rather than after a password.
            taken_as = self.whiteboard.surely_taken(name)
            if taken_as is not None:
                self.stats.login_refusals["name_taken"] += 1
                connection.send(format_event(UsernameTaken(taken_as)))
                return
            self.accounts.login(connection, name, self.claim)  # may ask for a password
            return
        self.claim(connection, name)

    def password_line(self, connection: Connection, raw: bytes) -> None:
        """A line in the password phase: the login step's to judge."""
        if raw.strip(b" ") and self.accounts is not None:
            self.accounts.password_line(connection, raw, self.claim)

    def claim(self, connection: Connection, name: str) -> None:
        """Put ``name`` online for ``connection`` (the login step's ``admit``);
        the next line waits for the verdict."""
        slot = connection.answer_later()
        self.whiteboard.claim(
            name, connection,
            connection.guard(lambda taken, refused=None: self._claimed(
                connection, slot, name, taken, refused)),
        )

    def _claimed(self, connection: Connection, slot: Slot, name: str, taken_as: str | None,
                 refused: str | None = None) -> None:
        # Said at once, not through the slot: while logging in nothing else
        # is awaited before it, and a cluster's roster sends the newcomer the
        # presence notices that crossed its claim right after this.
        if not connection.is_open:
            # Gone while the claim was under way: give the name back.
            if taken_as is None and refused is None:
                self.whiteboard.release(name)
        elif refused is not None:
            # Undecided (the chat service is out of reach): say so; the
            # client may try again on this connection.
            self.stats.login_refusals["unavailable"] += 1
            connection.send(format_event(ServiceUnavailable("try again later")))
        elif taken_as is not None:
            self.stats.login_refusals["name_taken"] += 1
            connection.send(format_event(UsernameTaken(taken_as)))
        else:
            self.stats.logins += 1
            connection.logged_in(name)
            log.info("%s connected (%s)", name, connection.peer_host)
            self._on_login(connection, name)
        connection.answer(slot)
