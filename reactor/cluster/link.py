"""The node's connection to Redis, never on the chat thread's time.

The chat thread only *submits* a script call and gets its reply later, on
the chat thread.  Calls queued meanwhile go out as one write (one
``MULTI``/``EXEC``, see :class:`~reactor.redis.resp.Batch`), as Redis's
own clients flush once per pass, and the replies of a batch are handed over
together.  A second connection blocks in ``XREAD`` on this node's inbox and
hands each batch of entries over in the same way, reading more only once the
chat thread has handled it: the node's inbound backlog is one batch,
whatever the other nodes send.

When Redis cannot be reached (refused, reset, or paused past the command
timeout), every call in flight and every call submitted until it is back is
answered :data:`UNAVAILABLE` -- at once, never queued -- and the link
reconnects with back-off; the whiteboard logs the outage once and the
recovery once.  Nothing is retried after an outage: a retried script could
run twice.

Two drivers move the bytes, sharing :mod:`reactor.redis.resp` for what
they say and how the replies are matched:

* :class:`ThreadLink` (here): two threads of its own with blocking sockets,
  handing replies over through the backend's ``call_soon_threadsafe``; for
  the threads and asyncio backends.
* :class:`~reactor.cluster.loop_link.LoopLink`: the select backend's own
  loop, where the Redis connections are two more non-blocking sockets in the
  selector -- no thread hand-offs on the way of a broadcast.

redis-py opens the connections (its URL syntax, TLS, AUTH and SELECT); from
then on the link speaks RESP on the socket itself.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

from reactor.cluster.scripts import CLUSTER_SCRIPTS
from reactor.redis.resp import (
    BATCH,
    UNAVAILABLE,
    Batch,
    Call,
    Entry,
    ProtocolError,
    Refusals,
    Replies,
    Reply,
    inbox_entries,
    is_error,
    pack,
    read_inbox,
)
from reactor.redis.url import redis_client, without_password

__all__ = ["UNAVAILABLE", "Link", "Reply", "ThreadLink"]

log = logging.getLogger("reactor")

CallSoon = Callable[[Callable[[], None]], None]

READ_COUNT = 1000  # inbox entries per read: the node's whole inbound backlog
READ_BLOCK_MS = 500
BACKOFF_FIRST = 0.05
_PING = pack(("PING",))
_EVICTION_POLICY = pack(("CONFIG", "GET", "maxmemory-policy"))


def is_outage(error: BaseException) -> bool:
    """Redis out of reach (to retry quietly), rather than a bug or a refusal."""
    import redis

    return isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError))


def open_socket(url: str, timeout: float, load_scripts: bool,
                check_policy: bool = False) -> socket.socket:
    """A blocking socket to Redis (with ``timeout`` on every operation),
    connected, authenticated and on its database, with the cluster's scripts
    loaded if ``load_scripts``; with ``check_policy``, a warning if Redis
    may evict keys."""
    # RESP2, whatever redis-py's default: the replies' shapes that resp.py reads.
    client = redis_client(url, timeout, protocol=2)
    connection = client.connection_pool.make_connection()
    connection.connect()
    # redis-py's socket, its handshake's replies all read (its parser holds
    # nothing more): the link's from here.  Taken out of the connection so
    # that dropping the connection does not shut the socket down.
    sock: socket.socket = connection._sock
    connection._sock = None
    try:
        if load_scripts:
            exchange(sock, Replies(), CLUSTER_SCRIPTS.load, len(CLUSTER_SCRIPTS.texts))
        else:
            exchange(sock, Replies(), _PING, 1)
        if check_policy:
            warn_if_evicting(sock, without_password(url))
    except BaseException:
        sock.close()
        raise
    return sock


def warn_if_evicting(sock: socket.socket, where: str) -> None:
    """Say so if Redis may evict keys when its memory is full: one of the
    chat's keys lost alone loses the chat's state (every node registers its
    users again).  Redis may refuse ``CONFIG`` (a managed service, an ACL):
    then nothing is said."""
    try:
        reply = exchange(sock, Replies(), _EVICTION_POLICY, 1)[0]
    except ProtocolError:
        return
    settings = dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else {}
    policy = settings.get(b"maxmemory-policy")
    if isinstance(policy, bytes) and policy != b"noeviction":
        log.warning("Redis at %s has maxmemory-policy %s: when its memory is full it may evict"
                    " the chat's keys, and the nodes then register their users again; run it"
                    " with maxmemory-policy noeviction", where, policy.decode(errors="replace"))


def exchange(sock: socket.socket, replies: Replies, data: bytes, count: int) -> list[Reply]:
    """Send ``data`` and read its ``count`` replies (blocking); an error reply raises."""
    sock.sendall(data)
    received: list[Reply] = []
    while len(received) < count:
        received += replies.feed(receive(sock))
    if len(received) > count:
        raise ProtocolError("more replies than commands")
    for reply in received:
        if is_error(reply):
            raise ProtocolError(f"Redis refused: {reply}")
    return received


def complete(sock: socket.socket, replies: Replies, batch: Batch) -> None:
    """Read the replies of a batch that was sent (blocking), sending what its
    retry needs (see Batch.add)."""
    while not batch.done:
        for reply in replies.feed(receive(sock)):
            if batch.done:
                raise ProtocolError("a reply to no command")
            more = batch.add(reply)
            if more is not None:
                sock.sendall(more)


def receive(sock: socket.socket, size: int = 65536) -> bytes:
    data = sock.recv(size)
    if not data:
        raise ConnectionResetError("Redis closed the connection")
    return data


class Link(ABC):
    """Script calls to Redis and the reading of one inbox, for the whiteboard.

    ``on_up``, ``on_down(why)`` and ``on_entries(entries)`` run on the chat
    thread; so does every call's ``on_reply``.  ``together(several)`` is
    entered around the replies of one batch (``ChatService.together``): the
    chat's fan-outs then go out in one send per recipient.
    """

    def __init__(self, url: str, timeout: float, backoff_max: float,
                 on_up: Callable[[], None], on_down: Callable[[str], None],
                 on_entries: Callable[[list[Entry]], None],
                 together: Callable[[bool], AbstractContextManager[object]] = nullcontext,
                 ) -> None:
        self.url = url
        self.timeout = timeout
        # Short: a node that reconnects late after Redis comes back would be
        # reaped by the others, whose renewals resume at once.
        self.backoff_max = backoff_max
        self._on_up = on_up
        self._on_down = on_down
        self._on_entries = on_entries
        self._together = together
        # Whether calls are taken (else answered UNAVAILABLE at once).
        self.up = False
        self._refusals = Refusals(without_password(url))
        self._policy_checked = False  # (at the first connection only)
        # Script calls made, and those answered UNAVAILABLE (Redis out of
        # reach or refusing): counted on the chat thread, for /metrics.
        self.calls = 0
        self.failed_calls = 0

    def _open_commands(self) -> socket.socket:
        """The commands connection (blocking: on a thread of its own)."""
        sock = open_socket(self.url, self.timeout, load_scripts=True,
                           check_policy=not self._policy_checked)
        self._policy_checked = True
        return sock

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (the last releases), then stop."""

    @abstractmethod
    def read_from(self, inbox: str, after_id: bytes) -> None:
        """Read this inbox from just after ``after_id`` (a new registration)."""

    @abstractmethod
    def _submit(self, call: Call) -> None:
        """Queue ``call`` for the next batch, or answer it UNAVAILABLE at once."""

    def call(self, script: str, node: str, epoch: str, deadline_ms: int, maxlen: int,
             maxseen: int, args: Sequence[object], on_reply: Callable[[Reply], None]) -> None:
        """Run a script; ``on_reply`` gets its reply on the chat thread
        (at once with UNAVAILABLE while Redis is out of reach)."""
        self.calls += 1
        self._submit(Call(script, (node, epoch, deadline_ms, maxlen, maxseen, *args), on_reply))

    def _answer(self, calls: Sequence[Call], replies: Sequence[Reply]) -> None:
        """On the chat thread: hand a batch's replies over, together."""
        with self._together(len(calls) > 1):  # one alone goes out at once
            for call, reply in zip(calls, replies, strict=True):
                if reply is UNAVAILABLE:
                    self.failed_calls += 1
                # A bug in one reply's handling is that call's alone: the
                # other replies of the batch are still handed over, and the
                # server goes on (as each inbox entry is handled on its own).
                try:
                    call.on_reply(reply)
                except Exception:
                    log.exception("Handling the reply of Redis script %s failed", call.script)

    def _answer_unavailable(self, calls: Sequence[Call]) -> None:
        if calls:
            self._answer(calls, [UNAVAILABLE] * len(calls))


class ThreadLink(Link):
    """The link on two threads of its own: one sends the batches and waits
    for their replies, one blocks in ``XREAD``.  Replies reach the chat
    thread through ``call_soon`` (the backend's ``call_soon_threadsafe``)."""

    def __init__(self, url: str, timeout: float, backoff_max: float, call_soon: CallSoon,
                 on_up: Callable[[], None], on_down: Callable[[str], None],
                 on_entries: Callable[[list[Entry]], None],
                 together: Callable[[bool], AbstractContextManager[object]] = nullcontext,
                 ) -> None:
        super().__init__(url, timeout, backoff_max, on_up, on_down, on_entries, together)
        self._call_soon = call_soon
        self._commands: socket.socket | None = None
        self._queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        # `up` changes with the queue's emptying under _state, so that no
        # call made before an outage is sent after it.
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

    # -- the chat thread's side ------------------------------------------------

    def _submit(self, call: Call) -> None:
        with self._state:
            if self.up:
                self._queue.put(call)
                return
        self.failed_calls += 1
        call.on_reply(UNAVAILABLE)

    def read_from(self, inbox: str, after_id: bytes) -> None:
        with self._inbox_lock:
            self._inbox = (inbox, after_id)
            self._inbox_generation += 1
        self._inbox_set.set()

    # -- the command thread ----------------------------------------------------

    def _command_loop(self) -> None:
        backoff = BACKOFF_FIRST
        try:
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
                batch: list[Call] = []
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
                    self._send_batch(Batch(batch, CLUSTER_SCRIPTS))
                if stop:
                    return
        finally:
            if self._commands is not None:
                self._commands.close()

    def _connect(self) -> bool:
        try:
            self._commands = self._open_commands()
        except Exception as error:
            if not is_outage(error):
                log.error("Redis at %s: %s", without_password(self.url), error)
            return False
        self._replies = Replies()
        with self._state:
            stale = self._take_queued()  # (nothing, normally: calls fail fast while down)
            self.up = True
        self._call_soon(lambda: self._answer_unavailable(stale))
        self._call_soon(self._on_up)
        return True

    def _send_batch(self, batch: Batch) -> None:
        """Send a batch, wait for its replies and hand them over."""
        sock = self._commands
        assert sock is not None
        try:
            sock.sendall(batch.data)
            complete(sock, self._replies, batch)
            replies = batch.outcomes(self._refusals)
        except Exception as error:
            if not is_outage(error):
                log.exception("Redis pipeline failed")
            replies = [UNAVAILABLE] * len(batch.calls)
            self._went_down(f"{type(error).__name__}: {error}")
        self._call_soon(lambda: self._answer(batch.calls, replies))

    def _went_down(self, why: str) -> None:
        with self._state:
            was_up, self.up = self.up, False
            # Calls queued behind the failed batch were made before the
            # outage was known: answered now, never sent after reconnecting
            # (the node registers again first).
            stale = self._take_queued()
        # Outside the lock: the threads backend runs the callbacks right here,
        # under its chat lock, which a chat thread in call() may hold.
        self._call_soon(lambda: self._answer_unavailable(stale))
        if was_up:
            self._call_soon(lambda: self._on_down(why))
        if self._commands is not None:
            self._commands.close()
            self._commands = None

    def _fail_queued(self) -> None:
        """While down: answer whatever was queued meanwhile, at once."""
        stale = self._take_queued()
        if stale:
            self._call_soon(lambda: self._answer_unavailable(stale))

    def _take_queued(self) -> list[Call]:
        taken = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # close() asked us to stop: keep that
                break
            taken.append(item)
        return taken

    # -- the inbox thread ------------------------------------------------------

    def _read_loop(self) -> None:
        backoff = BACKOFF_FIRST
        generation = -1
        position: tuple[str, bytes] | None = None
        sock: socket.socket | None = None
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
                if sock is None:
                    # XREAD BLOCK holds its connection: a timeout longer than the block.
                    sock = open_socket(self.url, self.timeout + READ_BLOCK_MS / 1000,
                                       load_scripts=False)
                    replies = Replies()
                sock.sendall(read_inbox(inbox, last_id, READ_COUNT, READ_BLOCK_MS))
                received: list[Reply] = []
                while not received:
                    received += replies.feed(receive(sock))
                if len(received) > 1:
                    raise ProtocolError("more replies than reads")
                entries = inbox_entries(received[0])
            except Exception as error:
                if not is_outage(error):
                    log.exception("Reading the cluster inbox failed")
                if sock is not None:
                    sock.close()
                    sock = None
                self._stopping.wait(backoff)
                backoff = min(self.backoff_max, backoff * 2)
                continue
            backoff = BACKOFF_FIRST
            if not entries:
                continue
            with self._inbox_lock:
                if self._inbox_generation != generation:
                    continue  # re-registered meanwhile: read the new inbox instead
                position = (inbox, entries[-1][0])
                self._inbox = position
            self._handled.clear()

            def handle(entries: list[Entry] = entries) -> None:
                try:
                    self._on_entries(entries)
                finally:
                    self._handled.set()

            self._call_soon(handle)
            # One batch in flight: wait until the chat thread has handled it.
            while not self._handled.wait(0.2):
                if self._stopping.is_set():
                    break
        if sock is not None:
            sock.close()
