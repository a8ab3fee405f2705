"""The written contracts between the chat and what plugs into it.

Small :class:`typing.Protocol` s, in the manner of Centrifuge's ``Broker``
(what the node asks of the engine) and ``BrokerEventHandler`` (what the
engine tells the node).  Neither side holds the other whole: a feature
receives the narrow protocol it needs and nothing else, and mypy checks that
both sides keep it.

=========================  =====================================================
:class:`Scheduler`         what the backend's loop offers everyone: call later,
                           call soon from another thread, the clock, batches
:class:`ChatForConnection` what a connection asks of the chat
:class:`ConnectionEvents`  what a backend tells a connection
:class:`Recipient`         whom a direct message can be handed to
:class:`Session`           a local user's connection, as a roster holds it
:class:`Roster`            what the chat asks of a roster (who is online)
:class:`RosterEvents`      what a roster tells the chat
:class:`LoginSession`      what a login step may do with a client
:class:`LoginStep`         what the chat asks of a login step (accounts)
:class:`ChatForAdmin`      what the admin endpoint reads of the chat
:class:`Monitored`         what the admin endpoint reads of a part (metrics, readiness)
:class:`MessageStore`      what the chat asks of a history store (``--history``)
=========================  =====================================================

Every answer that may take time comes by callback; an implementation that
knows at once (the in-memory roster) calls it at once, before returning.
Everything here runs on the chat thread, except where a method says
otherwise.

This module sits at the bottom of the server: it imports nothing of the
server but its configuration and the framing types, so that every layer
above can speak of the others through it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sized
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from protocol.framing import Received
    from reactor.config import ServerConfig
    from reactor.metrics import ChatStats, Metric

# Called with (True, "") once a message was handed to the recipient's
# connection, or (False, reason) if it never will be.
DeliveryResult = Callable[[bool, str], None]
# Called with None if the name is now ours, or with the spelling under which
# it is taken; or, with a second argument, the reason the claim could not be
# decided now (a shared store out of reach).
ClaimResult = Callable[..., None]
# Called with None once a broadcast reached every other server, or with the
# reason it was not sent.
PublishResult = Callable[[str | None], None]
# A login step's way to let a name in, ``admit(session, name)``: the chat
# claims it on the roster; the claim's answer takes the next slot.
Admit = Callable[[Any, str], None]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class SocketLoop(Protocol):
    """What an event-loop backend lends the server's own other sockets (the
    cluster's Redis connections), so that they are served by its loop, on
    its thread, with no thread in between.  A backend without a loop of its
    own (threads) has none."""

    def watch(self, sock: socket.socket, on_ready: Callable[[bool, bool], None],
              write: bool = False) -> None:
        """Call ``on_ready(readable, writable)`` when ``sock`` is readable, or
        writable too with ``write``; called again, it changes ``write``."""

    def unwatch(self, sock: socket.socket) -> None: ...

    def at_end_of_pass(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once this pass of the loop has handled what was
        ready, before the clients' output is flushed: the place to flush
        what the pass queued for another server, once."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None: ...


class Scheduler(Protocol):
    """Time and threads, as the backend serving the chat provides them."""

    #: The backend's event loop for other sockets, or None (threads).
    socket_loop: SocketLoop | None

    def clock(self) -> float:
        """Monotonic seconds (a fake clock in the in-memory tests)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the chat thread after ``delay`` seconds."""

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback`` on the chat thread soon, in call order."""

    def together(self, several: bool = True) -> AbstractContextManager[None]:
        """Around work that arrives together (a batch of replies from another
        server): its fan-outs go out in one send per recipient once the
        batch is done.  Not ``several``: nothing changes."""


class ChatForConnection(Protocol):
    """What a :class:`~reactor.connection.Connection` asks of the chat.

    (``connection`` is typed ``Any`` here: this module sits below the
    connection, and each side names its own class.)"""

    config: ServerConfig
    #: The counters a connection bumps (bytes in and out, flood delays).
    stats: ChatStats

    def clock(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...

    def line_received(self, connection: Any, item: Received) -> None:
        """Act on one line (or an overlong line's report) from the client."""

    def user_left(self, connection: Any, reason: str) -> None:
        """The connection's user leaves the chat (once, as it stops being open)."""

    def login_wait(self, connection: Any, now: float) -> float:
        """Seconds before a login line from this address may be handled."""

    def login_timed_out(self, connection: Any) -> None: ...

    def connection_closed(self, connection: Any) -> None:
        """Bookkeeping once the socket is closed."""


class ConnectionEvents(Protocol):
    """What a backend tells a connection (the contract in
    :mod:`reactor.backends.base`), and the state of it that a backend may
    read to choose how to write."""

    is_open: bool
    #: Output above the high-water mark.
    output_backlog: bool
    #: A direct message to it timed out, and it has not read its queue empty since.
    not_reading: bool
    #: Since when its output has been above the soft limit, or None.
    over_soft_limit_since: float | None

    @property
    def pending_lines(self) -> Sized:
        """Lines received and not yet handled."""

    def data_received(self, data: bytes) -> None: ...

    def output_drained(self) -> None: ...

    def connection_lost(self) -> None: ...

    def abort(self, reason: str) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class Recipient(Protocol):
    """Whom a direct message can be handed to: a connection here, or a user
    of another server."""

    #: False once leaving: to a sender it is offline.
    is_open: bool
    #: True if a delivery travels in the roster's own order (through the
    #: shared store, behind this server's broadcasts still being published),
    #: so it need not wait here for them; False for a connection here.
    remote: bool

    def deliver(self, data: bytes, on_result: DeliveryResult) -> None:
        """Hand over a direct message; ``on_result`` once it was taken, or never will be."""

    def fail(self, error: BaseException) -> None:
        """Contain an error raised on this recipient's behalf."""


def hand_over(recipient: Recipient, data: bytes, on_result: DeliveryResult) -> None:
    """``recipient.deliver(data, on_result)``; a failure there is the
    recipient's (contained by its ``fail``), and the message was not delivered."""
    try:
        recipient.deliver(data, on_result)
    except Exception as error:
        recipient.fail(error)
        on_result(False, "internal error")


class Session(Recipient, Protocol):
    """A user of this server, as a roster holds it (a connection)."""

    def send(self, data: bytes) -> object: ...

    def close(self, reason: str) -> None: ...


class RosterEvents(Protocol):
    """What a roster tells the chat (registered once, at ``Roster.start``)."""

    def user_online(self, name: str) -> None:
        """A user of another server came online."""

    def users_offline(self, names: list[str]) -> None:
        """Users of other servers left, to be announced in this order."""

    def broadcast_arrived(self, data: bytes) -> None:
        """A broadcast line from a user of another server, for ours."""

    def disconnect(self, session: Session, reason: str) -> None:
        """Close one of ours for a reason of the roster's (its name was lost)."""


S = TypeVar("S", bound=Session)


class Roster(Protocol, Generic[S]):
    """Who is online: what the chat asks of it.

    The chat never blocks on an answer: ``claim``, ``release`` and
    ``publish`` report through callbacks (at once in memory, when a shared
    store replies in a cluster).  ``lookup`` and the others read what this
    server knows now."""

    def start(self, events: RosterEvents, scheduler: Scheduler) -> None:
        """The chat is served: start talking to peers, if any."""

    def close(self) -> None:
        """The server has stopped: say goodbye to peers, stop threads."""

    def unavailable_reason(self) -> str | None:
        """Why the chat cannot act now (a shared store out of reach), or None."""

    def claim(self, name: str, session: S, on_result: ClaimResult) -> None:
        """Put ``name`` online for ``session`` unless it is taken (ignoring case)."""

    def release(self, name: str, on_done: Callable[[], None] | None = None) -> None:
        """Take ``name`` offline; claimable again here at once, and everywhere
        once ``on_done`` is called."""

    def publish(self, data: bytes, on_result: PublishResult) -> None:
        """Send a broadcast line to every other server's users."""

    def lookup(self, name: str) -> tuple[str, Recipient] | None:
        """The online user's canonical name and how to reach it, or None."""

    def surely_taken(self, name: str) -> str | None:
        """The spelling ``name`` is online under, if a claim would certainly be refused."""

    def seen_as(self, name: str) -> str | None:
        """How ``name`` was spelled when last online, if it ever was."""

    def online_sessions(self) -> Iterable[S]:
        """This server's users.  Callers must not claim or release while iterating."""

    def online_names(self) -> list[str]:
        """Every online name, sorted ignoring case."""

    def remote_count(self) -> int:
        """Users online on other servers."""

    def __len__(self) -> int: ...


class LoginSession(Protocol):
    """What a login step may do with the client logging in.

    Its answers take their place in the client's reply queue: ``answer_later``
    reserves one (the client's next lines wait while logging in), and
    ``answer`` fills it."""

    peer_host: str
    is_open: bool
    #: Until when (the scheduler's clock) the user's messages are refused: a mute.
    muted_until: float | None
    #: The registered name whose password the next line is (see ask_password).
    password_for: str | None
    #: Wrong passwords sent on this connection so far (the login step counts).
    password_tries: int
    #: The name it is logged in as is registered and proven (its password, or
    #: registered on this connection): the login step sets it.
    registered: bool

    @property
    def secure(self) -> bool:
        """The bytes are protected on the way (TLS)."""

    def answer_later(self, blocking: bool = False) -> Any:
        """A slot in the reply queue for an answer that comes later; while
        logging in, or if ``blocking``, the next lines wait until it is done."""

    def answer(self, slot: Any, data: bytes = b"") -> None:
        """Fill ``slot``: ``data`` is sent once every answer before it has been."""

    def reply(self, data: bytes) -> None:
        """Send ``data`` in command order, behind any answer still awaited."""

    def send(self, data: bytes) -> object:
        """Send ``data`` now (while logging in, nothing else is awaited)."""

    def ask_password(self, name: str) -> None:
        """The next line is the password of the registered ``name``."""

    def password_done(self) -> None:
        """The password step is over (a right password: the name is claimed
        next; or none could be checked: a name is asked for again)."""

    def guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback`` under this connection's containment."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...

    def close(self, reason: str) -> None: ...


class ModerationEvents(Protocol):
    """What operators' bans, mutes and kicks (the login step's) do to the
    users of this server.  A target is a username's key
    (``protocol.username_key``) or an address (``protocol.canonical_address``)."""

    def moderation_disconnect(self, targets: dict[str, tuple[bytes, str]]) -> set[str]:
        """For each target, send its line to every user here that it names
        and close their connections with its reason, in one pass over this
        server's users; the targets that named somebody."""

    def moderation_mutes(self, mutes: dict[str, tuple[float, bytes | None]],
                         complete: bool) -> None:
        """Mute the users here whose key is in ``mutes`` for that many more
        seconds (``math.inf``: until unmuted; 0 unmutes), and send them the
        line when that changes whether they are muted; ``complete``: these
        are all the mutes in force, so anyone else here is unmuted."""

    def online_anywhere(self, name: str) -> bool:
        """Is ``name`` online on any server of the chat?"""


class LoginStep(Protocol):
    """What the chat asks of a login step (registered names, ``--accounts``).

    Without one, every valid name goes straight to the roster.  With one,
    the chat hands it each valid name, each password line, and the account
    commands; it lets a name in by calling ``admit(name)``."""

    def start(self, scheduler: Scheduler, events: ModerationEvents | None = None) -> None:
        """Begin; what operators do reaches the chat through ``events``."""

    def close(self) -> None: ...

    def moderate(self, session: LoginSession, sender: str, command: Any,
                 events: ModerationEvents) -> None:
        """An operator's command (``protocol.moderation``) from ``sender``:
        refused unless the sender is an operator; answered in its turn."""

    def login(self, session: LoginSession, name: str, admit: Admit) -> None:
        """A valid username: ask for its password, or ``admit`` it."""

    def password_line(self, session: LoginSession, raw: bytes, admit: Admit) -> None:
        """The line after ``ask_password``.  Never logged."""

    def register(self, session: LoginSession, name: str, password: str,
                 on_registered: Callable[[], None] | None = None) -> None:
        """Make ``name`` the session's; ``on_registered()`` on the chat thread
        once it is, before the answer."""

    def change_password(self, session: LoginSession, name: str, old: str, new: str) -> None: ...

    def is_registered(self, session: LoginSession, name: str,
                      on_result: Callable[[str | None], None]) -> None:
        """``on_result(spelling)`` on the chat thread, under ``session``'s
        containment: the registered spelling of ``name``, or None if it is
        not registered (or the store could not say)."""


class ChatForAdmin(Protocol):
    """What the admin endpoint (``--admin-port``) reads of the chat, on the
    chat thread, when asked."""

    #: The chat's counters.
    stats: ChatStats
    #: When the housekeeping timer last ran (the chat's clock): timers fire.
    housekeeping_at: float

    @property
    def connection_count(self) -> int: ...

    def user_counts(self) -> tuple[int, int]:
        """Users online on this server, and on the cluster's others."""

    def output_queued(self) -> int:
        """Bytes queued for all clients, not yet taken by the kernel."""

    def clock(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


@runtime_checkable
class Monitored(Protocol):
    """What the admin endpoint (``--admin-port``) reads of a part of the
    server when asked, on the chat thread: nothing is pushed to it."""

    def metrics(self) -> list[Metric]:
        """The part's metric families, read from its state now."""

    def unready_reason(self) -> str | None:
        """Why the part cannot serve now (one line, for ``/readyz``), or None."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as a history store keeps it.

    ``id`` orders the messages of one conversation (compare ids only for
    equality: a store writes them as it likes, digits on the wire);
    ``time_ms`` is the server's wall clock when it was stored, in
    milliseconds since the epoch; ``to`` is the recipient's name, or
    ``everyone`` for a broadcast.
    """

    id: str
    time_ms: int
    sender: str
    to: str
    text: str


class HistoryUnavailable(Exception):
    """A history store cannot answer now (its Redis is out of reach): the
    chat tells the user so, or logs it, and goes on."""


class MessageStore(Protocol):
    """What the chat asks of a history store (``--history on``; see :mod:`reactor.history`).

    A conversation is ``everyone`` (the broadcasts, one for all) or one
    registered name's direct messages with one other name: its owner's own
    copy, so that nobody reads what was said to an earlier holder of a name
    (a message between two registered names is kept for each).  Names
    are matched ignoring case.  The store keeps at most its retention (a
    count per conversation and an age) and never more than its bounds,
    whatever clients do; it decides nothing about who may read: the chat
    records and asks only for what an owner may see.  Without ``--history``
    the chat holds no store at all, so a message costs nothing here.
    """

    def record(self, owner: str, sender: str, to: str, text: str, time_ms: int) -> None:
        """Keep a delivered message in ``owner``'s conversation with the other
        party (``owner`` is the sender or ``to``), or a broadcast when ``to``
        is ``everyone`` (``owner`` is then ignored).  A store may write it
        later, off the caller's thread (a failure then is its own to log):
        it is the hot path of every message."""

    def record_pair(self, sender: str, to: str, text: str, time_ms: int) -> None:
        """Keep a delivered direct message for both its parties, as
        ``record`` once for ``sender`` and once for ``to`` would: each owns
        its copy (forgetting one leaves the other).  A store may keep it
        once, marked with both owners: the hot path when both are registered."""

    def page(self, owner: str, peer: str, before: str | None, count: int,
             now_ms: int) -> list[StoredMessage]:
        """The latest ``count`` messages of ``owner``'s conversation with
        ``peer`` (or of the broadcasts, ``peer`` being ``everyone``) older
        than ``before`` (an id; None: the newest), oldest first, none older
        than the retention."""

    def hold(self, sender: str, to: str, text: str, time_ms: int) -> StoredMessage | None:
        """Keep a message for ``to``, who is offline; None if ``to`` has as
        many waiting as the store allows (nothing is kept then)."""

    def waiting(self, to: str) -> list[StoredMessage]:
        """Every message held for ``to``, oldest first.  They stay held until
        acknowledged: a message is let go only once it reached its
        recipient's connection, so that a connection lost during the login
        backlog loses nothing (it comes again at the next login)."""

    def acknowledge(self, to: str, *message_ids: str) -> None:
        """The held messages ``message_ids`` reached ``to``: hold them no
        more (a login's backlog is let go in one call)."""

    def forget_conversations(self, owner: str) -> None:
        """Remove ``owner``'s own copies of its conversations: the name was
        registered anew, and nothing kept for an earlier holder may be read
        (not even a write that landed after the account's removal)."""

    def forget(self, name: str) -> None:
        """Remove what is kept for ``name``: the messages waiting for it, those
        it left waiting for others, and its own conversations (its account was
        removed).  Others' copies of their conversations with it stay theirs."""

    def close(self) -> None: ...
