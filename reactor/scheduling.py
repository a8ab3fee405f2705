"""The chat's :class:`~reactor.contracts.Scheduler`: the backend's timers and
threads, the chat's clock, and batches of work that arrive together.

One object, made with the chat and attached to the backend once it serves,
so that every feature (a connection, the roster, the accounts) is handed the
scheduler and nothing more of the chat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from reactor.contracts import SocketLoop, TimerHandle

CallLater = Callable[[float, Callable[[], None]], TimerHandle]
CallSoon = Callable[[Callable[[], None]], None]


class LoopScheduler:
    """What the backend serving the chat offers, once :meth:`attach` ed."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.socket_loop: SocketLoop | None = None
        self._call_later: CallLater | None = None
        self._call_soon: CallSoon | None = None
        # Inside together(): fan-outs are queued for one send per recipient.
        self.batching = 0

    def attach(self, call_later: CallLater, call_soon_threadsafe: CallSoon | None = None,
               socket_loop: SocketLoop | None = None) -> None:
        """The backend's timers, its way in from other threads and its loop
        for other sockets.  Without ``call_soon_threadsafe`` (in-memory tests
        whose "workers" run on the chat thread) callbacks go through
        ``call_later(0, ...)``."""
        self._call_later = call_later
        self._call_soon = call_soon_threadsafe
        self.socket_loop = socket_loop

    @property
    def attached(self) -> bool:
        return self._call_later is not None

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        assert self._call_later is not None, "attach() the chat to a backend first"
        return self._call_later(delay, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback`` on the chat thread soon."""
        if self._call_soon is not None:
            self._call_soon(callback)
        else:
            self.call_later(0.0, callback)

    @contextmanager
    def together(self, several: bool = True) -> Iterator[None]:
        """Around work that arrives together (a Redis batch's replies, a
        batch of a cluster inbox, the callbacks one wakeup found): its
        fan-outs are queued and go out in one send per recipient once the
        batch is done (``Server.send_at_once``'s ``batch``), not in one send
        per fan-out.  Several broadcasts that arrive together then cost one
        system call per recipient, as a batch of broadcast lines read from
        one client does on one server.

        Not ``several`` (one item alone, a quiet moment): nothing changes,
        and its fan-out is written through at once."""
        if not several:
            yield
            return
        self.batching += 1
        try:
            yield
        finally:
            self.batching -= 1
