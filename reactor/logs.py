"""Logging that never blocks serving.

The log goes to stdout, and stdout is not ours: a terminal after Ctrl-S, a
pipe nobody reads, a ``| head -1`` that has gone.  Writing to it from the
serving thread would let any of those stop the server (no client answered,
SIGTERM ignored until the pipe drains).  So:

* every record goes through :class:`DroppingQueueHandler` into a queue with a
  bound (:data:`QUEUE_BOUND` records); when the queue is full the record is
  dropped and counted -- the caller never waits -- and once there is room
  again the count is logged as one line, ``N log lines dropped (output was
  not keeping up)``, in the place where the gap is;
* one :class:`LogWriter` thread (a ``QueueListener``) takes records off the
  queue, makes them into lines (``reactor.log_format``: the text form or
  JSON, timestamped; the serving thread queues a record without formatting
  it) and writes them to stdout, several at a time when they come fast;
* if stdout is broken (closed pipe, hung-up terminal) the writer stops
  writing to it, says so in one line on stderr, and discards the log from
  then on: no ``--- Logging error ---`` tracebacks, and the server serves on;
* at shutdown :meth:`LogPipeline.stop` lets the writer finish, but waits at
  most :data:`STOP_TIMEOUT` seconds for an output that does not move.

The queue is a ``queue.SimpleQueue``, with the bound checked against its
``qsize()``, rather than a ``queue.Queue(maxsize)``: ``Queue.put_nowait``
takes a non-reentrant lock and runs Python code while holding it, so a signal
handler that logs (SIGHUP, SIGUSR1: see ``reactor.signals``) arriving just
then on the same thread would deadlock.  ``SimpleQueue.put`` is reentrant
(it is documented as safe from signal handlers).  With several threads
logging at once the bound can be passed by a record or two; it is a bound on
memory, not an exact count.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import select
import time
from collections.abc import Callable

from reactor.log_format import formatter, ready_to_queue

FORMAT = "[Server] %(message)s"
# About 10,000 x ~1 KB per queued record: ~10 MB at worst, and at the
# default INFO level a few seconds of a busy server's messages.
QUEUE_BOUND = 10_000
# How long shutdown waits for the log to be written out when stdout does not
# take it (a full pipe nobody reads): after that the server exits anyway.
STOP_TIMEOUT = 2.0
# The writer collects lines while more are queued, and writes when the queue
# is empty, when this much is collected, or when the oldest waited this long.
WRITE_SIZE = 64 * 1024
WRITE_DELAY = 0.05
# Logged once per run, and what scripts and tests wait for: never dropped,
# so that a flood cannot hide that the server is up, or that it stopped.
NEVER_DROPPED = frozenset({"Listening on port %d...", "Listening on port %d (TLS)...",
                           "Admin endpoint on port %d (/metrics, /healthz, /readyz)",
                           "Server stopped."})


def complain(line: str) -> None:
    """One line on stderr, if stderr is there at all; never raises."""
    try:
        os.write(2, (line + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _dropped_notice(count: int) -> logging.LogRecord:
    lines = "log line" if count == 1 else "log lines"
    return logging.LogRecord(
        "reactor", logging.WARNING, __file__, 0,
        f"%d {lines} dropped (output was not keeping up)", (count,), None,
    )


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never blocks: a full queue drops the record and counts it.

    ``dropped_total`` counts every record dropped since the start; the drops
    not yet reported become one notice record, queued just before the next
    record that finds room.
    """

    def __init__(self, log_queue: queue.SimpleQueue[logging.LogRecord], bound: int) -> None:
        super().__init__(log_queue)
        self._queued = log_queue.qsize
        self.bound = bound
        self.dropped_total = 0
        self._unreported = 0
        self.closed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.closed:
            return
        # Decided before prepare(), which formats the message: under
        # overload a record that is going to be dropped costs nothing more.
        if self._queued() >= self.bound and not _never_dropped(record):
            # Counters updated without a lock of our own: Handler.handle()
            # already serialises threads; only a signal handler on the same
            # thread could interleave, and at worst miscount one drop.
            self._unreported += 1
            self.dropped_total += 1
            return
        super().emit(record)

    def enqueue(self, record: logging.LogRecord) -> None:
        if self._unreported:
            count, self._unreported = self._unreported, 0
            self.queue.put_nowait(_dropped_notice(count))
        self.queue.put_nowait(record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Not QueueHandler.prepare, which formats the record here, on the
        # serving thread: the writer thread formats it (reactor.log_format).
        return ready_to_queue(record)


def _never_dropped(record: logging.LogRecord) -> bool:
    return record.msg in NEVER_DROPPED or bool(getattr(record, "never_dropped", False))


class StdoutWriter(logging.Handler):
    """Writes formatted records to a file descriptor; runs on the writer thread only.

    Writes with ``os.write`` on the descriptor rather than through
    ``sys.stdout``: a daemon thread blocked inside ``sys.stdout``'s buffered
    writer at exit makes the interpreter abort ("could not acquire lock for
    <stdout> at interpreter shutdown"); blocked in a bare ``write(2)`` it is
    simply ended with the process.
    """

    def __init__(self, fd: int, queued: Callable[[], int], program: str,
                 label: str = "Server") -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT.replace("Server", label)))
        self.fd = fd
        self.broken = False
        self._queued = queued
        self._program = program
        self._buffer = bytearray()
        self._oldest = 0.0

    def handle(self, record: logging.LogRecord) -> bool:
        """``Handler.handle`` without taking the handler's lock around ``emit``.

        Only the writer thread calls this handler, so the lock has nothing to
        serialise; and ``logging.shutdown()``, run at exit, takes every
        handler's lock: held by a writer blocked on a full pipe, it would keep
        the process from exiting.  The lock itself stays the standard one, as
        ``Handler.handle`` and ``logging.shutdown`` of every version expect.
        """
        kept = self.filter(record)
        if isinstance(kept, logging.LogRecord):  # a filter's replacement (3.12+)
            record = kept
        if kept:
            self.emit(record)
        return bool(kept)

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer += line.encode("utf-8", "backslashreplace") + b"\n"
        if (not self._queued() or len(self._buffer) >= WRITE_SIZE
                or time.monotonic() - self._oldest >= WRITE_DELAY):
            self.write_out()

    def write_out(self) -> None:
        """Write everything collected; on a broken output, give it up for good."""
        buffer = self._buffer
        try:
            while buffer and not self.broken:
                try:
                    written = os.write(self.fd, buffer)
                except BlockingIOError:  # someone made our stdout non-blocking
                    select.select([], [self.fd], [])
                    continue
                del buffer[:written]
        except OSError as error:
            self.broken = True
            buffer.clear()
            complain(
                f"{self._program}: cannot write the log to stdout "
                f"({error.strerror or error}); log lines are discarded from now on"
            )


class LogWriter(logging.handlers.QueueListener):
    """The QueueListener thread, with a stop that gives up on a stuck output."""

    def stop_within(self, timeout: float) -> bool:
        """Ask the thread to finish what is queued and end; False if it did
        not within ``timeout`` (it is a daemon thread, and is left behind)."""
        thread = self._thread  # type: ignore[attr-defined]
        if thread is None:
            return True
        self.enqueue_sentinel()
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        return True


class LogPipeline:
    """The root logger's handler, its bounded queue and the writer thread.

    ``start`` replaces whatever handlers the root logger had; ``stop`` (after
    the server's last line) waits for the log to be written out, at most
    ``timeout`` seconds.
    """

    def __init__(self, level: int | str, program: str, *, fd: int = 1,
                 bound: int = QUEUE_BOUND, label: str = "Server",
                 log_format: str = "text", log_time: str = "utc") -> None:
        self.level = level
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.handler = DroppingQueueHandler(self.queue, bound)
        # "[Server] ...", or "[Worker 2] ..." under --workers.
        self.writer = StdoutWriter(fd, self.queue.qsize, program, label)
        self.writer.setFormatter(formatter(log_format, label, log_time))
        self.listener = LogWriter(self.queue, self.writer)

    def start(self) -> None:
        root = logging.getLogger()
        for old in root.handlers[:]:
            root.removeHandler(old)
            old.close()
        root.addHandler(self.handler)
        root.setLevel(self.level)
        self.listener.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop taking records, write out what is queued; False if stdout
        did not take it all within ``timeout`` seconds."""
        self.handler.closed = True
        if not self.listener.stop_within(timeout):
            return False
        self.writer.write_out()  # the writer thread has ended: ours now
        return True
