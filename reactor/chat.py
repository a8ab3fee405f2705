"""The chat logic, written once: what each line from a client causes.

Backends never decide anything about the chat.  They hand this service each
new transport (:meth:`ChatService.connection_made`) and then talk to the
:class:`~reactor.connection.Connection` it returns.  This class never blocks
and never touches a socket.  It is not thread-safe: the threads backend holds
one lock around every call, as the original held its mutex around the
whiteboard.

It is given what it works with -- a roster and, with registered names, a
login step (:mod:`reactor.contracts`) -- by the composition root,
:mod:`reactor.app`; it builds neither.  There is one chat path: a roster in
memory answers at once, a cluster's later, and the chat does not ask which.

A fan-out formats its event once and hands the same ``bytes`` object to every
recipient.

The jobs beside the chat's own are its parts, each in a module of its own:
:mod:`reactor.login` (the lines before a name), :mod:`reactor.output_budget`
(what all queues together may hold) and :mod:`reactor.sanctions` (what
operators' kicks, bans and mutes do here).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from protocol import (
    Ban,
    Bans,
    Broadcast,
    BroadcastNotSent,
    Bye,
    ChangePassword,
    Chat,
    Disconnected,
    Help,
    HelpText,
    History,
    InvalidInput,
    InvalidUsername,
    Kick,
    LineTooLong,
    Mute,
    NotDelivered,
    OnlineUsers,
    ProtocolError,
    Register,
    ServerFull,
    ShuttingDown,
    TooManyFromAddress,
    Unban,
    Unmute,
    UserOffline,
    UserOnline,
    Users,
    UserUnknown,
    decode_line,
    format_event,
    parse_command,
)
from protocol.events import (
    format_broadcast_from,
    format_broadcast_sent,
    format_message_from,
    format_message_sent,
)
from protocol.framing import Received
from reactor.config import HistoryConfig, ServerConfig
from reactor.connection import Connection, Slot
from reactor.contracts import (
    LoginStep,
    MessageStore,
    Roster,
    Session,
    SocketLoop,
    TimerHandle,
)
from reactor.log_format import UserText
from reactor.login import Login
from reactor.metrics import ChatStats, close_label
from reactor.output_budget import OutputBudget
from reactor.phases import Phase
from reactor.sanctions import Sanctions
from reactor.scheduling import CallLater, CallSoon, LoopScheduler
from reactor.stored import HistoryDesk
from reactor.transport import Transport

log = logging.getLogger("reactor")

_HELP = format_event(HelpText())
_FULL = format_event(ServerFull())
_TOO_MANY_FROM_ADDRESS = format_event(TooManyFromAddress())
_SHUTTING_DOWN = format_event(ShuttingDown())

# Seconds between checks of the output limits that take time to judge (the
# soft limit's grace period, the server-wide budget).
HOUSEKEEPING_INTERVAL = 1.0

SendAtOnce = Callable[[bytes, list[Connection], bool], list[Connection]]
# Offline notices joined into one fan-out when many users leave together
# (~15 KiB): far below a connection's output limit, so that a chat of any
# size never cuts a reader off for one server's death.
OFFLINE_NOTICES_PER_FAN_OUT = 512

NO_HISTORY = "this server keeps no history; the operator can turn it on with --history on"
NO_ACCOUNTS = "this server keeps no registered names; the operator can turn them on with --accounts"
NO_OPERATORS = ("this server has no operators: operators are registered names, and it keeps"
                " none (no --accounts)")


class ChatService:
    """The chat: what it promises is in the module docstring; what it asks of
    its roster and login step, and what the roster may tell it
    (:class:`~reactor.contracts.RosterEvents`), is in
    :mod:`reactor.contracts`."""

    def __init__(
        self,
        config: ServerConfig,
        whiteboard: Roster[Connection],
        accounts: LoginStep | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: MessageStore | None = None,
    ) -> None:
        self.config = config
        self.whiteboard = whiteboard  # the roster
        # Registered names (--accounts): None is the open chat.
        self.accounts = accounts
        self.clock = clock
        # Stored messages (--history on): None keeps nothing and costs a
        # message nothing.
        self.history = history
        self._desk = None if history is None else HistoryDesk(
            history, config.history or HistoryConfig(), whiteboard, accounts)
        self.scheduler = LoopScheduler(clock)
        # What happened, counted for the admin endpoint's /metrics.
        self.stats = ChatStats()
        # When the housekeeping timer last ran: /healthz's sign that timers fire.
        self.housekeeping_at = clock()
        self._connections: set[Connection] = set()
        self._per_address: Counter[str] = Counter()
        # Lines before a name: login, password, the claim on the roster.
        self._login = Login(whiteboard, accounts, config.flood, self.stats, self._logged_in)
        # All queues within the output budget: slow consumers cut, broadcasts
        # held over the high-water mark.
        self._output_budget = OutputBudget(config, self._connections, clock, self.scheduler)
        # What operators' kicks, bans and mutes do here (ModerationEvents).
        self._sanctions = Sanctions(whiteboard, clock)
        self._send_at_once: SendAtOnce | None = None
        self._shutting_down = False
        # Offline notices held while a fan-out is under way (see user_left).
        self._fan_out_depth = 0
        self._deferred_notices: list[bytes] = []

    # -- set-up by the backend ------------------------------------------------

    def attach(self, call_later: CallLater, call_soon_threadsafe: CallSoon | None = None,
               send_at_once: SendAtOnce | None = None,
               socket_loop: SocketLoop | None = None) -> None:
        """Give the service the backend's timers, its way in from other
        threads, its fan-out fast path (``Server.send_at_once``) and its
        event loop for other sockets (``Server.socket_loop``), if any;
        starts its housekeeping, its roster and its login step."""
        self.scheduler.attach(call_later, call_soon_threadsafe, socket_loop)
        self.housekeeping_at = self.clock()
        self._send_at_once = send_at_once
        call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)
        self.whiteboard.start(self, self.scheduler)
        if self.accounts is not None:
            self.accounts.start(self.scheduler, self._sanctions)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.scheduler.call_later(delay, callback)

    def together(self, several: bool = True) -> AbstractContextManager[None]:
        """See :meth:`LoopScheduler.together <reactor.scheduling.LoopScheduler.together>`."""
        return self.scheduler.together(several)

    def close(self) -> None:
        """The backend has stopped serving: leave the cluster, release the
        accounts' workers and store, and the history store."""
        self.whiteboard.close()
        if self.accounts is not None:
            self.accounts.close()
        if self.history is not None:
            self.history.close()

    # -- connection lifecycle -------------------------------------------------

    def connection_made(self, transport: Transport) -> Connection:
        """Admit a new connection, or refuse it with one line and close it."""
        connection = Connection(transport, self)
        transport.connection = connection
        self._connections.add(connection)
        self._per_address[connection.peer_host] += 1
        host = connection.peer_host
        per_ip = self.config.max_clients_per_ip
        if len(self._connections) > self.config.max_clients:
            log.warning("Refused a connection from %s: server full", host)
            self.stats.refused["server_full"] += 1
            connection.send(_FULL)
            connection.close("server full")
        elif per_ip and self._per_address[host] > per_ip:
            log.warning("Refused a connection from %s: too many from it", host)
            self.stats.refused["too_many_from_address"] += 1
            connection.send(_TOO_MANY_FROM_ADDRESS)
            connection.close("too many connections from one address")
        elif self._shutting_down:
            self.stats.refused["shutdown"] += 1
            connection.send(_SHUTTING_DOWN)
            connection.close("server shutting down")
        else:
            self.stats.accepted += 1
            connection.start_login_timer()
        return connection

    def connection_closed(self, connection: Connection) -> None:
        """Bookkeeping once a connection's socket is closed."""
        if connection in self._connections:
            self.stats.closed[close_label(connection.close_reason)] += 1
            self._connections.discard(connection)
            host = connection.peer_host
            self._per_address[host] -= 1
            if not self._per_address[host]:
                del self._per_address[host]

    def user_left(self, connection: Connection, reason: str) -> None:
        """The connection's user leaves the chat (bye, drop, abort, shutdown).

        Called once per user, when the connection stops being open -- not
        when its socket finally closes -- so the name is free at once even
        while the last output drains.
        """
        name = connection.username
        if name is None:
            return
        # Release first: whatever goes wrong below, the name is free again.
        self.whiteboard.release(name)
        connection.username = None
        if reason.startswith("slow consumer"):
            log.warning("%s disconnected: %s.", name, reason)
        else:
            log.info("%s disconnected.", name)
        self._announce_offline(name)

    def _announce_offline(self, *names: str) -> None:
        """Tell everyone these users left.  Several (a server that left or
        died) go as a few fan-outs of their notices joined, back to back:
        the same bytes as one fan-out per name, but one send per user per
        chunk instead of per name -- a node of 1,250 users that hears of
        1,250 others gone otherwise pays 1.6 million fan-out steps."""
        if self._shutting_down:
            return
        notices = [format_event(UserOffline(name)) for name in names]
        for start in range(0, len(notices), OFFLINE_NOTICES_PER_FAN_OUT):
            chunk = b"".join(notices[start:start + OFFLINE_NOTICES_PER_FAN_OUT])
            if self._fan_out_depth:
                # Cut off in the middle of another fan-out (a failed send, a
                # slow consumer): announce it once that one is done, rather
                # than nest -- when many drop at once, nesting chains one
                # fan-out inside the next until the stack runs out.
                self._deferred_notices.append(chunk)
            else:
                self._fan_out(chunk, self.whiteboard.online_sessions())

    def shutdown(self) -> None:
        """Tell everyone the server is going away and start closing them all."""
        self._shutting_down = True
        for connection in list(self._connections):
            if connection.is_open:
                connection.transport.drop_unsent()  # the notice next, not after a backlog
                connection.send(_SHUTTING_DOWN)
                connection.close("server shutting down")

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def connections(self) -> Iterable[Connection]:
        return self._connections

    def user_counts(self) -> tuple[int, int]:
        """Users online here, and on the cluster's other servers."""
        remote = self.whiteboard.remote_count()
        return len(self.whiteboard) - remote, remote

    def output_queued(self) -> int:
        """Bytes queued for all clients now (for the admin endpoint; O(connections))."""
        return self._output_budget.queued()

    # -- housekeeping ---------------------------------------------------------

    def _housekeeping(self) -> None:
        """Every HOUSEKEEPING_INTERVAL: the output limits that take time to
        judge, and the login meters of addresses that owe nothing again."""
        self.housekeeping_at = self.clock()
        try:
            self._output_budget.check()
            self._login.meters.forget_full(self.clock())
        finally:
            if self.scheduler.attached:
                self.scheduler.call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)

    # -- input ----------------------------------------------------------------

    def login_wait(self, connection: Connection, now: float) -> float:
        """Seconds before a login line from this address may be handled."""
        return self._login.meters.wait(connection.peer_host, now)

    def login_timed_out(self, connection: Connection) -> None:
        self._login.timed_out(connection)

    def line_received(self, connection: Connection, item: Received) -> None:
        """Act on one line (or an overlong line's report) from a client."""
        if isinstance(item, LineTooLong):
            self._reject(connection, f"line longer than {item.limit} bytes, discarded")
            return
        phase = connection.phase
        if phase is Phase.CHATTING:
            self._command_line(connection, item)
        elif phase is Phase.PASSWORD:
            self._login.password_line(connection, item)
        else:
            self._login.line(connection, item)

    def _reject(self, connection: Connection, reason: str) -> None:
        if connection.phase is Phase.LOGIN:
            connection.reply(format_event(InvalidUsername(reason)))
        else:
            connection.reply(format_event(InvalidInput(reason)))

    def _logged_in(self, connection: Connection, name: str) -> None:
        """A user of this server is online: everyone hears of it."""
        self._fan_out(format_event(UserOnline(name)), self.whiteboard.online_sessions())
        if self._desk is not None:
            self._desk.logged_in(connection, name)

    def _command_line(self, connection: Connection, raw: bytes) -> None:
        if not raw.strip(b" "):
            return
        try:
            command = parse_command(decode_line(raw))
        except ProtocolError as error:
            self.stats.invalid_lines += 1
            connection.reply(format_event(InvalidInput(error.reason)))
            return
        sender = connection.username
        assert sender is not None
        if type(command) is Chat:
            # The hot command, dispatched before the match (whose class
            # patterns cost a few isinstance and attribute look-ups each).
            self.stats.chat_lines += 1
            if connection.muted_until is None or not self._sanctions.refuses(connection):
                self._direct_message(connection, sender, command.to, command.text)
            return
        self.stats.commands[type(command)] += 1
        match command:
            case Broadcast(text):
                if connection.muted_until is not None and self._sanctions.refuses(connection):
                    return  # refused with its line (Sanctions.refuses)
                budget = self._output_budget
                if budget.held is not None:
                    budget.hold(connection, raw)  # over the high-water mark: it waits
                    return
                self._broadcast(connection, sender, text)
            case Users():
                names = tuple(self.whiteboard.online_names())
                connection.reply(format_event(OnlineUsers(names)))
            case Help():
                connection.reply(_HELP)
            case Bye():
                self._bye(connection, sender)
            case Register(password):
                if self.accounts is None:
                    connection.reply(format_event(InvalidInput(NO_ACCOUNTS)))
                else:
                    desk = self._desk
                    self.accounts.register(connection, sender, password,
                                           None if desk is None else desk.forgetter(sender))
            case ChangePassword(old, new):
                if self.accounts is None:
                    connection.reply(format_event(InvalidInput(NO_ACCOUNTS)))
                else:
                    self.accounts.change_password(connection, sender, old, new)
            case History(peer, before, count):
                if self._desk is None:
                    connection.reply(format_event(InvalidInput(NO_HISTORY)))
                else:
                    self._desk.history(connection, sender, peer, before, count)
            case Kick() | Ban() | Unban() | Mute() | Unmute() | Bans():
                if self.accounts is None:
                    connection.reply(format_event(InvalidInput(NO_OPERATORS)))
                else:
                    self.accounts.moderate(connection, sender, command, self._sanctions)

    # -- what commands cause --------------------------------------------------

    def _direct_message(self, connection: Connection, sender: str, to: str, text: str) -> None:
        stats = self.stats
        stats.received_direct += 1
        whiteboard = self.whiteboard
        # Even a message between two users of this server: a cluster node
        # that has lost the cluster may already have been declared dead.
        down = whiteboard.unavailable_reason()
        if down is not None:
            stats.not_delivered += 1
            connection.reply(format_event(NotDelivered(to, down)))
            return
        found = whiteboard.lookup(to)
        desk = self._desk
        if found is None:
            stats.not_delivered += 1
            seen = whiteboard.seen_as(to)
            if desk is not None:
                desk.offline(connection, sender, to, text, seen)
                return
            reply = UserUnknown(to) if seen is None else UserOffline(seen)
            connection.reply(format_event(reply))
            return
        recipient_name, recipient = found
        if not recipient.is_open:
            # Leaving but not yet gone: to a sender it is offline.
            stats.not_delivered += 1
            if desk is not None:
                desk.offline(connection, sender, recipient_name, text, recipient_name)
                return
            connection.reply(format_event(UserOffline(recipient_name)))
            return
        if log.isEnabledFor(logging.INFO):
            log.info("Message from %s to %s: %s", sender, recipient_name,
                     UserText.of(text, self.config.log_text))

        if recipient is connection:
            # To oneself: the echo and the message share one stream, so the
            # echo can never be seen without the message after it.
            stats.delivered_direct += 1
            connection.reply(format_message_sent(recipient_name, text))
            connection.reply(format_message_from(sender, text))
            if desk is not None:
                desk.direct_delivered(connection, sender, connection, recipient_name, text)
            return

        # The echo "<To Bob> ..." promises that the message was handed to
        # Bob's connection, so it waits for that, in command order; the
        # sender's next lines go ahead meanwhile.  Most messages are taken
        # at once, while this line is handled: their echo is a plain reply,
        # and only an answer still awaited when the hand-over returns takes
        # a slot (reserved before any later line is handled).
        data = format_message_from(sender, text)
        clock = self.clock
        taken = clock()
        # Fast path: taken whole at once by a connection here, answered
        # without the callback below (what it would do with True).
        offered = connection.hand_over_at_once(recipient, data)
        if offered == len(data):
            stats.delivered_direct += 1
            stats.direct_handoff.observe(clock() - taken)
            connection.reply(format_message_sent(recipient_name, text))
            if desk is not None:
                desk.direct_delivered(connection, sender, recipient, recipient_name, text)
            return
        slot: Slot | None = None
        answered = False

        def delivered(ok: bool, reason: str) -> None:
            # Its own containment (what connection.guard would add, without
            # a second closure and call per message): a failure here is the
            # sender's.
            nonlocal answered
            answered = True
            if ok:
                stats.delivered_direct += 1
                stats.direct_handoff.observe(clock() - taken)
            else:
                stats.not_delivered += 1
            try:
                if slot is None:
                    connection.reply(_delivery_answer(recipient_name, text, ok, reason))
                else:
                    connection.answer(slot, _delivery_answer(recipient_name, text, ok, reason))
                if desk is not None and ok:
                    desk.direct_delivered(connection, sender, recipient, recipient_name, text)
            except Exception as error:
                connection.fail(error)

        connection.hand_over(recipient, data, delivered, offered)
        if not answered:
            slot = connection.answer_later()

    def _broadcast(self, connection: Connection, sender: str, text: str) -> None:
        self.stats.received_broadcast += 1
        if log.isEnabledFor(logging.INFO):
            log.info("Broadcast from %s: %s", sender, UserText.of(text, self.config.log_text))
        data = format_broadcast_from(sender, text)
        # Other servers first (none in memory: published at once): the echo
        # and this server's deliveries wait until the broadcast is on its way
        # to all of them, so that nobody gets it unless everyone will, and
        # the echo is never false.  The echo waits in command order, the
        # deliveries in delivery order; the sender's next lines go ahead, so
        # that a fast sender's broadcasts share Redis round trips.  As for a
        # direct message, only an answer still awaited when publish returns
        # takes slots (reserved before any later line is handled).
        slot: Slot | None = None
        fan_out: Slot | None = None
        answered = False

        def published(refused: str | None) -> None:
            nonlocal answered
            answered = True
            try:
                if refused is None and self._desk is not None:
                    self._desk.broadcast_sent(sender, text)
                if refused is not None:
                    notice = format_event(BroadcastNotSent(refused))
                    if slot is None:
                        connection.reply(notice)
                    else:
                        assert fan_out is not None  # reserved with slot
                        connection.answer(slot, notice)
                        connection.delivery_ready(fan_out, _nothing)
                elif slot is None:
                    connection.reply(format_broadcast_sent(text))
                    connection.in_delivery_order(self._broadcast_here, connection, data)
                else:
                    assert fan_out is not None  # reserved with slot
                    connection.answer(slot, format_broadcast_sent(text))
                    connection.delivery_ready(
                        fan_out, lambda: self._broadcast_here(connection, data))
            except Exception as error:
                connection.fail(error)

        self.whiteboard.publish(data, published)
        if not answered:
            slot = connection.answer_later()
            fan_out = connection.delivery_later()

    def _broadcast_here(self, connection: Connection, data: bytes) -> None:
        recipients = self._fan_out(data, self.whiteboard.online_sessions(), but=connection)
        self.stats.delivered_broadcast += recipients
        recipients += self.whiteboard.remote_count()
        connection.delivery_bucket.charge(recipients, self.clock())

    def _bye(self, connection: Connection, sender: str) -> None:
        """``bye``, in its turn: the name is given up (in a cluster, in the
        shared store) before the client hears its own offline notice, so that
        whatever it (or anyone it tells) does next, on any node, comes after
        its leaving.  The lines after it are never handled."""

        def leave() -> None:
            released = connection.answer_later(blocking=True)
            self.whiteboard.release(sender, connection.guard(
                lambda: connection.answer(released, lambda: self._said_bye(connection, sender))))

        connection.answer(connection.answer_later(blocking=True), leave)

    @staticmethod
    def _said_bye(connection: Connection, sender: str) -> None:
        connection.send(format_event(UserOffline(sender)))
        connection.close("bye")  # its user_left finds the name already released

    # -- what other servers of the cluster cause (contracts.RosterEvents) ---------

    def user_online(self, name: str) -> None:
        if not self._shutting_down:
            self._fan_out(format_event(UserOnline(name)), self.whiteboard.online_sessions())

    def users_offline(self, names: list[str]) -> None:
        """Users of other servers gone, announced in this order."""
        self._announce_offline(*names)

    def broadcast_arrived(self, data: bytes) -> None:
        """A broadcast from a user of another server, for ours."""
        self.stats.delivered_broadcast += self._fan_out(data, self.whiteboard.online_sessions())

    def disconnect(self, session: Session, reason: str) -> None:
        """Close a connection for a reason of the server's own, telling it why."""
        if session.is_open:
            session.send(format_event(Disconnected(reason)))
            session.close(reason)

    def _fan_out(self, data: bytes, connections: Iterable[Connection],
                 but: Connection | None = None) -> int:
        """Send ``data`` to each connection; returns how many it was sent to.

        Iterates over a copy: a recipient cut off as a slow consumer leaves
        the whiteboard in the middle of the loop.  A failure in one
        recipient's send is that recipient's, not the sender's.  Offline
        notices of recipients cut off meanwhile follow, in order, afterwards.
        """
        recipients = list(connections)
        if but is not None and but in recipients:
            recipients.remove(but)
        count = len(recipients)
        self._fan_out_depth += 1
        try:
            if self._send_at_once is not None:
                # The backend's tight loop sends to whoever can take it now
                # (most recipients, most of the time): a fan-out costs about
                # a system call per recipient, not three Python calls more.
                rest = self._send_at_once(data, recipients, self.scheduler.batching > 0)
                # (connection.send counts the rest's bytes itself)
                self.stats.bytes_out += len(data) * (len(recipients) - len(rest))
                recipients = rest
            for connection in recipients:
                try:
                    connection.send(data)
                except Exception as error:
                    connection.fail(error)
        finally:
            self._fan_out_depth -= 1
        budget = self._output_budget
        budget.fanned_out += len(data) * count
        if budget.total + budget.fanned_out > budget.high_water and budget.held is None:
            budget.count()  # (an upper bound passed the mark: count)
        if not self._fan_out_depth:
            deferred = self._deferred_notices
            while deferred:
                self._fan_out(deferred.pop(0), self.whiteboard.online_sessions())
        return count


def _delivery_answer(recipient_name: str, text: str, ok: bool, reason: str) -> bytes:
    """What the sender of a direct message is told once its delivery is decided."""
    if ok:
        return format_message_sent(recipient_name, text)
    return format_event(NotDelivered(recipient_name, reason))


def _nothing() -> None:
    pass
