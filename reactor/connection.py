"""One client connection's life, written once for every backend.

In the manner of h11's connection object, everything that moves a connection
from one phase to the next happens here::

    LOGIN --(username claimed, after its password if registered)--> CHATTING
      |                              |
      +--(bye, end of input, login timeout, shutdown, abort)--> CLOSING --(socket closed)--> CLOSED

The backend only moves bytes: it calls :meth:`Connection.data_received` with
what it read (``b""`` for end of input, as h11's ``receive_data(b"")``),
:meth:`output_drained` when the connection's output queue has emptied, and
:meth:`connection_lost` once the socket is closed.  This class owns the
receive buffer, decoding, the login deadline, and the order of lines.

**Lines are handled strictly in order, one at a time.**  A line may need an
answer that comes later -- the whiteboard's verdict on a username claim, or
the recipient's connection taking a direct message -- and the lines after it
wait, in order, until it arrives (as do lines over the client's rate, and
lines from a client that is not reading its own replies).  While lines wait,
the socket is not read: the client's further input waits in TCP.  Every reply
therefore comes back in the order of the commands that caused it.

**A failure stays in its connection.**  Every entry point catches what the
chat logic raises on this connection's behalf, logs it once with its
traceback, and aborts this connection only (as asyncio's ``_fatal_error``
does for one transport): its user is announced offline like any drop, the name
is free again, and everyone else carries on.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protocol import LineBuffer
from protocol.framing import Received
from reactor.flow import TokenBucket
from reactor.outbuf import Entry, Handoff
from reactor.transport import TimerHandle, Transport

if TYPE_CHECKING:
    from reactor.chat import ChatService

log = logging.getLogger("reactor")

# Called with (True, "") once a message was handed to the recipient's
# connection, or (False, reason) if it never will be.
DeliveryResult = Callable[[bool, str], None]


class Phase(enum.Enum):
    LOGIN = "awaiting username"
    CHATTING = "chatting"
    CLOSING = "closing"  # no more input is handled; queued output drains
    CLOSED = "closed"


class Connection:
    """A client connection as the chat logic sees it."""

    def __init__(self, transport: Transport, chat: ChatService) -> None:
        config = chat.config
        self.transport = transport
        self.chat = chat
        self.config = config
        self.peer_host = transport.peer_host
        self.phase = Phase.LOGIN
        # True while LOGIN or CHATTING: a plain attribute, because every
        # delivery of every fan-out reads it.
        self.is_open = True
        self.username: str | None = None
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
        # Reasons the next line waits (see the module docstring).
        self._awaiting_answer = False
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
        # The registered name whose password the next line is (reactor.accounts),
        # and the wrong passwords sent on this connection so far.
        self.password_for: str | None = None
        self.password_tries = 0
        # Answers awaited in command order while the next lines go ahead
        # (cluster nodes pipeline broadcasts and messages to other nodes
        # through Redis): each is a slot, filled with what to do once it
        # arrives, done strictly from the front.
        self.in_flight: deque[list[Callable[[], None] | None]] = deque()
        self._held = False

    def __repr__(self) -> str:
        who = self.username or "(no name yet)"
        return f"<Connection {who} from {self.peer_host} {self.phase.name}>"

    # -- called by the backend ------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means its input has ended."""
        try:
            if not self.is_open:
                return  # after bye, or while draining: discarded
            if not data:
                self._input_ended = True
            lines = self._buffer.feed(data)
            if self._pause_timer is not None:
                self._cancel_pause_timer()
            self.pending_lines.extend(lines)
            if (self.phase is Phase.LOGIN and data and self._buffer.pending
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
            self.phase = Phase.CLOSED
            self.is_open = False
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
        name = self.username or "the recipient"
        if self.not_reading:
            # A message to it already waited in vain: answer at once rather
            # than make every sender wait out the same timeout again.
            on_result(False, f"{name} is not reading")
            return
        transport = self.transport
        output = transport.output
        sent = 0
        if self.is_open and output.size + len(data) <= self._hard_limit:
            # The common case: the kernel takes it at once (no handoff to make).
            sent = transport.send_now(data)
            if sent == len(data):
                on_result(True, "")
                return
            if sent < 0:
                on_result(False, f"{name} left before it could be sent")
                return
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

    def reserve_answer(self) -> list[Callable[[], None] | None]:
        """A place in command order for an answer that comes later, while
        the lines after this one are handled meanwhile."""
        slot: list[Callable[[], None] | None] = [None]
        self.in_flight.append(slot)
        return slot

    def fill_answer(self, slot: list[Callable[[], None] | None],
                    finish: Callable[[], None]) -> None:
        """The answer for ``slot`` arrived: ``finish`` runs once every answer
        before it has run."""
        slot[0] = finish
        in_flight = self.in_flight
        while in_flight and in_flight[0][0] is not None:
            done = in_flight.popleft()[0]
            assert done is not None
            done()
        if not in_flight and self._held:
            self._held = False
            self.answer_arrived()

    def reply(self, data: bytes) -> None:
        """Send a reply in command order, behind any answer still awaited."""
        if self.in_flight:
            self.in_flight.append([lambda: self.send(data)])
        else:
            self.send(data)

    def hold(self, item: Received) -> None:
        """This line must wait until every answer in flight has arrived."""
        self.pending_lines.appendleft(item)
        self._held = True
        self._awaiting_answer = True

    def await_answer(self) -> None:
        """The line just handled needs an answer before the next one runs."""
        self._awaiting_answer = True

    def answer_arrived(self) -> None:
        self._awaiting_answer = False
        if not self._processing:  # else the running _process goes on to the next line
            self._process()

    def logged_in(self, name: str) -> None:
        self.username = name
        self.phase = Phase.CHATTING
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
        self.is_open = False
        self.phase = Phase.CLOSING
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
            # _waiting() written out: this loop runs once per line.
            while lines and self.is_open and not (
                self._awaiting_answer or self.output_backlog or self._rate_timer is not None
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
        if self._input_ended and not self.pending_lines and not self._awaiting_answer:
            # The peer is done sending and everything it sent is answered.
            self.close("connection closed by peer")

    def _waiting(self) -> bool:
        return self._awaiting_answer or self.output_backlog or self._rate_timer is not None

    def _within_rate(self) -> bool:
        """Charge the next line to the client's meters, or arrange to retry."""
        if not self.config.flood.enabled:
            return True
        now = self.chat.clock()
        wait = max(self._line_bucket.wait(now), self.delivery_bucket.wait(now))
        if not wait and self.phase is Phase.LOGIN:
            # Last: login_wait charges the address when it lets the line through,
            # so it must be asked only when the line will be handled now.
            wait = self.chat.login_wait(self, now)
        if wait > 0:
            self._rate_timer = self.call_later(wait, self._rate_refilled)
            return False
        self._line_bucket.charge(1, now)
        return True

    def _rate_refilled(self) -> None:
        self._rate_timer = None
        self._process()

    def _pause_ended(self) -> None:
        self._pause_timer = None
        if self.phase is Phase.LOGIN and self.is_open and not self._awaiting_answer:
            self.pending_lines.extend(self._buffer.feed(b""))
            self._process()

    def _cancel_pause_timer(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.phase is Phase.LOGIN and self.is_open:
            self.chat.login_timed_out(self)
