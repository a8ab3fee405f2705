"""The node's connection to Redis: two threads of its own, so that the chat
thread never waits for Redis.

The chat thread only *submits* a script call and gets its reply later,
through the backend's ``call_soon_threadsafe`` (the select backend's wakeup
socket, asyncio's own, or the threads backend's chat lock).  One thread sends
what was submitted in pipelined batches -- everything queued since the last
batch goes out as one write, as Redis's own clients flush once per pass --
and hands all the replies of a batch back in one callback.  A second thread
blocks in ``XREAD`` on this node's inbox and hands each batch of entries over
in the same way, waiting until the chat thread has handled it before reading
more: the node's inbound backlog is one batch, whatever the other nodes send.

When Redis cannot be reached (refused, reset, or paused past the command
timeout), every call in flight and every call submitted until it is back is
answered :data:`UNAVAILABLE` -- at once, never queued -- and the link
reconnects with back-off, logging the outage once and the recovery once.
redis-py's own retries are off: a retried script could run twice.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from reactor.cluster.scripts import PREFIX, SCRIPTS

log = logging.getLogger("reactor")

# A reply that never came: Redis was unreachable, or the call timed out.
UNAVAILABLE = object()

Reply = Any  # a script's reply (a list), or UNAVAILABLE
CallSoon = Callable[[Callable[[], None]], None]

BATCH = 512  # script calls per pipeline
READ_COUNT = 1000  # inbox entries per read: the node's whole inbound backlog
READ_BLOCK_MS = 500
BACKOFF_FIRST = 0.05


class LinkError(Exception):
    """The cluster cannot be used as configured (a bad URL, no redis package)."""


def redis_client(url: str, timeout: float, option: str = "--cluster") -> Any:
    """A redis-py client for ``url`` that never retries on its own (a retried
    script could run twice); ``option`` names the flag in error messages."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise LinkError(f"{option} needs the redis package: pip install "
                        "'reactor-chat[cluster]'") from None
    try:
        return redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
    except ValueError as error:
        raise LinkError(f"{option}: {error}") from None


def is_redis_url(text: str) -> bool:
    return text.startswith(("redis://", "rediss://", "unix://"))


def without_password(url: str) -> str:
    """``url`` fit for a log line: a password in it (``redis://:secret@host``) left out."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


def check_url(url: str, option: str = "--cluster") -> None:
    """Raise LinkError if ``url`` is not a Redis URL or redis is not installed."""
    if not is_redis_url(url):
        raise LinkError(f"{option}: {url!r} is not a Redis URL "
                        "(redis://HOST:PORT, rediss://HOST:PORT for TLS, or unix://PATH)")
    redis_client(url, 1.0, option).close()


def _is_outage(error: BaseException) -> bool:
    import redis

    return isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError))


class Link:
    """Script calls to Redis and the reading of one inbox, off the chat thread."""

    def __init__(self, url: str, timeout: float, backoff_max: float, call_soon: CallSoon,
                 on_up: Callable[[], None], on_down: Callable[[str], None],
                 on_entries: Callable[[list[tuple[bytes, dict[bytes, bytes]]]], None],
                 together: Callable[[bool], AbstractContextManager[object]] = nullcontext,
                 ) -> None:
        self.url = url
        # Short: a node that reconnects late after Redis comes back would be
        # reaped by the others, whose renewals resume at once.
        self.backoff_max = backoff_max
        self._call_soon = call_soon
        self._on_up = on_up
        self._on_down = on_down
        self._on_entries = on_entries
        # Around the replies of one pipeline, handed over in one callback:
        # the chat's fan-outs then go out in one send per recipient
        # (ChatService.together).
        self._together = together
        self._commands = redis_client(url, timeout)
        # XREAD BLOCK holds its connection: a second one, with a timeout
        # longer than the block.
        self._reader = redis_client(url, timeout + READ_BLOCK_MS / 1000)
        # Loaded on every (re)connection; then each call is a plain EVALSHA
        # in the pipeline (redis-py's Script objects would ask SCRIPT EXISTS
        # first, one more round trip per batch).
        self._sha = {name: hashlib.sha1(text.encode()).hexdigest()
                     for name, text in SCRIPTS.items()}
        self._queue: queue.SimpleQueue[tuple[str, Sequence[object], Callable[[Reply], None]]
                                       | None] = queue.SimpleQueue()
        # Whether calls are taken; changed with the queue's emptying under
        # _state, so that no call made before an outage is sent after it.
        self.up = False
        self._state = threading.Lock()
        self._stopping = threading.Event()
        # Where the reader reads: set by the chat thread after (re)registering.
        self._inbox_lock = threading.Lock()
        self._inbox: tuple[str, bytes] | None = None
        self._inbox_generation = 0
        self._handled = threading.Event()
        self._inbox_set = threading.Event()  # wakes the reader for a new inbox
        self._threads = [
            threading.Thread(target=self._command_loop, name="cluster-commands", daemon=True),
            threading.Thread(target=self._read_loop, name="cluster-inbox", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (the last releases), then stop.  The inbox
        thread is not waited for (it may be in a blocking read; it stops at
        its next turn, and what it hands over then is ignored)."""
        self._queue.put(None)
        self._stopping.set()
        self._inbox_set.set()
        commands = self._threads[0]
        if commands.is_alive():
            commands.join(timeout)
        for client in (self._commands, self._reader):
            try:
                client.close()
            except Exception:  # closing a broken connection: nothing left to do
                pass

    # -- the chat thread's side ------------------------------------------------

    def call(self, script: str, node: str, epoch: str, deadline_ms: int, maxlen: int,
             maxseen: int, args: Sequence[object], on_reply: Callable[[Reply], None]) -> None:
        """Run a script; ``on_reply`` gets its reply on the chat thread
        (at once with UNAVAILABLE while Redis is out of reach)."""
        argv = (node, epoch, deadline_ms, maxlen, maxseen, *args)
        with self._state:
            if self.up:
                self._queue.put((script, argv, on_reply))
                return
        on_reply(UNAVAILABLE)

    def read_from(self, inbox: str, after_id: bytes) -> None:
        """Read this inbox from just after ``after_id`` (a new registration)."""
        with self._inbox_lock:
            self._inbox = (inbox, after_id)
            self._inbox_generation += 1
        self._inbox_set.set()

    # -- the command thread ----------------------------------------------------

    def _command_loop(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            if not self.up:
                if self._stopping.is_set():
                    self._fail_queued()
                    return
                if not self._connect():
                    self._fail_queued()
                    self._stopping.wait(backoff)
                    backoff = min(self.backoff_max, backoff * 2)
                    continue
                backoff = BACKOFF_FIRST
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = []
            stop = first is None
            if first is not None:
                batch.append(first)
            while len(batch) < BATCH and not stop:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._run(batch)
            if stop:
                return

    def _connect(self) -> bool:
        try:
            self._commands.ping()
            self._load_scripts()
        except Exception as error:
            if not _is_outage(error):
                log.error("Redis at %s: %s", without_password(self.url), error)
            return False
        with self._state:
            stale = self._take_queued()  # (nothing, normally: calls fail fast while down)
            self.up = True
        self._answer_unavailable(stale)
        self._call_soon(self._on_up)
        return True

    def _load_scripts(self) -> None:
        for text in SCRIPTS.values():
            self._commands.script_load(text)

    def _execute(self, batch: Sequence[tuple[str, Sequence[object], object]]) -> list[Reply]:
        # Several calls go as one MULTI/EXEC: Redis answers a blocked XREAD
        # after each command, so a plain pipeline of broadcasts would wake
        # the other nodes' inbox readers with the first entry alone and leave
        # the rest for their next read (two sends per recipient there
        # instead of one).  After EXEC they read the whole batch at once.
        # (Nothing is rolled back: each script answers for itself, as in a
        # plain pipeline.)
        pipe = self._commands.pipeline(transaction=len(batch) > 1)
        for script, argv, _ in batch:
            pipe.execute_command("EVALSHA", self._sha[script], 1, PREFIX, *argv)
        replies: list[Reply] = pipe.execute(raise_on_error=False)
        return replies

    def _run(self, batch: list[tuple[str, Sequence[object], Callable[[Reply], None]]]) -> None:
        import redis

        try:
            replies = self._execute(batch)
            missing = [i for i, reply in enumerate(replies)
                       if isinstance(reply, redis.exceptions.NoScriptError)]
            if missing:
                # SCRIPT FLUSH, or a Redis that restarted under a connection
                # that survived: NOSCRIPT means the call did not run, so
                # running it again is safe.
                self._load_scripts()
                again = self._execute([batch[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except Exception as error:
            if not _is_outage(error):
                log.exception("Redis pipeline failed")
            replies = [UNAVAILABLE] * len(batch)
            self._went_down(f"{type(error).__name__}: {error}")
        for index, reply in enumerate(replies):
            if isinstance(reply, Exception):
                log.error("Redis script %s failed: %s", batch[index][0], reply)
                replies[index] = UNAVAILABLE
        scripts = [script for script, _, _ in batch]
        callbacks = [callback for _, _, callback in batch]

        def answer(index: int) -> None:
            # A bug in one reply's handling is that call's alone: the other
            # replies of the batch are still handed over, and the server
            # goes on (as each inbox entry is handled on its own).
            try:
                callbacks[index](replies[index])
            except Exception:
                log.exception("Handling the reply of Redis script %s failed", scripts[index])

        def hand_over() -> None:
            with self._together(len(callbacks) > 1):  # one alone goes out at once
                for index in range(len(callbacks)):
                    answer(index)

        self._call_soon(hand_over)

    def _went_down(self, why: str) -> None:
        with self._state:
            was_up, self.up = self.up, False
            # Calls queued behind the failed batch were made before the
            # outage was known: answered now, never sent after reconnecting
            # (the node registers again first).
            stale = self._take_queued()
        # Outside the lock: the threads backend runs the callbacks right here,
        # under its chat lock, which a chat thread in call() may hold.
        self._answer_unavailable(stale)
        if was_up:
            self._call_soon(lambda: self._on_down(why))
        try:
            self._commands.connection_pool.disconnect()
        except Exception:  # the connection is broken already
            pass

    def _fail_queued(self) -> None:
        """While down: answer whatever was queued meanwhile, at once."""
        self._answer_unavailable(self._take_queued())

    def _take_queued(self) -> list[Callable[[Reply], None]]:
        taken = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # close() asked us to stop: keep that
                break
            taken.append(item[2])
        return taken

    def _answer_unavailable(self, callbacks: list[Callable[[Reply], None]]) -> None:
        if callbacks:
            self._call_soon(lambda: [callback(UNAVAILABLE) for callback in callbacks] and None)

    # -- the inbox thread ------------------------------------------------------

    def _read_loop(self) -> None:
        backoff = BACKOFF_FIRST
        generation = -1
        position: tuple[str, bytes] | None = None
        while not self._stopping.is_set():
            with self._inbox_lock:
                if self._inbox_generation != generation:
                    generation, position = self._inbox_generation, self._inbox
            if position is None or not self.up:
                self._inbox_set.wait(0.05)
                self._inbox_set.clear()
                continue
            inbox, last_id = position
            try:
                reply = self._reader.xread({inbox: last_id}, count=READ_COUNT,
                                           block=READ_BLOCK_MS)
            except Exception as error:
                if not _is_outage(error):
                    log.exception("Reading the cluster inbox failed")
                try:
                    self._reader.connection_pool.disconnect()
                except Exception:  # the connection is broken already
                    pass
                self._stopping.wait(backoff)
                backoff = min(self.backoff_max, backoff * 2)
                continue
            backoff = BACKOFF_FIRST
            if not reply:
                continue
            entries = reply[0][1]
            with self._inbox_lock:
                if self._inbox_generation != generation:
                    continue  # re-registered meanwhile: read the new inbox instead
                position = (inbox, entries[-1][0])
                self._inbox = position
            self._handled.clear()

            def handle(entries: list[tuple[bytes, dict[bytes, bytes]]] = entries) -> None:
                try:
                    self._on_entries(entries)
                finally:
                    self._handled.set()

            self._call_soon(handle)
            # One batch in flight: wait until the chat thread has handled it.
            while not self._handled.wait(0.2):
                if self._stopping.is_set():
                    return
