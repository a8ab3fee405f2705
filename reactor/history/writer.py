"""Writing history off the chat thread: a bounded queue and one writer thread.

Recording a delivered message is the hot path of every message when history
is on, and the stores' writes (a SQLite transaction, a Redis round trip) cost
far more one by one than together.  So a store's ``record`` only queues the
write here; one thread takes whatever has queued meanwhile and writes it in
one batch (one transaction, one pipeline), having waited ``LINGER`` for
more: a burst of messages is one batch, and a quiet server writes each
message a moment after it was sent.

Bounded whatever happens: beyond ``max_queued`` a write is dropped, and
logged (once, then once more when the writer has caught up), rather than
held without end while the disk or Redis does not answer.  A reader that
must see this node's own writes waits with :meth:`WriteBehind.settled`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("reactor")

T = TypeVar("T")

MAX_QUEUED = 10_000  # writes waiting at most
BATCH = 2048  # writes in one batch at most
# Seconds the writer waits for more before a batch smaller than BATCH: a
# transaction or a pipeline costs many times one row or one command, and
# each batch wakes this thread and has it take the interpreter from the
# chat thread once per statement, so the fewer the batches the better.  It
# bounds what a crash loses besides, and a history read waits for no linger
# (settled() cuts it short).
LINGER = 0.02


class WriteBehind(Generic[T]):
    """Runs ``write_batch`` on a thread of its own for what :meth:`put` queued."""

    def __init__(self, write_batch: Callable[[list[T]], None], what: str,
                 max_queued: int = MAX_QUEUED) -> None:
        self._write_batch = write_batch
        self._what = what  # the store, as log lines name it
        self._max_queued = max_queued
        self._queue: deque[T] = deque()
        self._guard = threading.Lock()
        self._changed = threading.Condition(self._guard)
        # Writes taken from the queue so far, and written (or given up) so far.
        self._taken = 0
        self._written = 0
        self._idle = False  # the writer sleeps until something is queued
        self._dropped = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        # The hot path of every message kept, so no lock on it: a deque's
        # append is atomic, and the writer is woken only when it sleeps on
        # an empty queue.  It says so (_idle) before it looks at the queue
        # a last time, so an item appended after that look finds _idle set.
        queue = self._queue
        if len(queue) >= self._max_queued:
            self._drop()
            return
        queue.append(item)
        if self._idle:
            with self._guard:
                self._changed.notify_all()

    def _drop(self) -> None:
        with self._guard:
            self._dropped += 1
            if self._dropped == 1:
                log.warning("%s is behind: messages are not being kept", self._what)

    def settled(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until what was queued so far is written."""
        with self._changed:
            target = self._taken + len(self._queue)
            self._changed.notify_all()  # no lingering: someone waits
            self._changed.wait_for(lambda: self._written >= target, timeout=timeout)

    def close(self, timeout: float) -> None:
        """Write what is queued, then stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closing:
                    self._idle = True
                    if not self._queue:  # appended before _idle was set: no wakeup came
                        self._changed.wait()
                    self._idle = False
                if not self._queue:
                    return  # closing, and everything was written
                if len(self._queue) < BATCH and not self._closing:
                    # Let the batch grow while the chat thread is in a burst
                    # (a reader in settled() or close() cuts this short).
                    self._changed.wait(LINGER)
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                self._taken += len(batch)
            try:
                self._write_batch(batch)
            except Exception as error:  # the chat goes on without these
                log.warning("%s failed (%s); messages not kept: %d", self._what, error, len(batch))
            with self._changed:
                self._written += len(batch)
                if self._dropped and not self._queue:
                    log.warning("%s caught up; messages not kept meanwhile: %d", self._what,
                                self._dropped)
                    self._dropped = 0
                self._changed.notify_all()
