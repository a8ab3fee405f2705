"""One client connection's life, written once for every backend.

Its phases -- LOGIN, PASSWORD (a registered name's password is next),
CHATTING, CLOSING, CLOSED -- and every move between them are one table,
:data:`reactor.phases.TRANSITIONS`, as h11's ``_state.py``.

The backend only moves bytes: it calls :meth:`Connection.data_received` with
what it read (``b""`` for end of input, as h11's ``receive_data(b"")``),
:meth:`output_drained` when the connection's output queue has emptied, and
:meth:`connection_lost` once the socket is closed.  This class owns the
receive buffer, decoding, the login deadline, and the order of lines.

**One reply queue.**  Lines are handled in order, one at a time.  A line whose
answer comes later -- a direct message waiting for its recipient's connection
to take it, a broadcast on its way to other servers, a claim, a password
check -- takes a *slot* in the connection's reply queue
(:meth:`answer_later`), and the answer is sent once every answer before it
has been (:meth:`answer`).  Replies therefore come back in the order of the
commands that caused them.  While chatting, the lines after a waiting one go
ahead -- a slow reader's direct message holds up only its own echo, not its
sender -- up to :data:`MAX_IN_FLIGHT` waiting answers; while logging in, the
next line waits for the answer, since what it means depends on it.  Lines
also wait while the client is over its rate, or is not reading its own
replies; while lines wait, the socket is not read: the client's further
input waits in TCP.

**Deliveries in command order.**  A broadcast that must first reach the
other servers is fanned out here only once it has; a direct message to a user
here that follows it waits for that fan-out (:meth:`hand_over`), so
that every recipient sees one sender's lines in the order they were sent.

**A failure stays in its connection.**  Every entry point catches what the
chat logic raises on this connection's behalf, logs it once with its
traceback, and aborts this connection only (as asyncio's ``_fatal_error``
does for one transport): its user is announced offline like any drop, the name
is free again, and everyone else carries on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from protocol import LineBuffer
from protocol.framing import Received
from reactor.contracts import (
    ChatForConnection,
    DeliveryResult,
    Recipient,
    TimerHandle,
    hand_over,
)
from reactor.flow import TokenBucket
from reactor.outbuf import Entry, Handoff
from reactor.phases import LOGGING_IN, OPEN, Move, Phase, next_phase
from reactor.transport import Transport

log = logging.getLogger("reactor")

__all__ = ["MAX_IN_FLIGHT", "Connection", "DeliveryResult", "Phase", "Slot"]

# Answers a chatting client may be waiting for before its next line waits too:
# what bounds the reply queue, whatever the client sends.
MAX_IN_FLIGHT = 64


# What hand_over_at_once returns when the recipient failed (hand_over then
# answers "internal error").
_OFFER_FAILED = -2

# A slot of the reply queue: [answer, blocking].  The answer is None while
# awaited, then the bytes to send or what to do; a blocking slot holds the
# client's next lines until it is done.
Slot = list[Any]


class Connection:
    """A client connection as the chat logic sees it."""

    #: Its deliveries are made here, in this server's order (see contracts.Recipient).
    remote = False

    def __init__(self, transport: Transport, chat: ChatForConnection) -> None:
        config = chat.config
        self.transport = transport
        self.chat = chat
        self.config = config
        self._stats = chat.stats
        self.peer_host = transport.peer_host
        self.phase = Phase.LOGIN
        # True in the open phases (OPEN): a plain attribute, because every
        # delivery of every fan-out reads it.
        self.is_open = True
        self.username: str | None = None
        # Until when (the chat's clock) an operator's mute refuses this
        # user's messages; None: not muted.
        self.muted_until: float | None = None
        # Why the connection ended, for the log; set by the first close/abort.
        self.close_reason: str | None = None
        self._hard_limit = config.output_hard_limit
        self._high_water = config.output_high_water
        self._buffer = LineBuffer(config.max_line)
        # Lines received and not yet handled (read by the select backend: a
        # reply while more wait is not the last of its pass).
        self.pending_lines: deque[Received] = deque()
        self._processing = False
        self._input_ended = False
        self._reading_paused = False
        # The reply queue (see the module docstring), and how many of its
        # slots hold the next lines until they are done.
        self._replies: deque[Slot] = deque()
        self._blocking = 0
        # Local deliveries waiting, in command order, for a fan-out before them.
        self._deliveries: deque[Slot] = deque()
        self.output_backlog = False  # output above the high-water mark (read by backends)
        self._rate_timer: TimerHandle | None = None
        self._login_timer: TimerHandle | None = None
        self._pause_timer: TimerHandle | None = None
        now = chat.clock()
        flood = config.flood
        self._metered = flood.enabled  # flood control on: lines are charged
        self._line_bucket = TokenBucket(flood.lines_per_second, flood.lines_burst, now)
        self.delivery_bucket = TokenBucket(
            flood.deliveries_per_second, flood.deliveries_burst, now
        )
        # Since when the output queue has been above the soft limit.
        self.over_soft_limit_since: float | None = None
        # A direct message to this client timed out, and it has not read its
        # queue empty since: further messages are refused at once.
        self.not_reading = False
        # The registered name whose password the next line is, and the wrong
        # passwords sent on this connection so far (the login step counts).
        self.password_for: str | None = None
        self.password_tries = 0
        # Logged in with the password of a registered name, or registered it
        # since: only then is anything private kept for it (--history).
        self.registered = False

    def __repr__(self) -> str:
        who = self.username or "(no name yet)"
        return f"<Connection {who} from {self.peer_host} {self.phase.name}>"

    # -- called by the backend ------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means its input has ended."""
        try:
            if not self.is_open:
                return  # after bye, or while draining: discarded
            self._stats.bytes_in += len(data)
            if not data:
                self._input_ended = True
            lines = self._buffer.feed(data)
            if self._pause_timer is not None:
                self._cancel_pause_timer()
            self.pending_lines.extend(lines)
            if (self.phase in LOGGING_IN and data and self._buffer.pending
                    and not any(isinstance(x, bytes) and x.strip() for x in self.pending_lines)):
                # The original client sends its name with no newline, then
                # waits for its user: a pause ends that first line -- unless a
                # username line is already waiting its turn.
                self._pause_timer = self.call_later(self.config.login_pause, self._pause_ended)
            self._process()
        except Exception as error:
            self.fail(error)

    def output_drained(self) -> None:
        """The output queue is empty: the client has read what it was sent."""
        try:
            self.over_soft_limit_since = None
            self.not_reading = False
            if self.output_backlog:
                self.output_backlog = False
                self._process()
        except Exception as error:
            self.fail(error)

    def connection_lost(self) -> None:
        """The socket is closed; called exactly once, whatever ended it."""
        try:
            if self.is_open:
                self._leave("connection lost")
            self._move(Move.SOCKET_CLOSED)
            for timer in (self._login_timer, self._pause_timer, self._rate_timer):
                if timer is not None:
                    timer.cancel()
            self._login_timer = self._pause_timer = self._rate_timer = None
            self.pending_lines.clear()
            self.transport.fail_handoffs()
        except Exception as error:
            self.fail(error)
        finally:
            self.chat.connection_closed(self)
            # Break the connection <-> transport cycle, so that reference
            # counting frees both (and their buffers) now rather than at the
            # cyclic collector's next full pass.
            self.transport.connection = None

    def fail(self, error: BaseException) -> None:
        """Contain an error raised on this connection's behalf: log, abort it, carry on."""
        # repr now: by the time a handler formats the record, the user is gone.
        log.error("Internal error while serving %s; closing that connection", repr(self),
                  exc_info=error)
        try:
            self.abort("internal error")
        except Exception:
            log.exception("Aborting %r failed as well", self)
        if self.username is not None:
            # Whatever failed, the name must not stay taken by a dead connection.
            try:
                self.chat.user_left(self, "internal error")
            except Exception:
                log.exception("Could not log %r out", self)

    def guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback`` with this connection's containment around it (timers, handoffs)."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as error:
                self.fail(error)

        return guarded

    # -- called by the chat logic --------------------------------------------

    def send(self, data: bytes, on_handoff: Handoff | None = None) -> Entry | None:
        """Queue ``data`` for the client; never blocks.

        Output counts against the client's limits only once the kernel has
        refused it, so the queue is offered to the kernel before a client is
        judged a slow consumer.
        """
        if not self.is_open:
            if on_handoff is not None:
                on_handoff(False)
            return None
        transport = self.transport
        output = transport.output  # the hot path of every fan-out: no property calls
        if output.size + len(data) > self._hard_limit:
            transport.flush()
            if output.size + len(data) > self._hard_limit and self.is_open:
                self.abort(f"slow consumer: more than {self._hard_limit} bytes of output queued")
            if not self.is_open:
                if on_handoff is not None:
                    on_handoff(False)
                return None
        entry = transport.write(data, on_handoff)
        self._stats.bytes_out += len(data)
        if output.size > self._high_water:
            self.output_backlog = True
        return entry

    def deliver(self, data: bytes, on_result: DeliveryResult) -> None:
        """Send a direct message and report whether it reached the connection.

        ``on_result(True, "")`` once the kernel has taken the whole message
        for this client; ``on_result(False, reason)`` if the client left
        first, or the message waited ``delivery_timeout`` without being
        started, in which case it is taken back and never arrives.  After
        such a timeout, messages are refused at once until the client has
        read everything queued for it.  A message that timed out when it was
        already partly sent cannot be taken back: the client is cut off as a
        slow consumer, and the sender told it was not delivered.
        """
        self.deliver_rest(data, self.offer(data), on_result)

    def offer(self, data: bytes) -> int:
        """deliver()'s common case, before a callback is made: the message
        handed to the kernel at once where the backend writes it through
        (``Transport.send_now``).  Returns ``len(data)`` if the kernel took
        it whole (counted as sent: delivered), else what
        :meth:`deliver_rest` finishes from -- 0 if nothing was sent, the
        bytes of a partial send, -1 if the connection failed."""
        transport = self.transport
        if (self.not_reading or not self.is_open
                or transport.output.size + len(data) > self._hard_limit):
            return 0  # (deliver_rest refuses it, or queues it through send)
        sent = transport.send_now(data)
        if sent == len(data):
            self._stats.bytes_out += sent
        return sent

    def deliver_rest(self, data: bytes, offered: int, on_result: DeliveryResult) -> None:
        """deliver(), after :meth:`offer` returned ``offered`` for ``data``."""
        if offered == len(data):
            on_result(True, "")
            return
        name = self.username or "the recipient"
        if self.not_reading:
            # A message to it already waited in vain: answer at once rather
            # than make every sender wait out the same timeout again.
            on_result(False, f"{name} is not reading")
            return
        if offered < 0:
            on_result(False, f"{name} left before it could be sent")
            return
        transport = self.transport
        output = transport.output
        sent = offered
        if sent:
            data = memoryview(data)[sent:]  # type: ignore[assignment]
        timer: TimerHandle | None = None

        def handoff(ok: bool) -> None:
            if timer is not None:
                timer.cancel()
            on_result(ok, "" if ok else f"{name} left before it could be sent")

        if self.is_open and output.size + len(data) <= self._hard_limit:
            # send() written out for the common case: open, within the limit.
            entry = transport.write(data, handoff)
            self._stats.bytes_out += len(data) + sent
            if output.size > self._high_water:
                self.output_backlog = True
        else:
            entry = self.send(data, handoff)
        if entry is None:
            return  # sent at once, or refused: handoff has run
        if sent:
            entry.started = True  # its head went out: it cannot be taken back
        queued = entry

        def overdue() -> None:
            if self.transport.withdraw(queued):
                self.not_reading = True
                on_result(False, f"{name} is not reading")
            elif self.is_open:
                # Partly sent, so it cannot be taken back, and stuck: the
                # connection is wedged.  Cutting it tells the sender (through
                # the handoff) rather than leave the sender waiting forever.
                self.abort("slow consumer: a direct message waited more than "
                           f"{self.config.delivery_timeout:g} s")

        timer = self.call_later(self.config.delivery_timeout, overdue)

    # -- the reply queue -----------------------------------------------------------

    def answer_later(self, blocking: bool = False) -> Slot:
        """A place in command order for an answer that comes later.  While
        logging in, or if ``blocking``, the next lines wait until it is done;
        while chatting they go ahead."""
        blocking = blocking or self.phase is not Phase.CHATTING
        slot: Slot = [None, blocking]
        if blocking:
            self._blocking += 1
        self._replies.append(slot)
        return slot

    def answer(self, slot: Slot, answer: bytes | Callable[[], object] = b"") -> None:
        """The answer for ``slot`` arrived: the bytes to send (or nothing), or
        what to do; sent or done once every answer before it has been."""
        if slot[0] is not None:
            return  # answered already (a late answer after a time-out)
        slot[0] = answer
        replies = self._replies
        if replies[0] is not slot:
            return  # waits its turn
        while replies and replies[0][0] is not None:
            done, blocking = replies.popleft()
            if blocking:
                self._blocking -= 1
            if type(done) is bytes:
                if done:
                    self.send(done)
            else:
                done()
        if not self._processing and (self.pending_lines or self._input_ended):
            self._process()

    def hold_lines(self) -> None:
        """Handle none of this client's lines until :meth:`release_lines`,
        for a reason of the server's own (not an answer in the reply queue,
        so nothing waits behind the answers already awaited)."""
        self._blocking += 1

    def release_lines(self) -> None:
        self._blocking -= 1
        if not self._processing:
            self._process()

    def reply(self, data: bytes) -> None:
        """Send a reply in command order, behind any answer still awaited."""
        if self._replies:
            self._replies.append([data, False])
        else:
            self.send(data)

    def hand_over(self, recipient: Recipient, data: bytes, on_result: DeliveryResult,
                  offered: int | None = None) -> None:
        """Deliver this client's direct message to ``recipient``: now, or,
        to a user here, after the fan-outs this client caused before it that
        still wait (see :meth:`delivery_later`).  ``offered`` is what
        :meth:`hand_over_at_once` returned for it, if it was asked."""
        if offered is None and self._deliveries and not recipient.remote:
            self._deliveries.append([lambda: hand_over(recipient, data, on_result)])
            return
        if offered == _OFFER_FAILED:
            on_result(False, "internal error")
            return
        # contracts.hand_over written out: this runs once per direct message.
        try:
            if offered is None:
                recipient.deliver(data, on_result)
            else:  # a connection here (see hand_over_at_once): deliver's second half
                recipient.deliver_rest(data, offered, on_result)  # type: ignore[attr-defined]
        except Exception as error:
            recipient.fail(error)
            on_result(False, "internal error")

    def hand_over_at_once(self, recipient: Recipient, data: bytes) -> int | None:
        """hand_over's common case, before the caller makes a callback: a
        direct message to a connection here, with no fan-out of this client
        waiting before it, offered to its kernel now (:meth:`offer`).
        ``len(data)`` if it was taken whole: delivered.  Otherwise pass what
        this returned to hand_over, which finishes it; None where this does
        not apply (a user elsewhere, fan-outs waiting)."""
        if self._deliveries or not isinstance(recipient, Connection):
            return None
        try:
            return recipient.offer(data)
        except Exception as error:  # the recipient's, as in hand_over
            recipient.fail(error)
            return _OFFER_FAILED

    def in_delivery_order(self, deliver: Callable[..., None], *args: object) -> None:
        """``deliver(*args)`` (a fan-out of this client's) after the fan-outs
        it caused before that still wait (see :meth:`delivery_later`); now if
        there are none."""
        if self._deliveries:
            self._deliveries.append([lambda: deliver(*args)])
        else:
            deliver(*args)

    def delivery_later(self) -> Slot:
        """A place in command order for a fan-out that waits for an answer
        (a broadcast on its way to other servers)."""
        slot: Slot = [None]
        self._deliveries.append(slot)
        return slot

    def delivery_ready(self, slot: Slot, deliver: Callable[[], None]) -> None:
        """The fan-out for ``slot`` may go; so may the deliveries behind it."""
        slot[0] = deliver
        deliveries = self._deliveries
        while deliveries and deliveries[0][0] is not None:
            deliveries.popleft()[0]()

    # -- phases -------------------------------------------------------------------

    def _move(self, move: Move) -> None:
        self.phase = next_phase(self.phase, move)
        self.is_open = self.phase in OPEN

    @property
    def secure(self) -> bool:
        """The bytes are protected on the way (TLS): passwords may cross."""
        return self.transport.secure

    def ask_password(self, name: str) -> None:
        """The next line is the password of the registered ``name``."""
        self._move(Move.PASSWORD_ASKED)
        self.password_for = name

    def password_done(self) -> None:
        """The password step is over (a right password, or none could be
        checked): the name is claimed next, or another asked for."""
        self._move(Move.PASSWORD_DONE)
        self.password_for = None

    def logged_in(self, name: str) -> None:
        self._move(Move.NAME_CLAIMED)
        self.username = name
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None

    def start_login_timer(self) -> None:
        self._login_timer = self.call_later(self.config.login_timeout, self._login_timed_out)

    def close(self, reason: str) -> None:
        """Stop handling input, let queued output drain, then close."""
        if not self.is_open:
            return
        self.close_reason = reason
        self._leave(reason)
        self.transport.close()

    def abort(self, reason: str) -> None:
        """Drop the connection now, discarding queued output."""
        if self.phase is Phase.CLOSED:
            return
        if self.is_open:
            self.close_reason = reason
            self._leave(reason)
        self.transport.abort()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.chat.call_later(delay, self.guard(callback))

    # -- internals -------------------------------------------------------------

    def _leave(self, reason: str) -> None:
        """Open -> closing: the user, if any, leaves the chat now, even while
        output still drains (a user who has left frees the name at once)."""
        self._move(Move.LEAVE)
        self.pending_lines.clear()
        for timer in (self._login_timer, self._pause_timer, self._rate_timer):
            if timer is not None:
                timer.cancel()
        if self.username is not None:
            self.chat.user_left(self, reason)
        if self._reading_paused:
            # Keep reading (and discarding) so that the peer's FIN is seen
            # and unread input does not turn our close into a reset.
            self._reading_paused = False
            self.transport.resume_reading()

    def _process(self) -> None:
        """Handle waiting lines in order until one must wait."""
        if self._processing:
            return  # re-entered from an answer that arrived at once
        self._processing = True
        try:
            lines = self.pending_lines
            chat = self.chat
            metered = self._metered
            # The reasons to wait, written out: this loop runs once per line.
            replies = self._replies
            while lines and self.is_open and not (
                self._blocking or self.output_backlog or self._rate_timer is not None
                or len(replies) >= MAX_IN_FLIGHT
            ):
                if metered and not self._within_rate():
                    break
                item = lines.popleft()
                chat.line_received(self, item)
        finally:
            self._processing = False
        if not self.is_open:
            return
        want_pause = bool(self.pending_lines)
        if want_pause != self._reading_paused:
            self._reading_paused = want_pause
            if want_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
        if self._input_ended and not self.pending_lines and not self._replies:
            # The peer is done sending and everything it sent is answered.
            self.close("connection closed by peer")

    def _within_rate(self) -> bool:
        """Charge the next line to the client's meters, or arrange to retry."""
        if not self.config.flood.enabled:
            return True
        now = self.chat.clock()
        wait = max(self._line_bucket.wait(now), self.delivery_bucket.wait(now))
        if not wait and self.phase is not Phase.CHATTING:
            # Last: login_wait charges the address when it lets the line through,
            # so it must be asked only when the line will be handled now.
            wait = self.chat.login_wait(self, now)
        if wait > 0:
            self._stats.flood_delays += 1
            self._rate_timer = self.call_later(wait, self._rate_refilled)
            return False
        self._line_bucket.charge(1, now)
        return True

    def _rate_refilled(self) -> None:
        self._rate_timer = None
        self._process()

    def _pause_ended(self) -> None:
        self._pause_timer = None
        if self.phase in LOGGING_IN and not self._blocking:
            self.pending_lines.extend(self._buffer.feed(b""))
            self._process()

    def _cancel_pause_timer(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.phase in LOGGING_IN:
            self.chat.login_timed_out(self)

