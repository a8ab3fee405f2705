"""The link to Redis inside an event loop: two more non-blocking sockets.

With the select (or asyncio) backend, the node's two Redis connections --
one for script calls, one blocked in ``XREAD`` on the node's inbox -- are
served by the backend's own loop (:class:`~reactor.transport.SocketLoop`),
as Redis's own clients and the issue's design ask: the calls a pass of the
loop queued go out in one write at the end of the pass, and replies and
inbox entries are handled where they are read, on the chat thread.  A
broadcast then crosses no thread on its way: the sender's node reads Redis's
reply and fans out in the same pass, and so does the node that reads it from
its inbox.  (With threads in between, each hand-over costs a wakeup and a
wait for the GIL while the loop is busy fanning out.)

The same rules as :class:`~reactor.cluster.link.ThreadLink`:

* one batch in flight: the next goes out when its replies are in, so that
  a batch that must be retried (``NOSCRIPT``) is retried before anything
  sent after it;
* a batch not answered within the command time-out means Redis is out of
  reach: everything in flight and queued is answered ``UNAVAILABLE``, the
  connection is dropped, and opened again with back-off;
* one inbox batch in flight: the next ``XREAD`` goes out once the entries
  are handled (here: at once, since they are handled where they are read).

Opening a connection (DNS, TLS, AUTH, loading the scripts) blocks, so it is
done by a short-lived thread, which hands the open socket to the loop.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from reactor.cluster.link import (
    BACKOFF_FIRST,
    READ_BLOCK_MS,
    READ_COUNT,
    Link,
    complete,
    is_outage,
    open_socket,
    receive,
)
from reactor.cluster.scripts import CLUSTER_SCRIPTS
from reactor.contracts import SocketLoop, TimerHandle
from reactor.redis.resp import (
    BATCH,
    UNAVAILABLE,
    Batch,
    Call,
    Entry,
    ProtocolError,
    Replies,
    Reply,
    inbox_entries,
    read_inbox,
)
from reactor.redis.url import without_password

log = logging.getLogger("reactor")

READ_SIZE = 256 * 1024
# Not ready yet: wait for the socket (a TLS connection may need to read to
# write, or the reverse; either way the next readiness tries again).
_NOT_READY = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Connection:
    """One open non-blocking connection to Redis in the loop: what could not
    be sent yet, and the replies read, handed to ``on_reply`` in order."""

    def __init__(self, loop: SocketLoop, sock: socket.socket,
                 on_reply: Callable[[Reply], None],
                 on_failure: Callable[[BaseException], None]) -> None:
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self.closed = False
        self.replies = Replies()
        self.unsent = b""
        self._writing = False
        self._on_reply = on_reply
        self._on_failure = on_failure
        loop.watch(sock, self._on_ready)

    def send(self, data: bytes) -> None:
        if self.unsent:
            self.unsent += data
            return
        self.unsent = data
        self._send_unsent()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.unwatch(self.sock)
            self.sock.close()

    def _send_unsent(self) -> None:
        try:
            sent = self.sock.send(self.unsent)
        except _NOT_READY:
            sent = 0
        except OSError as error:
            self._on_failure(error)
            return
        self.unsent = self.unsent[sent:]
        waiting = bool(self.unsent)
        if waiting != self._writing:  # write interest only while something waits
            self._writing = waiting
            self.loop.watch(self.sock, self._on_ready, write=waiting)

    def read_now(self) -> None:
        """Read and hand over whatever has arrived, without waiting for the
        loop to report the socket readable."""
        self._on_ready(True, False)

    def _on_ready(self, readable: bool, writable: bool) -> None:
        if writable and self.unsent:
            self._send_unsent()
        if not readable or self.closed:
            return
        while True:
            # Read and parse under the try; hand over outside it, so that a
            # bug in the chat's handling is not taken for a Redis failure.
            try:
                data = receive(self.sock, READ_SIZE)
                replies = list(self.replies.feed(data))
            except _NOT_READY:
                return
            except (OSError, ProtocolError) as error:
                self._on_failure(error)
                return
            for reply in replies:
                self._on_reply(reply)
                if self.closed:
                    return
            # A short read drained the kernel's buffer; TLS may hold a
            # record's rest in its own, so it reads until told to wait.
            if len(data) < READ_SIZE and not isinstance(self.sock, ssl.SSLSocket):
                return


class LoopLink(Link):
    """The link in the backend's loop (see the module's docstring)."""

    def __init__(self, url: str, timeout: float, backoff_max: float, loop: SocketLoop,
                 on_up: Callable[[], None], on_down: Callable[[str], None],
                 on_entries: Callable[[list[Entry]], None],
                 together: Callable[[bool], AbstractContextManager[object]] = nullcontext,
                 ) -> None:
        super().__init__(url, timeout, backoff_max, on_up, on_down, on_entries, together)
        self._loop = loop
        self._closing = False
        # Script calls.
        self._commands: _Connection | None = None
        self._commands_backoff = BACKOFF_FIRST
        self._queued: list[Call] = []
        self._batch: Batch | None = None
        self._batch_deadline: TimerHandle | None = None
        self._flush_due = False
        # The inbox: where to read from, and the read in flight (its generation).
        self._reader: _Connection | None = None
        self._reader_opening = False
        self._reader_backoff = BACKOFF_FIRST
        self._inbox: tuple[str, bytes] | None = None
        self._generation = 0
        self._reading: int | None = None
        self._read_deadline: TimerHandle | None = None

    def start(self) -> None:
        self._open(commands=True)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (the last releases) and read the replies,
        blocking: the loop has stopped by now (its selector is closed), so
        nothing else waits, and nothing more is handed over."""
        self._closing = True
        for connection in (self._reader, self._commands):
            if connection is not None:
                connection.closed = True  # (no unwatch: the selector is gone)
        if self._reader is not None:
            self._reader.sock.close()
        connection = self._commands
        if connection is None:
            return
        sock = connection.sock
        try:
            sock.settimeout(timeout)
            if connection.unsent:
                sock.sendall(connection.unsent)
            if self._batch is not None:
                complete(sock, connection.replies, self._batch)
            while self._queued:
                calls, self._queued = self._queued[:BATCH], self._queued[BATCH:]
                batch = Batch(calls, CLUSTER_SCRIPTS)
                sock.sendall(batch.data)
                complete(sock, connection.replies, batch)
        except Exception as error:
            if not is_outage(error):
                log.exception("Sending the last calls to Redis failed")
        finally:
            sock.close()

    # -- the chat thread's side ------------------------------------------------

    def _submit(self, call: Call) -> None:
        if not self.up:
            self.failed_calls += 1
            call.on_reply(UNAVAILABLE)
            return
        self._queued.append(call)
        if not self._flush_due:
            self._flush_due = True
            self._loop.at_end_of_pass(self._flush)

    def read_from(self, inbox: str, after_id: bytes) -> None:
        self._inbox = (inbox, after_id)
        self._generation += 1
        self._read_more()

    # -- script calls --------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_due = False
        if self._batch is not None or not self._queued or self._commands is None:
            return
        # More than a batch's worth: the rest once its replies are in.
        calls, self._queued = self._queued[:BATCH], self._queued[BATCH:]
        self._send_batch(Batch(calls, CLUSTER_SCRIPTS))

    def _send_batch(self, batch: Batch) -> None:
        assert self._commands is not None
        self._batch = batch
        self._batch_deadline = self._loop.call_later(self.timeout, self._batch_timed_out)
        self._commands.send(batch.data)

    def _command_reply(self, reply: Reply) -> None:
        batch = self._batch
        if batch is None or batch.done:
            self._commands_failed(ProtocolError("a reply to no command"))
            return
        more = batch.add(reply)
        if more is not None:
            assert self._commands is not None
            self._commands.send(more)
            return
        if not batch.done:
            return
        self._batch = None
        if self._batch_deadline is not None:
            self._batch_deadline.cancel()
            self._batch_deadline = None
        self._answer(batch.calls, batch.outcomes(self._refusals))
        if self._queued and not self._flush_due:
            self._flush_due = True
            self._loop.at_end_of_pass(self._flush)

    def _batch_timed_out(self) -> None:
        self._batch_deadline = None
        batch = self._batch
        # The loop may have been kept from reading (a long pass, the process
        # starved or stopped) while the replies waited in the socket: a pass
        # runs its timers after the readiness it polled for, so the replies
        # that came later are read here first.  A call that Redis ran must
        # never be answered UNAVAILABLE for the loop's own delay (a direct
        # message reported "not delivered" that its recipient then reads).
        if self._commands is not None:
            self._commands.read_now()
        if batch is not None and self._batch is batch:
            self._commands_failed(TimeoutError(f"no reply from Redis within {self.timeout:g} s"))

    def _commands_failed(self, error: BaseException) -> None:
        """Redis out of reach (or talking nonsense), or the connection could
        not be opened: everything in flight and queued is answered
        UNAVAILABLE, and the connection opened again."""
        if not is_outage(error):
            log.error("Redis at %s: %s; reconnecting", without_password(self.url), error)
        was_up, self.up = self.up, False
        if self._commands is not None:
            self._commands.close()
            self._commands = None
        if self._batch_deadline is not None:
            self._batch_deadline.cancel()
            self._batch_deadline = None
        stale = [*(self._batch.calls if self._batch else ()), *self._queued]
        self._batch, self._queued = None, []
        self._answer_unavailable(stale)
        if was_up:
            self._on_down(f"{type(error).__name__}: {error}")
        self._retry(commands=True)

    def _commands_opened(self, sock: socket.socket) -> None:
        if self._closing:
            sock.close()
            return
        self._commands = _Connection(self._loop, sock, self._command_reply,
                                     self._commands_failed)
        self._commands_backoff = BACKOFF_FIRST
        self.up = True
        self._on_up()
        self._read_more()

    # -- the inbox -----------------------------------------------------------------

    def _read_more(self) -> None:
        """Send the next XREAD, if there is an inbox to read and none in flight."""
        if self._closing or not self.up or self._inbox is None or self._reading is not None:
            return
        if self._reader is None:
            if not self._reader_opening:
                self._reader_opening = True
                self._open(commands=False)
            return
        inbox, after_id = self._inbox
        self._reading = self._generation
        # XREAD BLOCK holds its connection: its time-out is longer than the block.
        self._read_deadline = self._loop.call_later(
            self.timeout + READ_BLOCK_MS / 1000, self._read_timed_out)
        self._reader.send(read_inbox(inbox, after_id, READ_COUNT, READ_BLOCK_MS))

    def _inbox_reply(self, reply: Reply) -> None:
        generation, self._reading = self._reading, None
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        if generation is None:
            self._reader_failed(ProtocolError("a reply to no read"))
            return
        try:
            entries = inbox_entries(reply)
        except ProtocolError as error:
            self._reader_failed(error)
            return
        self._reader_backoff = BACKOFF_FIRST
        # Entries of an inbox read before re-registering: the new one instead.
        if entries and generation == self._generation and self._inbox is not None:
            self._inbox = (self._inbox[0], entries[-1][0])
            try:
                self._on_entries(entries)
            finally:
                self._read_more()  # whatever became of them
        else:
            self._read_more()

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        self._reader_failed(TimeoutError("the inbox read was not answered"))

    def _reader_failed(self, error: BaseException) -> None:
        """The inbox connection broke, timed out or could not be opened:
        opened again, and the read sent again, after the back-off."""
        self._reader_opening = False
        if not is_outage(error):
            log.error("Reading the cluster inbox failed: %s", error)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        self._reading = None
        self._retry(commands=False)

    def _reader_opened(self, sock: socket.socket) -> None:
        self._reader_opening = False
        if self._closing:
            sock.close()
            return
        self._reader = _Connection(self._loop, sock, self._inbox_reply, self._reader_failed)
        self._read_more()

    # -- opening connections -------------------------------------------------------

    def _retry(self, commands: bool) -> None:
        """Open that connection again after its back-off, which doubles each
        time up to ``backoff_max`` (reset once it works)."""
        if commands:
            delay = self._commands_backoff
            self._commands_backoff = min(self.backoff_max, delay * 2)
            again: Callable[[], None] = lambda: self._open(commands=True)  # noqa: E731
        else:
            delay = self._reader_backoff
            self._reader_backoff = min(self.backoff_max, delay * 2)
            again = self._read_more  # (which opens it)
        if not self._closing:
            self._loop.call_later(delay, again)

    def _open(self, commands: bool) -> None:
        """Open the commands or the inbox connection on a thread of its own
        (it blocks); the result comes back to the loop."""
        if self._closing:
            return
        timeout = self.timeout
        loop = self._loop
        if commands:
            opened, failed = self._commands_opened, self._commands_failed
        else:
            opened, failed = self._reader_opened, self._reader_failed

        def opening() -> None:
            try:
                if commands:
                    sock = self._open_commands()
                else:
                    sock = open_socket(self.url, timeout, load_scripts=False)
            except Exception as error:
                caught = error
                loop.call_soon_threadsafe(lambda: failed(caught))
                return
            loop.call_soon_threadsafe(lambda: opened(sock))

        threading.Thread(target=opening, name="cluster-connect", daemon=True).start()
