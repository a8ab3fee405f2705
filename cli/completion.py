"""Tab completion: command names, and after ``chat``, ``/msg`` or ``/query`` the users online.

Only where a command or a name is expected: inside a message Tab offers
nothing and so inserts nothing.

The client never asks the server just to complete a name; it keeps a
:class:`Roster` up to date from what the server already says -- the reply to
``users`` and every online/offline notice -- so completion is instant and
costs no round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from protocol import COMMAND_NAMES, Event, OnlineUsers, UserOffline, UserOnline, username_key

SLASH_COMMANDS = ("/msg", "/broadcast", "/query", "/who", "/quit", "/help", "/register",
                  "/password", "/history")
_NAME_AFTER = ("chat", "/msg", "/query", "history", "/history")


class Roster:
    """The other users online, as far as this client has heard."""

    def __init__(self, own_name: str) -> None:
        self._own_key = username_key(own_name)
        # key -> name as the server spells it
        self._online: dict[str, str] = {}

    def observe(self, event: Event | None) -> None:
        match event:
            case OnlineUsers(names):
                self._online = {username_key(name): name for name in names}
            case UserOnline(name):
                self._online[username_key(name)] = name
            case UserOffline(name):
                self._online.pop(username_key(name), None)
        self._online.pop(self._own_key, None)

    def names(self) -> list[str]:
        return sorted(self._online.values(), key=username_key)


class ChatCompleter(Completer):
    """Completes the first word to a command, the word after ``chat``/``/msg``/``/query`` to a user.

    ``query_active`` (a callable) says whether plain text is going to a
    /query partner: then only a word starting with ``/`` is a command.
    """

    def __init__(self, roster: Roster, query_active: object = None) -> None:
        self.roster = roster
        self.query_active = query_active if callable(query_active) else (lambda: False)

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        # Split the way protocol.parse_command does: runs of spaces are one gap.
        word, gap, rest = document.text_before_cursor.lstrip(" ").partition(" ")
        if self.query_active() and not word.startswith("/"):
            return
        if not gap:
            yield from _matching(word, (*COMMAND_NAMES, *SLASH_COMMANDS), suffix=" ")
        elif word.lower() in _NAME_AFTER and " " not in rest.lstrip(" "):
            yield from _matching(rest.lstrip(" "), self.roster.names(), suffix=" ")


def _matching(prefix: str, candidates: Iterable[str], suffix: str) -> Iterator[Completion]:
    folded = prefix.casefold()
    for candidate in candidates:
        if candidate.casefold().startswith(folded):
            yield Completion(candidate + suffix, start_position=-len(prefix), display=candidate)
