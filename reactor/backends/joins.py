"""Fan-outs joined: one sender's broadcasts of a turn queued to each recipient once.

A busy turn handles several lines of one client (a read that brought a few
broadcasts); each fans out to the same recipients.  Queued one by one, that
is a Python step per recipient per line.  Joined, a fan-out to the same
recipients as the turn's last one -- which queued its line for every one of
them -- waits in the server with the lines after it, and they are queued to
each recipient as one piece: at the end of the turn, or before anything else
is written to, closed or aborted on one of them.  One step per recipient,
not one per line (Redis appends each to each reply buffer, in C).

What each recipient receives, and in what order, is what queueing each line
would have given it; a recipient since over the high-water mark gets each
line from ``connection.send``, as a fan-out's rest does; web recipients get
one frame per line (``fan_out_framed``).

The select, threads and asyncio servers share this; each says what its turn
is and keeps the promises listed on :class:`JoinedFanOuts`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from reactor.web.transport import fan_out_framed

if TYPE_CHECKING:
    from reactor.chat import ChatService
    from reactor.connection import Connection
    from reactor.contracts import ConnectionEvents
    from reactor.transport import Transport


class JoiningServer(Protocol):
    """What a transport asks of a server with joined fan-outs (point 2 of
    :class:`JoinedFanOuts`); each backend's transport names the rest of
    what it asks of its server in a Protocol that extends this one."""

    joined: set[Connection] | None

    def queue_joined_before(self, connection: ConnectionEvents | None) -> None: ...

    def _queue_joined(self) -> None: ...


class JoinedFanOuts:
    """A server's joined fan-outs (see the module docstring).

    The backend's part:

    1. ``send_at_once`` first offers a fan-out to :meth:`_join` while
       ``_joined_to`` is set; after a fan-out that queued its line for every
       recipient (none returned), it sets ``_joined_to`` and
       ``_joined_turn``, so that the next one to the same recipients joins;
    2. a write to a connection in ``joined`` calls :meth:`_queue_joined`
       first (the joined lines go before it), and a close or abort calls
       :meth:`queue_joined_before`;
    3. the end of a turn calls :meth:`_end_joins` when ``_joined_to`` is set;
    4. ``_join_loop``, ``_join_gone`` and ``_join_leaving`` say how it queues.
    """

    chat: ChatService

    def __init__(self) -> None:
        # The recipients of this turn's last fan-out, and its turn; the
        # lines of later fan-outs to the same recipients, waiting to be
        # queued to them as one; and while lines wait, those recipients as
        # a set (what a write to one of them checks).
        self._joined_to: list[Connection] | None = None
        self._joined_turn = -1
        self._joined_lines: list[bytes] = []
        self.joined: set[Connection] | None = None

    def _join(self, data: bytes, connections: list[Connection], turn: int) -> bool:
        """A fan-out to the same recipients as the last one of this turn
        joins it (True): its line waits, with those of the fan-outs that
        joined before it, to be queued to each recipient as one piece.

        Joined only when that fan-out queued its line (its frame, for a web
        connection) for every recipient (none over the high-water mark or
        closed); then this line would be queued for each open one too,
        behind the other -- what joining does, in the same order."""
        if self._joined_turn != turn or connections != self._joined_to:
            if self.joined is not None:
                self._queue_joined()
            self._joined_to = None
            return False
        if self.joined is None:
            self.joined = set(connections)
        self._joined_lines.append(data)
        return True

    def queue_joined_before(self, connection: ConnectionEvents | None) -> None:
        """``connection`` is closing or cut off: the joined lines for it are
        queued first (a close drains them, a cut discards them, as when
        each line was queued on its own).  A write makes the same check,
        written out: it runs once per line written."""
        joined = self.joined
        if joined is not None and connection in joined:
            self._queue_joined()

    def _end_joins(self) -> None:
        """The turn is over: the joined lines are queued, nothing joins on."""
        if self.joined is not None:
            self._queue_joined()
        self._joined_to = None  # (its connections are not kept past the turn)

    def _queue_joined(self) -> None:
        """Queue the joined lines to their recipients with the backend's
        fan-out loop, as it would have queued each line when its fan-out
        ran; a recipient now over the high-water mark gets each line from
        connection.send, as a fan-out's rest does."""
        lines, connections = self._joined_lines, self._joined_to
        assert connections is not None
        self._joined_lines, self._joined_to, self.joined = [], None, None
        data = lines[0] if len(lines) == 1 else b"".join(lines)
        # Web recipients get the joined lines' frames, one per line.
        rest = fan_out_framed(self._join_loop, data, connections)
        if not rest:
            return
        stats = self.chat.stats
        for connection in rest:
            transport = connection.transport
            if connection.is_open:
                for line in lines:
                    stats.bytes_out -= len(line)  # counted by the fan-out; send counts it
                    try:
                        connection.send(line)
                    except Exception as error:
                        connection.fail(error)
            elif self._join_gone(transport):
                stats.bytes_out -= len(data)  # closed since: nothing sent, nothing counted
            else:
                # Leaving now (this runs within its leave, or its close):
                # queued as when its fan-out ran, so that a close drains it
                # and an abort discards it.
                web = transport.web
                self._join_leaving(transport, data if web is None else web.frame(data))

    # -- the backend's -----------------------------------------------------------

    def _join_loop(self, data: bytes, connections: list[Connection],
                   web: list[Connection] | None) -> list[Connection]:
        """The loop of send_at_once that queues (a FanOutLoop, see
        reactor.web.transport): ``data`` queued for each connection it can
        take below the high-water mark; returns the others."""
        raise NotImplementedError

    def _join_gone(self, transport: Transport) -> bool:
        """The transport of a connection no longer open has closed or is
        closing (its output is settled): the joined lines are not for it."""
        raise NotImplementedError

    def _join_leaving(self, transport: Transport, data: bytes) -> None:
        """Queue ``data`` (a frame, on a web connection) for a connection
        that is leaving in this very step: a close drains it, an abort
        discards it."""
        raise NotImplementedError
