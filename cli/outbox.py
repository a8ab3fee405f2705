"""Which of our commands has the server answered?  A FIFO of outstanding commands.

The server answers every command on a connection, in order, with exactly one
line: a message with its echo (``<To Bob> ...``/``<To everyone> ...``) or a
refusal (``<User Bob is offline.>``, ``<User Bob does not exist.>``,
``<Message to Bob not delivered: ...>``, ``<Invalid input: ...>``), ``users``
with the online list, ``help`` with the help line, ``history`` with its
closing line (after its history lines) and ``bye`` with our own offline
notice; a message kept for a registered name that is offline gets ``<Message
to Bob stored until they log in.>`` instead of its echo.  Everything else
the server sends -- presence notices and incoming messages -- is
unsolicited.  So the oldest outstanding command is the one the next reply
belongs to, and each event is classified by its type:

* an echo, ``does not exist``, ``not delivered``, the users list or the help
  line can only be a reply; it answers the oldest outstanding command it fits
  (normally the head);
* ``<Invalid input: ...>`` answers the head, whatever it is;
* ``<User Bob is offline.>`` is a reply only when a message to Bob is at the
  head (or, for our own name, ``bye``); otherwise it is presence.

The one ambiguity: a presence notice "Bob is offline" can arrive while our
message to Bob is at the head.  We take it as the reply -- the safer reading,
since it never claims a delivery that did not happen.  It is also almost
always right: the server handles our commands in order, so if Bob's departure
reached us before our message's answer, the message found Bob gone too and
its real reply (another offline line) is then shown as presence.  Only if Bob
came back in between does the message get through; its echo then arrives
with nothing outstanding for it, and the message is reported as delivered
after all (:attr:`Resolution.corrected`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from protocol import (
    Broadcast,
    BroadcastNotSent,
    BroadcastSent,
    Bye,
    ChangePassword,
    Chat,
    Command,
    HelpText,
    History,
    HistoryEnd,
    InvalidInput,
    MessageSent,
    MessageStored,
    NotDelivered,
    OnlineUsers,
    PasswordChanged,
    Register,
    Registered,
    UserOffline,
    Users,
    UserUnknown,
    WrongPassword,
    username_key,
)
from protocol import (
    Help as HelpCommand,
)

# With no answer after this many seconds a command is shown as overdue.  Longer
# than the server's own delivery timeout (5 s by default), after which it
# answers "not delivered" for a recipient who is not reading: "no answer"
# should mean the server itself is not answering.
ANSWER_TIMEOUT = 8.0


@dataclass(eq=False, slots=True)
class Outgoing:
    """A command sent and not yet answered.  ``tag``: the caller's (a line number)."""

    command: Command
    sent_at: float
    tag: object = None

    @property
    def is_message(self) -> bool:
        return isinstance(self.command, Chat | Broadcast)

    @property
    def recipient(self) -> str:
        """``Bob`` or ``everyone`` (messages only)."""
        return self.command.to if isinstance(self.command, Chat) else "everyone"

    @property
    def text(self) -> str:
        return self.command.text if isinstance(self.command, Chat | Broadcast) else ""


@dataclass(frozen=True, slots=True)
class Resolution:
    """The server's answer to one of our commands.

    ``delivered``: True (echoed), False (refused, with ``reason``), or None
    when the answer is not about delivery (``users``, ``help``, ``bye``) or
    is unknown (the connection dropped first).
    """

    outgoing: Outgoing
    delivered: bool | None
    reason: str = ""
    corrected: bool = False


@dataclass
class Outbox:
    own_name: str
    _queue: deque[Outgoing] = field(default_factory=deque)
    # Messages we reported as refused because of an offline line: see the
    # module docstring.  Bounded; only the recent past can be corrected.
    _refused: deque[Outgoing] = field(default_factory=lambda: deque(maxlen=64))

    def sent(self, command: Command, now: float, tag: object = None) -> Outgoing:
        entry = Outgoing(command, now, tag)
        self._queue.append(entry)
        return entry

    def pending(self) -> list[Outgoing]:
        return list(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def drop_all(self) -> list[Outgoing]:
        """The connection is gone: whatever was outstanding will never be answered."""
        dropped = list(self._queue)
        self._queue.clear()
        return dropped

    def on_event(self, event: object) -> tuple[list[Resolution], bool]:
        """Match one event; returns the resolutions it causes and whether it was a reply."""
        match event:
            case MessageSent(to, _):
                return self._answer(lambda c: _is_chat_to(c, to), True, "", correct=True)
            case BroadcastSent():
                return self._answer(lambda c: isinstance(c, Broadcast), True, "")
            case MessageStored(to):
                # Kept for a registered name that is offline: answered, not delivered yet.
                return self._answer(lambda c: _is_chat_to(c, to), None, "")
            case HistoryEnd():
                # The history lines before it are the answer's body.
                return self._answer(lambda c: isinstance(c, History), None, "")
            case OnlineUsers():
                return self._answer(lambda c: isinstance(c, Users), None, "")
            case HelpText():
                return self._answer(lambda c: isinstance(c, HelpCommand), None, "")
            case Registered():
                return self._answer(lambda c: isinstance(c, Register), None, "")
            case PasswordChanged():
                return self._answer(lambda c: isinstance(c, ChangePassword), None, "")
            case WrongPassword():
                return self._answer(lambda c: isinstance(c, ChangePassword), None,
                                    "the old password is wrong")
            case UserUnknown(name):
                return self._answer(lambda c: _is_chat_to(c, name), False,
                                    f"{name} does not exist")
            case NotDelivered(to, reason):
                return self._answer(lambda c: _is_chat_to(c, to), False, reason)
            case BroadcastNotSent(reason):
                return self._answer(lambda c: isinstance(c, Broadcast), False, reason)
            case InvalidInput(reason):
                if not self._queue:
                    return [], False
                entry = self._queue.popleft()
                return [Resolution(entry, False if entry.is_message else None,
                                   f"the server refused it: {reason}")], True
            case UserOffline(name):
                head = self._queue[0] if self._queue else None
                if head is not None and _is_chat_to(head.command, name):
                    self._queue.popleft()
                    self._refused.append(head)
                    return [Resolution(head, False, f"{name} is offline")], True
                if head is not None and isinstance(head.command, Bye) \
                        and username_key(name) == username_key(self.own_name):
                    self._queue.popleft()
                    return [Resolution(head, None)], True
        return [], False

    def _answer(self, fits: object, delivered: bool | None, reason: str,
                correct: bool = False) -> tuple[list[Resolution], bool]:
        assert callable(fits)
        for index, entry in enumerate(self._queue):
            if fits(entry.command):
                # Anything older was answered by a line we could not place:
                # its fate is unknown, say so rather than wait for ever.
                out = [Resolution(self._queue.popleft(), None, "no answer recognised")
                       for _ in range(index)]
                self._queue.popleft()
                out.append(Resolution(entry, delivered, reason))
                return out, True
        if correct:
            for entry in self._refused:
                if fits(entry.command):
                    self._refused.remove(entry)
                    return [Resolution(entry, True, "", corrected=True)], True
        return [], False


def _is_chat_to(command: Command, name: str) -> bool:
    return isinstance(command, Chat) and username_key(command.to) == username_key(name)
