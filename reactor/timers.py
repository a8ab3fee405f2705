"""Cancellable deadlines for the backends: a heap, and a thread that serves one.

A cancelled timer drops its callback at once -- the callback holds its
connection, and a closed connection must be freed at once, not when a
30-second login deadline would have fired -- and the heap is rebuilt without
the dead entries once they are the majority (asyncio's rule), looked for each
time the heap has doubled, so that churning connections cannot grow it
without bound.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable


class Timer:
    __slots__ = ("callback", "deadline", "order")

    def __init__(self, deadline: float, order: int, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.order = order
        self.callback: Callable[[], None] | None = callback

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.order) < (other.deadline, other.order)

    def cancel(self) -> None:
        self.callback = None


class Timers:
    """A heap of timers for a single-threaded loop.

    The heap holds ``(deadline, order, timer)`` tuples, so that it compares
    in C: a Timer's ``__lt__`` is a Python call, several per push.
    """

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._next_scan = 64  # heap size at which _compact next looks

    def __len__(self) -> int:
        return len(self.heap)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        order = next(self._order)
        timer = Timer(deadline, order, callback)
        heapq.heappush(self.heap, (deadline, order, timer))
        return timer

    def timeout(self, now: float) -> float | None:
        """Seconds until the next deadline, or None if there is none."""
        heap = self.heap
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
        return max(0.0, heap[0][0] - now) if heap else None

    def due(self, now: float) -> bool:
        """Whether a deadline (perhaps of a cancelled timer) has come, or the
        heap should be looked over: pop_due has something to do."""
        heap = self.heap
        return bool(heap) and (heap[0][0] <= now or len(heap) >= self._next_scan)

    def pop_due(self, now: float) -> list[Callable[[], None]]:
        due = []
        heap = self.heap
        while heap and heap[0][0] <= now:
            callback = heapq.heappop(heap)[2].callback
            if callback is not None:
                due.append(callback)
        self._compact()
        return due

    def _compact(self) -> None:
        # Scanned only once the heap has doubled since the last scan, not on
        # every pass: with thousands of live timers (a login storm's
        # deadlines) a scan per pass cost more than the timers themselves.
        heap = self.heap
        if len(heap) < self._next_scan:
            return
        live = [entry for entry in heap if entry[2].callback is not None]
        if len(live) * 2 < len(heap):
            heapq.heapify(live)
            self.heap = live
        self._next_scan = max(64, 2 * len(live))


class TimerThread:
    """The same heap served by one thread, for the threads backend.

    One thread for every deadline of the server, rather than a timer thread
    per connection: at 5,000 connections that is 5,000 fewer threads.
    Callbacks run on this thread; the caller wraps them in its lock.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._timers = Timers()
        self._clock = clock
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="reactor-timers", daemon=True)
        self._thread.start()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        with self._changed:
            timer = self._timers.call_at(deadline, callback)
            self._changed.notify()
        return timer

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
