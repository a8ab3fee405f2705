"""The roster in memory: who is online, and which names were ever seen.

In the original C server this was a username-to-socket table behind a mutex.
Here it is one implementation of :class:`~reactor.contracts.Roster`, the
contract the chat speaks to, so that the same chat logic runs on a table in
this process (:class:`MemoryWhiteboard`) or on a store shared by several
server processes (:mod:`reactor.cluster.whiteboard`), whose answers come
later.  That is why :meth:`Whiteboard.claim` reports through a callback: the
in-memory table calls it at once, a shared store when its reply arrives.
:class:`Whiteboard` is a base class with the defaults of a roster that has
no peers.

Implementations do no locking: the threads backend holds its chat lock around
every chat call, the single-threaded loops need none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from protocol import username_key
from reactor.contracts import (
    ClaimResult,
    PublishResult,
    Recipient,
    RosterEvents,
    Scheduler,
    Session,
)

S = TypeVar("S", bound=Session)

__all__ = ["MAX_REMEMBERED_NAMES", "ClaimResult", "MemoryWhiteboard", "PublishResult",
           "Whiteboard"]

# Names remembered after their owner left, to tell "offline" from "does not
# exist".  Bounded so that a client cycling through fresh names cannot grow
# the server's memory without limit; the oldest are forgotten first.
MAX_REMEMBERED_NAMES = 100_000


class Whiteboard(ABC, Generic[S]):
    def start(self, events: RosterEvents, scheduler: Scheduler) -> None:
        """The chat is served: start talking to peers (none here)."""

    def close(self) -> None:
        """The server has stopped: say goodbye to peers, stop threads."""

    def unavailable_reason(self) -> str | None:
        """Why cluster-wide actions cannot be done now, or None."""
        return None

    def publish(self, data: bytes, on_result: PublishResult) -> None:
        """Send a broadcast line to every other server's users (none here)."""
        on_result(None)

    def remote_count(self) -> int:
        """Users online on other servers."""
        return 0

    @abstractmethod
    def claim(self, name: str, session: S, on_result: ClaimResult) -> None:
        """Put ``name`` online for ``session`` unless it is taken (ignoring case)."""

    @abstractmethod
    def release(self, name: str, on_done: Callable[[], None] | None = None) -> None:
        """Take ``name`` offline; it can be claimed again at once (here), and
        everywhere once ``on_done`` is called."""

    @abstractmethod
    def lookup(self, name: str) -> tuple[str, Recipient] | None:
        """The online user's canonical name and how to reach it, or None."""

    def surely_taken(self, name: str) -> str | None:
        """The spelling ``name`` is online under, if a claim would certainly be
        refused; None when only a claim can tell.  Lets the chat refuse a
        taken name before asking for its password."""
        found = self.lookup(name)
        return None if found is None else found[0]

    @abstractmethod
    def seen_as(self, name: str) -> str | None:
        """How ``name`` was spelled when last online, if it ever was."""

    @abstractmethod
    def online_sessions(self) -> Iterable[S]:
        """Every online session.  Callers must not claim or release while iterating."""

    @abstractmethod
    def online_names(self) -> list[str]:
        """Every online name, sorted ignoring case."""

    @abstractmethod
    def __len__(self) -> int: ...


class MemoryWhiteboard(Whiteboard[S]):
    """The whiteboard of one server process: two dicts."""

    def __init__(self, max_remembered: int = MAX_REMEMBERED_NAMES) -> None:
        # key -> session and key -> display name; two dicts so that a fan-out
        # iterates a plain dict view of sessions, the hottest loop there is.
        self._online: dict[str, S] = {}
        self._names: dict[str, str] = {}
        # Names that were online and are not now, oldest first.
        self._offline: dict[str, str] = {}
        self._max_remembered = max_remembered

    def claim(self, name: str, session: S, on_result: ClaimResult) -> None:
        key = username_key(name)
        if key in self._online:
            on_result(self._names[key])
            return
        self._online[key] = session
        self._names[key] = name
        self._offline.pop(key, None)
        on_result(None)

    def release(self, name: str, on_done: Callable[[], None] | None = None) -> None:
        key = username_key(name)
        if self._online.pop(key, None) is not None:
            self._offline[key] = self._names.pop(key)
            if len(self._offline) > self._max_remembered:
                del self._offline[next(iter(self._offline))]  # the longest gone
        if on_done is not None:
            on_done()

    def lookup(self, name: str) -> tuple[str, Recipient] | None:
        key = username_key(name)
        session = self._online.get(key)
        return None if session is None else (self._names[key], session)

    def seen_as(self, name: str) -> str | None:
        key = username_key(name)
        return self._names.get(key) or self._offline.get(key)

    def online_sessions(self) -> Iterable[S]:
        return self._online.values()

    def online_names(self) -> list[str]:
        return sorted(self._names.values(), key=str.casefold)

    def __len__(self) -> int:
        return len(self._online)
