"""The shared whiteboard: who is online, and which names were ever seen.

In the original C server this was a username-to-socket table behind a mutex.
Here it is deliberately a narrow interface of five operations, so that it can
later move to a shared store for several server processes without the chat
logic changing.  It does no locking itself: the threads backend holds its lock
around every chat call, the reactor needs none.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from protocol import username_key

S = TypeVar("S")

# Names remembered after their owner left, to tell "offline" from "does not
# exist".  Bounded so that a client cycling through fresh names cannot grow
# the server's memory without limit; the oldest are forgotten first.
MAX_REMEMBERED_NAMES = 100_000


class Whiteboard(Generic[S]):
    def __init__(self, max_remembered: int = MAX_REMEMBERED_NAMES) -> None:
        # key -> session and key -> display name; two dicts so that a fan-out
        # iterates a plain dict view of sessions, the hottest loop there is.
        self._online: dict[str, S] = {}
        self._names: dict[str, str] = {}
        # Names that were online and are not now, oldest first.
        self._offline: dict[str, str] = {}
        self._max_remembered = max_remembered

    def claim(self, name: str, session: S) -> bool:
        """Put ``name`` online for ``session``; False if it is taken (any case)."""
        key = username_key(name)
        if key in self._online:
            return False
        self._online[key] = session
        self._names[key] = name
        self._offline.pop(key, None)
        return True

    def release(self, name: str) -> None:
        """Take ``name`` offline; it can be claimed again at once."""
        key = username_key(name)
        if self._online.pop(key, None) is None:
            return
        self._offline[key] = self._names.pop(key)
        if len(self._offline) > self._max_remembered:
            del self._offline[next(iter(self._offline))]  # the longest gone

    def lookup(self, name: str) -> tuple[str, S] | None:
        """The online user's canonical name and session, or None."""
        key = username_key(name)
        session = self._online.get(key)
        return None if session is None else (self._names[key], session)

    def seen_as(self, name: str) -> str | None:
        """How ``name`` was spelled when last online, if it ever was."""
        key = username_key(name)
        return self._names.get(key) or self._offline.get(key)

    def online_sessions(self) -> Iterable[S]:
        """Every online session.  Callers must not claim or release while iterating."""
        return self._online.values()

    def online_names(self) -> list[str]:
        return sorted(self._names.values(), key=str.casefold)

    def __len__(self) -> int:
        return len(self._online)
