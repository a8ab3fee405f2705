"""What the chat does with stored messages (``--history on``): offline messages, history, backlog.

The chat hands this desk the moments that matter -- a direct message
delivered, a broadcast sent, a message for a name that is offline, a login,
a ``history`` command -- and the desk decides what is kept and who may read
it, through the :class:`~reactor.contracts.MessageStore` it was given:

* Nothing private is kept for a name that is not registered and proven on
  its connection (``connection.registered``): whoever takes an open name next
  must not read it.  A direct message is kept for each party that is.
* A message for a registered name that is offline waits for its next login
  (at most ``waiting_max``); unregistered names keep the plain ``<User X is
  offline.>``.
* The broadcasts are public: any logged-in user may read them.

Without ``--history`` the chat makes no desk, and a message costs nothing
here.  Everything runs on the chat thread.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from protocol import (
    EVERYONE,
    HistoryEnd,
    HistoryLine,
    InvalidInput,
    MessageStored,
    NotDelivered,
    ServiceUnavailable,
    UserOffline,
    UserUnknown,
    WaitingDelivered,
    WaitingMessage,
    format_event,
    format_server_time,
    username_key,
)
from reactor.config import HistoryConfig
from reactor.connection import Connection
from reactor.contracts import (
    HistoryUnavailable,
    LoginStep,
    MessageStore,
    Roster,
    StoredMessage,
    hand_over,
)

log = logging.getLogger("reactor")

NEEDS_REGISTERED = (
    'history with one user is kept only for registered names; register yours with register'
    ' "<password>"'
)

# What a user is told when the store cannot answer (its Redis is out of reach).
UNAVAILABLE = "the message store is unavailable; try again later"


# How long, and for how many names, a registered recipient on another node is
# remembered as such (each direct message to one would otherwise ask Redis).
REMEMBER_REGISTERED_MS = 60_000
REMEMBER_REGISTERED_NAMES = 10_000


def wall_clock_ms() -> int:
    """Now, in milliseconds since the epoch: the server time stored messages carry."""
    return time.time_ns() // 1_000_000


class HistoryDesk:
    """The chat's side of a :class:`~reactor.contracts.MessageStore`."""

    def __init__(self, store: MessageStore, config: HistoryConfig, roster: Roster[Connection],
                 accounts: LoginStep | None,
                 now_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.store = store
        self.config = config
        self.roster = roster
        self.accounts = accounts
        self.now_ms = now_ms
        # Names of other nodes' users known registered, until when (ms).
        self._registered: OrderedDict[str, int] = OrderedDict()

    # -- live messages --------------------------------------------------------

    def direct_delivered(self, sender: Connection, sender_name: str, recipient: object,
                         to: str, text: str) -> None:
        """A direct message was handed to its recipient: kept for each registered party."""
        store = self.store
        if recipient is not sender and getattr(recipient, "registered", False):
            if sender.registered:  # the common case: written once, kept for both
                store.record_pair(sender_name, to, text, self.now_ms())
            else:
                store.record(to, sender_name, to, text, self.now_ms())
            return
        remote = getattr(recipient, "remote", False)
        if not (sender.registered or remote):
            return  # between names anyone may take: nothing is kept, not even the time read
        now = self.now_ms()
        if sender.registered:
            store.record(sender_name, sender_name, to, text, now)
        if remote:
            # A user of another node, whose connection this node cannot ask:
            # on a cluster a registered name is only ever logged in with its
            # password, so owning the name is being registered.
            self._if_registered(sender, to, lambda: store.record(to, sender_name, to, text, now))

    def _if_registered(self, connection: Connection, name: str,
                       then: Callable[[], None]) -> None:
        """``then()`` if ``name`` is registered, asking the accounts at most
        once a while per name.  A name remembered a little too long (its
        account just removed) gets a copy nobody reads: registering the name
        anew clears it (:meth:`forgetter`)."""
        key, now = username_key(name), self.now_ms()
        known = self._registered
        if known.get(key, 0) > now:
            then()
            return
        if self.accounts is None:
            return

        def found(spelling: str | None) -> None:
            if spelling is None:
                return
            known[key] = self.now_ms() + REMEMBER_REGISTERED_MS
            known.move_to_end(key)
            while len(known) > REMEMBER_REGISTERED_NAMES:
                known.popitem(last=False)
            then()

        self.accounts.is_registered(connection, name, found)

    def broadcast_sent(self, sender_name: str, text: str) -> None:
        self.store.record(sender_name, sender_name, EVERYONE, text, self.now_ms())

    def offline(self, connection: Connection, sender_name: str, to: str, text: str,
                seen: str | None) -> None:
        """A direct message for ``to``, who is not online: held if ``to`` is
        registered, else the reply the chat always gave (``seen`` is the
        spelling the roster last saw, None if never)."""
        plain = UserUnknown(to) if seen is None else UserOffline(seen)
        if self.accounts is None:
            connection.reply(format_event(plain))
            return
        slot = connection.answer_later()

        def found(spelling: str | None) -> None:
            if spelling is None:
                connection.answer(slot, format_event(plain))
                return
            now = self.now_ms()
            try:
                held = self.store.hold(sender_name, spelling, text, now)
            except HistoryUnavailable as error:
                log.warning("Message from %s to %s not stored: %s", sender_name, spelling, error)
                connection.answer(slot, format_event(NotDelivered(spelling, UNAVAILABLE)))
                return
            if held is None:
                log.info("Message from %s to %s not stored: too many wait", sender_name, spelling)
                connection.answer(slot, format_event(NotDelivered(
                    spelling, f"too many messages wait for {spelling}")))
                return
            log.info("Message from %s to %s stored until they log in", sender_name, spelling)
            if connection.registered:
                self.store.record(sender_name, sender_name, spelling, text, now)
            connection.answer(slot, format_event(MessageStored(spelling)))

        self.accounts.is_registered(connection, to, found)

    # -- logging in -------------------------------------------------------------

    def logged_in(self, connection: Connection, name: str) -> None:
        """After the user's own online notice: what waited for it, oldest
        first, then the recent broadcasts.

        A waiting message is let go (kept in the user's history, its sender
        told, acknowledged) only once its line reached the connection's
        output; if the connection is lost first, the message stays held and
        comes again at the next login.  The backlog is acknowledged in one
        call once every line's fate is known, not one call per message.
        """
        if connection.registered:
            try:
                waiting = self.store.waiting(name)
            except HistoryUnavailable as error:
                log.warning("%s logged in: waiting messages not read: %s", name, error)
                waiting = []
            if waiting:
                log.info("%s logged in: waiting messages delivered: %d", name, len(waiting))
                held = _Backlog(self.store, name, len(waiting))
            for message in waiting:
                time_text = format_server_time(message.time_ms)
                line = format_event(WaitingMessage(message.sender, time_text, message.text))
                connection.send(line, self._on_handoff(name, message, time_text, held))
        now = self.now_ms()
        since = now - int(self.config.login_backlog_age * 1000)
        try:
            backlog = self.store.page(name, EVERYONE, None, self.config.login_backlog, now)
        except HistoryUnavailable:
            return  # a gap in what the user sees, nothing lost
        for message in backlog:
            if message.time_ms >= since:
                connection.send(_history_line(message))

    def _on_handoff(self, name: str, message: StoredMessage, time_text: str,
                    held: _Backlog) -> Callable[[bool], None]:
        def handed(ok: bool) -> None:
            held.settle(message.id if ok else None)
            if not ok:
                log.info("Waiting message from %s to %s kept: %s left first",
                         message.sender, name, name)
                return
            self.store.record(name, message.sender, name, message.text, message.time_ms)
            found = self.roster.lookup(message.sender)
            if found is not None and found[1].is_open:
                notice = format_event(WaitingDelivered(name, time_text))
                if isinstance(found[1], Connection):
                    found[1].send(notice)
                else:  # on another node: the notice travels as a direct message would
                    hand_over(found[1], notice, _ignore)

        return handed

    def forgetter(self, name: str) -> Callable[[], None]:
        """What to do once ``name`` is registered anew: it starts with no
        private history, whatever an earlier holder of the name left."""

        def forget() -> None:
            try:
                self.store.forget_conversations(name)
            except HistoryUnavailable as error:
                log.warning("History of %s not cleared at its registration: %s", name, error)

        return forget

    # -- the history command ------------------------------------------------------

    def history(self, connection: Connection, reader: str, peer: str, before: str | None,
                count: int | None) -> None:
        if peer != EVERYONE and not connection.registered:
            connection.reply(format_event(InvalidInput(NEEDS_REGISTERED)))
            return
        try:
            page = self.store.page(reader, peer, before, count or self.config.page_default,
                                   self.now_ms())
        except HistoryUnavailable:
            connection.reply(format_event(ServiceUnavailable(UNAVAILABLE)))
            return
        lines = [_history_line(message) for message in page]
        lines.append(format_event(HistoryEnd(peer, len(page))))
        connection.reply(b"".join(lines))


class _Backlog:
    """A login's waiting messages on their way out: acknowledged together,
    once the last one's line was taken or refused (a connection that is lost
    settles every line it had not taken, as refused)."""

    __slots__ = ("store", "name", "unsettled", "delivered")

    def __init__(self, store: MessageStore, name: str, count: int) -> None:
        self.store = store
        self.name = name
        self.unsettled = count
        self.delivered: list[str] = []

    def settle(self, delivered_id: str | None) -> None:
        """One line's fate: taken (its message's id) or refused (None)."""
        if delivered_id is not None:
            self.delivered.append(delivered_id)
        self.unsettled -= 1
        if self.unsettled or not self.delivered:
            return
        try:
            self.store.acknowledge(self.name, *self.delivered)
        except HistoryUnavailable as error:
            # Delivered again at the next login: twice rather than never.
            log.warning("Waiting messages for %s still held: %d: %s", self.name,
                        len(self.delivered), error)


def _ignore(delivered: bool, reason: str) -> None:
    """A delivery notice that could not be handed over is not retried: the
    sender left, or stopped reading."""


def _history_line(message: StoredMessage) -> bytes:
    return format_event(HistoryLine(message.id, format_server_time(message.time_ms),
                                    message.sender, message.to, message.text))
