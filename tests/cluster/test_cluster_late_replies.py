"""A script call whose reply comes after its batch's deadline, on the link
that runs in the backend's loop (select, asyncio).

The promise: a call that Redis ran is never answered UNAVAILABLE.  A direct
message answered "not delivered: the chat service is unavailable" must not
reach its recipient; a call Redis runs after its sender gave up carries a
deadline and changes nothing (``EXPIRED``), so the only way to break the
promise is for the node to give up on a reply that has arrived.  A pass of
an event loop handles the readiness it polled for, then its due timers: when
the pass is long (much to fan out, the process starved or stopped), a reply
that came during it waits in the socket while the batch's deadline comes due.
Here the test is the loop, and runs the deadline first.
"""

from __future__ import annotations

import select
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator

import pytest

from reactor.cluster.link import UNAVAILABLE, Reply
from reactor.cluster.loop_link import LoopLink
from reactor.cluster.scripts import PREFIX, SCRIPTS
from tests.cluster_support import RedisServer
from tests.cluster_support import redis_server as redis_server  # a fixture
from tests.support import DEFAULT_TIMEOUT


class _Timer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class HandLoop:
    """A :class:`~reactor.contracts.SocketLoop` that does nothing by itself:
    the test runs what a pass of a real loop would, in the order it chooses."""

    def __init__(self) -> None:
        self.watched: dict[socket.socket, Callable[[bool, bool], None]] = {}
        self.timers: list[_Timer] = []
        self.end_of_pass: list[Callable[[], None]] = []
        self.soon: deque[Callable[[], None]] = deque()
        self.soon_added = threading.Condition()

    def watch(self, sock: socket.socket, on_ready: Callable[[bool, bool], None],
              write: bool = False) -> None:
        self.watched[sock] = on_ready

    def unwatch(self, sock: socket.socket) -> None:
        self.watched.pop(sock, None)

    def at_end_of_pass(self, callback: Callable[[], None]) -> None:
        self.end_of_pass.append(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(callback)
        self.timers.append(timer)
        return timer

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        with self.soon_added:
            self.soon.append(callback)
            self.soon_added.notify_all()

    def run_soon(self) -> None:
        """Wait for a callback from another thread (a connection opened), run it."""
        with self.soon_added:
            assert self.soon_added.wait_for(lambda: self.soon, DEFAULT_TIMEOUT)
            callback = self.soon.popleft()
        callback()

    def run_end_of_pass(self) -> None:
        callbacks, self.end_of_pass = self.end_of_pass, []
        for callback in callbacks:
            callback()

    def run_due_timers(self) -> None:
        """As at the end of a pass that outlasted every timer."""
        timers, self.timers = self.timers, []
        for timer in timers:
            if timer.callback is not None:
                timer.callback()


def _script(redis: RedisServer, script: str, node_id: str, epoch: str,
            *args: object) -> list[object]:
    reply = redis.command("EVAL", SCRIPTS[script], 1, PREFIX, node_id, epoch, 0,
                          1000, 1000, *args)
    return [part.decode() if isinstance(part, bytes) else part for part in reply]


@pytest.fixture
def link(redis_server: RedisServer) -> Iterator[tuple[LoopLink, HandLoop, list[str]]]:
    """A link up on a loop run by hand; the list collects its ``on_down`` reasons."""
    loop = HandLoop()
    downs: list[str] = []
    link = LoopLink(redis_server.url, 1.0, 0.1, loop, on_up=lambda: None,
                    on_down=downs.append, on_entries=lambda entries: None)
    link.start()
    loop.run_soon()  # the commands connection, opened on its thread
    assert link.up
    try:
        yield link, loop, downs
    finally:
        link.close()


def test_a_reply_that_came_before_the_deadline_ran_is_the_calls_answer_not_unavailable(
    redis_server: RedisServer,
    link: tuple[LoopLink, HandLoop, list[str]],
) -> None:
    """Alice's node (A) sends a DM to Bob (on B); Redis runs it and its reply
    waits in the socket, but the loop runs the batch's deadline before it
    reads: the DM is in B's inbox, so A must answer with Redis's reply."""
    link_, loop, downs = link
    epoch = str(_script(redis_server, "register", "A", "", "0", 60_000, 0)[0])
    _script(redis_server, "register", "B", epoch, "0", 60_000, 0, "bob", "Bob")
    replies: list[Reply] = []
    link_.call("direct", "A", epoch, 0, 1000, 1000, ["bob", 1, b"<Message from Alice: hi>"],
               replies.append)
    loop.run_end_of_pass()  # the batch goes out
    (sock,) = loop.watched
    readable, _, _ = select.select([sock], [], [], DEFAULT_TIMEOUT)
    assert readable, "Redis did not answer"
    assert redis_server.command("XLEN", f"{PREFIX}inbox:B") == 2  # its hello, and the DM

    loop.run_due_timers()  # the deadline first, as after a long pass

    assert replies == [[b"OK", b"B"]]
    assert link_.up and not downs


def test_a_batch_with_no_reply_by_its_deadline_is_unavailable_and_the_link_goes_down(
    redis_server: RedisServer,
    link: tuple[LoopLink, HandLoop, list[str]],
) -> None:
    """Redis paused: nothing has come when the deadline runs, so the call is
    answered UNAVAILABLE and the link reports Redis out of reach."""
    link_, loop, downs = link
    replies: list[Reply] = []
    link_.call("renew", "A", "", 0, 1000, 1000, [60_000], replies.append)
    redis_server.pause()
    try:
        loop.run_end_of_pass()
        loop.run_due_timers()
    finally:
        redis_server.resume()
    assert replies == [UNAVAILABLE]
    assert not link_.up and downs
