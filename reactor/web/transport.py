"""What a backend's transport does on a web connection: one mixin for all three.

A backend serves its web listener with its own transport class and this
mixin in front of it (``class SelectorWebTransport(WebTransport,
SelectorTransport)``), so that the plain and TLS transports' hot paths gain
no test for a wire they do not have.  The mixin does, on the chat thread:

* **Output** (``write``): after the upgrade, a chat line is queued as its
  WebSocket frame (:func:`reactor.web.wire.frames_for`), through the
  backend's own ``write`` -- so the queue, its handoffs, withdrawal, the
  budget and TLS under it work as on TCP.  Before the upgrade the chat can
  only have said a refusal (server full, shutting down) or a login timeout:
  there is no socket to say it on yet, so it is dropped with the close.
  ``send_now`` (a direct message written through before it is queued)
  declines: a partial frame cannot be withdrawn line by line.
* **Input** (:meth:`WebTransport.web_received`, called by the backend where
  it would call ``connection.data_received``, after TLS): the wire's lines
  go to the connection; what the wire says by itself (the HTTP answer, the
  handshake, pongs, close frames) is queued unframed; a
  :class:`~reactor.web.http.WebFailure` is one log line and a close, so
  that the answer (a 4xx, a close frame) still goes out.
* **Fan-out** (:func:`fan_out_framed`): a broadcast reaches web
  connections through the backend's ``send_at_once`` loops as it reaches
  plain ones, with the line's frame (built once) in place of the line.
* **Keepalive**: from the upgrade on, :meth:`WebWire.heartbeat` every
  :data:`~reactor.web.wire.PING_INTERVAL` on the connection's timers.
  While reading is paused (flood control, a backlog) the pong may wait in
  the kernel, so a beat that falls in or just after a pause neither pings
  nor judges: a browser is never closed for a pong the server did not read.
* **Closing**: ``close`` queues the close frame after the last line, before
  TLS's close_notify and the FIN.

Standard library only: the wire (and ``websockets``) is imported when a web
connection starts, which happens only when the ``[web]`` extra was checked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeAlias, cast

from reactor.contracts import ConnectionEvents, TimerHandle
from reactor.outbuf import Entry, Handoff
from reactor.transport import Transport
from reactor.web.http import WebFailure

if TYPE_CHECKING:
    from reactor.connection import Connection
    from reactor.web.http import Site
    from reactor.web.wire import WebWire

log = logging.getLogger("reactor")

#: A backend's fan-out loop: ``loop(data, connections, web)`` sends or queues
#: ``data`` for those of ``connections`` it can and returns the others; when
#: ``web`` is a list, web connections ready for frames are set aside in it
#: untouched, and when it is None, every connection given is one of those.
FanOutLoop: TypeAlias = (
    "Callable[[bytes, list[Connection], list[Connection] | None], list[Connection]]")


def fan_out_framed(loop: FanOutLoop, data: bytes,
                   connections: list[Connection]) -> list[Connection]:
    """A backend's ``send_at_once`` for every transport: ``loop`` over the
    fan-out's recipients with the line, setting web connections aside, then
    over those with the line's frame -- one frame for all of them, since
    server frames are unmasked and uncompressed (reactor.web.wire).  So a
    web connection costs a fan-out what a plain one does; the loop's limit
    checks see the bytes queued, the frame's header included.  Returns what
    ``loop`` returned, for ``connection.send``, which frames on its own."""
    web: list[Connection] = []
    rest = loop(data, connections, web)
    if web:
        frame = cast("WebTransport", web[0].transport).web.frame(data)
        rest += loop(frame, web, None)
    return rest


class ChatConnection(ConnectionEvents, Protocol):
    """What a web transport asks of its connection beyond what every
    backend does: a web port's connections are the chat's
    (:class:`reactor.connection.Connection`), never another service's."""

    def close(self, reason: str) -> None:
        """Stop reading, let queued output drain (the wire's answer), then close."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """A timer of the connection's, its failures contained (the keepalive)."""


class WebTransport(Transport):
    """The web wire's part of a backend's transport; see the module docstring.
    Put it first among the bases, before the backend's transport class,
    whose methods its ``super()`` calls reach (hence mypy's safe-super
    notes: they are never Transport's abstract ones)."""

    web: WebWire
    _heartbeat: TimerHandle | None = None
    _output_limit = 0
    _paused = False  # reading is paused: what the peer sends waits in the kernel
    _paused_lately = False  # ... or was, at some time since the last beat

    def start_web(self, site: Site, max_line: int, output_limit: int) -> None:
        """Speak HTTP and WebSocket on this connection (after ``start_tls``,
        if any); ``output_limit`` is the hard limit of output queued, which
        the wire's own answers (pongs) must keep too."""
        from reactor.web.wire import WebWire

        self.web = WebWire(site, max_line, self.peer_host)
        self._output_limit = output_limit

    def write(self, data: bytes, on_handoff: Handoff | None = None) -> Entry | None:
        web = self.web
        if web.upgraded and not web.closing:
            return super().write(web.frame(data), on_handoff)  # type: ignore[safe-super]
        # Before the upgrade (a refusal, a timeout) or after the close frame:
        # nothing the peer could read as a message.
        if on_handoff is not None:
            on_handoff(False)
        return None

    def send_now(self, data: bytes) -> int:
        return 0

    def web_received(self, data: bytes) -> None:
        """What the socket read (after TLS), ``b""`` at its end: the wire's
        chat lines to the connection, its own answers queued."""
        web = self.web
        connection = cast("ChatConnection | None", self.connection)
        if connection is None or not connection.is_open:
            return  # after a close, input is discarded (as the connection does)
        was_upgraded = web.upgraded
        try:
            lines, ended = web.receive(data)
        except WebFailure as failure:
            self._failed(connection, failure)
            return
        self._say()
        if not connection.is_open:
            return  # cut meanwhile (its pongs unread)
        if web.upgraded and not was_upgraded:
            self._heartbeat = connection.call_later(_ping_interval(), self._beat)
        if lines:
            connection.data_received(lines)
        if ended:
            if web.upgraded:
                connection.data_received(b"")
            else:
                connection.close("web page served")

    def close(self) -> None:
        self._stop_heartbeat()
        if self.web.close():
            self._say()
        super().close()  # type: ignore[safe-super]

    def abort(self) -> None:
        self._stop_heartbeat()
        super().abort()  # type: ignore[safe-super]

    def pause_reading(self) -> None:
        self._paused = self._paused_lately = True
        super().pause_reading()  # type: ignore[safe-super]

    def resume_reading(self) -> None:
        self._paused = False
        super().resume_reading()  # type: ignore[safe-super]

    def _say(self) -> None:
        """Queue what the wire says by itself, as it is (unframed).  A peer
        that sends pings and never reads their pongs is a slow consumer."""
        if not self.web:
            return
        super().write(self.web.data_to_send())  # type: ignore[safe-super]
        limit = self._output_limit
        if self.output.size > limit and self.connection is not None:
            self.connection.abort(f"slow consumer: more than {limit} bytes of output queued")

    def _failed(self, connection: ChatConnection, failure: WebFailure) -> None:
        """The browser broke the protocol (or stopped answering pings): say
        the close frame, and close."""
        log.info("web: closed the connection from %s: %s", self.peer_host, failure.reason)
        self._say()
        connection.close(failure.reason)

    def _beat(self) -> None:
        self._heartbeat = None
        connection = cast("ChatConnection | None", self.connection)
        if connection is None or not connection.is_open or self.web.closing:
            return
        if self._paused_lately:
            # The pong may be unread in the kernel, or read only after this
            # beat: no ping and no verdict until a whole interval of reading.
            self._paused_lately = self._paused
            self._heartbeat = connection.call_later(_ping_interval(), self._beat)
            return
        try:
            self.web.heartbeat()
        except WebFailure as failure:
            self._failed(connection, failure)
            return
        self._say()
        self._heartbeat = connection.call_later(_ping_interval(), self._beat)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None


def _ping_interval() -> float:
    from reactor.web import wire

    return wire.PING_INTERVAL  # read at each use, so that a test can shorten it
