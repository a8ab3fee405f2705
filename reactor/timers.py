"""Deadlines without cancellation, for both backends.

Every callback checks whether it still matters (is the session still waiting
for a username? still closing?), so nothing is ever cancelled and a stale
entry simply does nothing when it fires.  That keeps the structure a plain
heap.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable


class Timers:
    """A heap of (deadline, callback) for a single-threaded loop."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (deadline, next(self._order), callback))

    def timeout(self, now: float) -> float | None:
        """Seconds until the next deadline, or None if there is none."""
        return max(0.0, self._heap[0][0] - now) if self._heap else None

    def pop_due(self, now: float) -> list[Callable[[], None]]:
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due


class TimerThread:
    """The same heap served by one thread, for the threads backend.

    One thread for every deadline of the server, rather than a timer thread
    per connection: at 5,000 connections that is 5,000 fewer threads.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._timers = Timers()
        self._clock = clock
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="reactor-timers", daemon=True)
        self._thread.start()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        with self._changed:
            self._timers.call_at(deadline, callback)
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._stopped:
                    return
                due = self._timers.pop_due(self._clock())
                if not due:
                    self._changed.wait(self._timers.timeout(self._clock()))
                    continue
            for callback in due:
                callback()
