"""The phases of a client connection and every move between them, as one table.

In the manner of h11's ``_state.py``: :class:`~reactor.connection.Connection`
changes phase only through :func:`next_phase`, so that what can follow what is
written once, here, and a move the table does not list is a bug that raises,
never a state nobody planned::

    LOGIN --(password asked)--> PASSWORD --(password done)--> LOGIN
    LOGIN --(name claimed)--> CHATTING
    LOGIN, PASSWORD, CHATTING --(leave: bye, end of input, timeout, shutdown, abort)--> CLOSING
    CLOSING --(socket closed)--> CLOSED
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    LOGIN = "awaiting username"
    PASSWORD = "awaiting password"  # the next line is a registered name's password
    CHATTING = "chatting"
    CLOSING = "closing"  # no more input is handled; queued output drains
    CLOSED = "closed"


class Move(enum.Enum):
    PASSWORD_ASKED = "password asked"
    PASSWORD_DONE = "password done"
    NAME_CLAIMED = "name claimed"
    LEAVE = "leave"
    SOCKET_CLOSED = "socket closed"


LOGGING_IN = frozenset({Phase.LOGIN, Phase.PASSWORD})
OPEN = LOGGING_IN | {Phase.CHATTING}

#: (phase, move) -> the phase it leads to; a move not listed is a bug.
TRANSITIONS: dict[tuple[Phase, Move], Phase] = {
    (Phase.LOGIN, Move.PASSWORD_ASKED): Phase.PASSWORD,
    (Phase.PASSWORD, Move.PASSWORD_DONE): Phase.LOGIN,
    (Phase.LOGIN, Move.NAME_CLAIMED): Phase.CHATTING,
    **{(phase, Move.LEAVE): Phase.CLOSING for phase in OPEN},
    **{(phase, Move.SOCKET_CLOSED): Phase.CLOSED for phase in (*OPEN, Phase.CLOSING)},
}


def next_phase(phase: Phase, move: Move) -> Phase:
    """The phase ``move`` leads to from ``phase``; RuntimeError if none."""
    try:
        return TRANSITIONS[phase, move]
    except KeyError:
        raise RuntimeError(f"{move.value!r} is not a move from {phase.name}") from None
