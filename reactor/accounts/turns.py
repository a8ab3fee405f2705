"""Whose password is checked next: one check at a time per name and per address.

The back-off (:mod:`reactor.accounts.backoff`) counts a wrong password only
once its hash is done.  Checked alone, it would let every guess that arrives
while a hash is under way through -- and, when a back-off ends, every guess
that waited for it.  So a password check takes its *turn* before it is
hashed:

* at most one check is under way per name and per address (the turn holds
  both keys until the check's verdict is counted);
* a check starts only when neither key is backing off;
* when a key is free again, the waiting checks that share it are tried in
  order of suspicion -- the fewest recent failures of their address, then of
  their name, then first come -- so one of them goes per back-off window, and
  a guesser's queue does not stand in front of the name's owner typing from
  another address.

Every waiting check belongs to a connection that has one password line in
hand and reads nothing more, so the waiting are at most the connections
logging in.  A waiting check whose connection has gone is dropped the next
time its keys are looked at, which is at the latest when its back-off ends.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from reactor.accounts.backoff import BackOff
from reactor.contracts import TimerHandle


@dataclass(eq=False)
class Check:
    """A password check waiting for its turn."""

    name: str  # the name's key (username_key)
    host: str
    start: Callable[[], None]  # runs the check; the turn is taken
    alive: Callable[[], bool]  # the connection is still open
    gone: Callable[[], None]  # the connection left while waiting
    order: int
    waiting: bool = True
    timer: TimerHandle | None = field(default=None, repr=False)


class Turns:
    def __init__(self, names: BackOff, addresses: BackOff, clock: Callable[[], float],
                 call_later: Callable[[float, Callable[[], None]], TimerHandle]) -> None:
        self.names = names
        self.addresses = addresses
        self._clock = clock
        self._call_later = call_later
        self._by_name: dict[str, list[Check]] = {}
        self._by_host: dict[str, list[Check]] = {}
        self._checking_names: set[str] = set()
        self._checking_hosts: set[str] = set()
        self._order = itertools.count()

    def waiting(self) -> int:
        """Checks waiting for their turn."""
        return sum(len(checks) for checks in self._by_name.values())

    def take(self, name: str, host: str, start: Callable[[], None],
             alive: Callable[[], bool], gone: Callable[[], None]) -> None:
        """Run ``start`` once the check may go (perhaps now); ``done`` must
        follow it, whatever the verdict."""
        check = Check(name, host, start, alive, gone, next(self._order))
        self._by_name.setdefault(name, []).append(check)
        self._by_host.setdefault(host, []).append(check)
        self._try([check])

    def done(self, name: str, host: str) -> None:
        """The check that held these keys has counted its verdict."""
        self._checking_names.discard(name)
        self._checking_hosts.discard(host)
        self._wake(name, host)

    def _wake(self, name: str, host: str) -> None:
        self._try(itertools.chain(self._by_name.get(name, ()), self._by_host.get(host, ())))

    def _try(self, candidates: Iterable[Check]) -> None:
        now = self._clock()

        def suspicion(check: Check) -> tuple[int, int, int]:
            return (self.addresses.failures(check.host, now),
                    self.names.failures(check.name, now), check.order)

        for check in sorted(set(candidates), key=suspicion):
            if not check.waiting:
                continue  # started or dropped meanwhile (a check may finish at once)
            if not check.alive():
                self._remove(check)
                check.gone()
                continue
            if check.name in self._checking_names or check.host in self._checking_hosts:
                continue  # woken when that check is done
            wait = max(self.names.wait(check.name, now), self.addresses.wait(check.host, now))
            if wait > 0:
                if check.timer is None:
                    check.timer = self._call_later(wait, functools.partial(self._ring, check))
                continue
            self._remove(check)
            self._checking_names.add(check.name)
            self._checking_hosts.add(check.host)
            check.start()

    def _ring(self, check: Check) -> None:
        check.timer = None
        if check.waiting:
            self._wake(check.name, check.host)

    def _remove(self, check: Check) -> None:
        check.waiting = False
        if check.timer is not None:
            check.timer.cancel()
            check.timer = None
        for index, key in ((self._by_name, check.name), (self._by_host, check.host)):
            checks = index[key]
            checks.remove(check)
            if not checks:
                del index[key]
