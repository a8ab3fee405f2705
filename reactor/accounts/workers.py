"""The accounts' worker threads: look-ups on their own, hashes in a bounded queue.

A login looks its name up in the store (one indexed read, or one round trip
to Redis); a password check, ``register`` or ``password`` spends a
memory-hard hash, orders of magnitude slower by design.  On one pool, a few
dozen registrations would make every login wait behind their hashes.  So the
look-ups have their own threads and never queue behind a hash, and the hashes
wait in a queue that is

* bounded: at most ``capacity`` hashes waiting or under way; the next one is
  refused at once, and its client told the server is busy;
* fair per address: one address holds at most ``per_address`` of them, so
  no address can fill the queue for the others.

Both counts are kept on the chat thread (a hash is counted when submitted and
when its result is back there), so they need no lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Executor(Protocol):
    def submit(self, fn: Callable[[], Any]) -> object: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...


class HashQueue:
    def __init__(self, executor: Executor, capacity: int, per_address: int) -> None:
        self.executor = executor
        self.capacity = capacity
        self.per_address = per_address
        self._held: dict[str, int] = {}
        self._total = 0

    def __len__(self) -> int:
        """Hashes waiting or under way."""
        return self._total

    def submit(self, host: str, run: Callable[[], Any]) -> bool:
        """Queue ``run`` for ``host``'s client; False (and nothing queued) if the
        queue or the address's share of it is full.  ``finished(host)`` must
        follow, on the chat thread, once it has run."""
        held = self._held.get(host, 0)
        if self._total >= self.capacity or held >= self.per_address:
            return False
        self._held[host] = held + 1
        self._total += 1
        try:
            self.executor.submit(run)
        except BaseException:
            self.finished(host)
            raise
        return True

    def finished(self, host: str) -> None:
        held = self._held.pop(host, 0) - 1
        if held > 0:
            self._held[host] = held
        self._total -= 1
