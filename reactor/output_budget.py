"""The output budget: what the clients' queues may hold, alone and together.

Memory stays bounded whatever the readers do, in the manner of Redis's
``client-output-buffer-limit``, and a slow reader never makes anybody else
wait for it:

* one connection above ``output_limit`` for ``slow_consumer_grace`` seconds
  is cut off (the soft limit; the hard one is the transport's own);
* all queues together stay within ``output_budget``: over half of it (the
  high-water mark) every sender's broadcasts wait, and their input with them
  in TCP, until the total is under a quarter; meanwhile, or over the budget,
  the largest queues of clients that do not read are cut -- never a reader's.

Separate from :mod:`reactor.chat` because it is another job on another
clock: the chat decides what each line causes, and this judges, on the
chat's housekeeping timer, what all of that left queued.  The chat asks it
one thing per broadcast (are broadcasts held?) and tells it one thing per
fan-out (the bytes it may have added, :attr:`OutputBudget.fanned_out`): an
upper bound, so that all queues are counted only once it passes the mark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from reactor.config import ServerConfig
from reactor.connection import Connection
from reactor.phases import Phase
from reactor.scheduling import LoopScheduler

log = logging.getLogger("reactor")

# While broadcasts wait for the queues to drain: seconds between counts.
HELD_RECOUNT_INTERVAL = 0.05


class OutputBudget:
    """The soft limit per connection and the budget of all queues together,
    over the connections of one chat (the set the chat keeps: this reads it,
    never changes it)."""

    def __init__(self, config: ServerConfig, connections: Collection[Connection],
                 clock: Callable[[], float], scheduler: LoopScheduler) -> None:
        self.config = config
        self._connections = connections
        self._clock = clock
        self._scheduler = scheduler
        # Over this, broadcasts wait (the fan-out compares against it).
        self.high_water = config.output_budget // 2
        # All queues' total at the last count, and what fan-outs may have
        # added since (the chat adds to it): their sum is an upper bound.
        self.total = 0
        self.fanned_out = 0
        # The senders whose broadcasts wait while the total is over the
        # high-water mark; None: none wait.
        self.held: list[Connection] | None = None
        # The connections with output queued at the last check.
        self._queued_at_check: set[Connection] = set()

    def queued(self) -> int:
        """Bytes queued for all clients now (O(connections))."""
        return sum(connection.transport.queued for connection in self._connections)

    def check(self) -> None:
        """The housekeeping's check: cut the connections over the soft limit
        for longer than the grace period, then keep the budget."""
        config = self.config
        now = self._clock()
        total = 0
        stalled: list[tuple[int, Connection]] = []
        previous, queued = self._queued_at_check, set()
        for connection in list(self._connections):
            size = connection.transport.queued
            if not size:
                continue
            if size <= config.output_limit:
                connection.over_soft_limit_since = None
            elif connection.over_soft_limit_since is None:
                connection.over_soft_limit_since = now
            elif now - connection.over_soft_limit_since >= config.slow_consumer_grace:
                connection.guard(connection.abort)(
                    f"slow consumer: more than {config.output_limit} bytes of output queued"
                    f" for {config.slow_consumer_grace:g} s"
                )
                continue  # its queue is discarded: it no longer counts against the budget
            total += size
            output = connection.transport.output
            if connection in previous and not output.progressed:
                # Output waited at the last check too, and the kernel has
                # taken none of it since: this client is not reading.
                stalled.append((size, connection))
            output.progressed = False
            queued.add(connection)
        self._queued_at_check = queued
        self._keep(total, stalled)

    def _keep(self, total: int, stalled: list[tuple[int, Connection]]) -> None:
        """All queues together stay within the budget, and no reader is cut
        for it.  Over the high-water mark, broadcasts wait until the total
        is under a quarter (_recount_held); meanwhile, or over the budget,
        the largest queues of clients that do not read are cut."""
        budget = self.config.output_budget
        held = self.held
        limit = budget // 4 if held is not None else budget
        if total > limit and stalled:
            stalled.sort(key=lambda item: item[0], reverse=True)
            log.warning("Output queued for all clients (%d bytes) is over the budget of %d"
                        " bytes or its high-water mark; cutting off the largest queues of"
                        " clients that do not read", total, budget)
            for size, connection in stalled:
                if total <= limit:
                    break
                if connection.phase is not Phase.CLOSED:
                    connection.guard(connection.abort)(
                        "slow consumer: cut to keep the server's output budget"
                    )
                    total -= size
        self.total, self.fanned_out = total, 0
        if held is None and total > self.high_water:
            self._hold_broadcasts(total)

    def count(self) -> None:
        """Count all queues again, fan-outs having perhaps taken the total
        past the high-water mark (then broadcasts wait: _keep)."""
        total = self._recount()
        if total > self.high_water and self.held is None:
            self._hold_broadcasts(total)

    def hold(self, connection: Connection, line: bytes) -> None:
        """Over the high-water mark: this broadcast ``line`` waits, and its
        sender's further input with it, until the queues are under a quarter."""
        assert self.held is not None
        connection.pending_lines.appendleft(line)
        connection.hold_lines()
        self.held.append(connection)

    def _hold_broadcasts(self, total: int) -> None:
        log.warning("Output queued for all clients (%d bytes) is over half the budget of"
                    " %d bytes; broadcasts wait until it is under a quarter",
                    total, self.config.output_budget)
        self.held = []
        self._scheduler.call_later(HELD_RECOUNT_INTERVAL, self._recount_held)

    def _recount_held(self) -> None:
        """While broadcasts wait: are the queues under a quarter of the budget yet?"""
        held = self.held
        if held is None:
            return  # released by the housekeeping meanwhile
        total = self._recount()
        if total > self.config.output_budget // 4:
            self._scheduler.call_later(HELD_RECOUNT_INTERVAL, self._recount_held)
            return
        self.held = None
        for connection in held:
            if connection.is_open:
                connection.guard(connection.release_lines)()

    def _recount(self) -> int:
        total = self.queued()
        self.total, self.fanned_out = total, 0
        return total
