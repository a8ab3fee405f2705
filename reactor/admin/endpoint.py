"""The admin endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP.

Its listener (``--admin-port``) is served by the backend like the chat's --
the same accept path, transports and loop (or chat lock) -- but its
connections are handed here instead of to the chat
(:class:`~reactor.backends.base.Service`).  So an answer to ``/healthz``
proves that the loop serving the chat turns (and, on the threads backend,
that the chat lock is free), and a wedged loop fails it by not answering.

Bounded whatever admin clients do: at most :data:`MAX_CONNECTIONS` at once
(the next get a 503 and are closed), one request of at most
:data:`~reactor.admin.http.MAX_HEAD` bytes each, which must be complete
within :data:`REQUEST_TIMEOUT` seconds of the accept (a slow sender is cut);
the response is written whole and the connection closed, which the backend
bounds by the close linger.  The work per request is reading counters, on
the chat thread: no request waits on another server.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from reactor.admin.chat_metrics import chat_metrics
from reactor.admin.http import TEXT, HeadReader, Refusal, Request, response
from reactor.contracts import ChatForAdmin, Monitored, TimerHandle
from reactor.logs import DroppingQueueHandler
from reactor.metrics import CONTENT_TYPE, Metric, counter, exposition, gauge
from reactor.transport import Transport

log = logging.getLogger("reactor")

# Admin connections at once: scrapers and probes, not a crowd.
MAX_CONNECTIONS = 8
# Seconds from the accept to the end of the request head.
REQUEST_TIMEOUT = 5.0
# The chat's housekeeping timer runs every second; this far behind, the
# loop's timers have stopped firing and /healthz says so.
HOUSEKEEPING_LATE = 10.0

PATHS = ("/metrics", "/healthz", "/readyz")
ALLOWED = "Allow: GET, HEAD"


class AdminEndpoint:
    """Answers the admin listener's requests from the chat's state and the
    parts' (:class:`~reactor.contracts.Monitored`: the cluster's roster,
    the accounts)."""

    def __init__(self, chat: ChatForAdmin, parts: list[Monitored], version: str = "") -> None:
        self.chat = chat
        self.parts = parts
        self.version = version
        self.started = time.time()
        self._started_at = time.monotonic()
        self._connections: set[AdminConnection] = set()
        self._shutting_down = False
        self.requests: Counter[str] = Counter()  # answered, by status code

    # -- the backend's side (base.Service) ------------------------------------

    def connection_made(self, transport: Transport) -> AdminConnection:
        connection = AdminConnection(transport, self)
        transport.connection = connection
        self._connections.add(connection)
        if len(self._connections) > MAX_CONNECTIONS:
            connection.respond(503, b"too many admin connections\n")
        else:
            connection.timer = self.chat.call_later(REQUEST_TIMEOUT, connection.timed_out)
        return connection

    def shutdown(self) -> None:
        # Still answering while the chat's users go: /readyz says "not ready:
        # shutting down" (a load balancer stops sending users here), /healthz
        # that the loop is alive, /metrics the drain.
        self._shutting_down = True

    def close(self) -> None:
        for connection in list(self._connections):
            connection.abort("server shutting down")

    def forget(self, connection: AdminConnection) -> None:
        self._connections.discard(connection)

    # -- the answers ------------------------------------------------------------

    def answer(self, request: Request) -> tuple[int, bytes, str]:
        """Status, body and content type for a well-formed request."""
        if request.path not in PATHS:
            return 404, b"not found: try /metrics, /healthz or /readyz\n", TEXT
        if request.method not in ("GET", "HEAD"):
            return 405, b"only GET and HEAD\n", TEXT
        if request.path == "/metrics":
            return 200, exposition(self.metrics()), CONTENT_TYPE
        if request.path == "/healthz":
            problem = self.health_problem()
            if problem is not None:
                return 503, f"unhealthy: {problem}\n".encode(), TEXT
            return 200, b"ok\n", TEXT
        reason = self.unready_reason()
        if reason is not None:
            return 503, f"not ready: {reason}\n".encode(), TEXT
        return 200, b"ready\n", TEXT

    def health_problem(self) -> str | None:
        """Why the server is not alive though it answers (its timers stopped), or None."""
        late = self.chat.clock() - self.chat.housekeeping_at
        if late > HOUSEKEEPING_LATE:
            return f"the loop's timers are {late:.0f} s late"
        return None

    def unready_reason(self) -> str | None:
        if self._shutting_down:
            return "shutting down"
        for part in self.parts:
            reason = part.unready_reason()
            if reason is not None:
                return reason
        return None

    def metrics(self) -> list[Metric]:
        families = chat_metrics(self.chat)
        for part in self.parts:
            families += part.metrics()
        families += [
            gauge("reactor_start_time_seconds", "When the server started (Unix time).",
                  self.started),
            gauge("reactor_uptime_seconds", "Seconds since the server started.",
                  round(time.monotonic() - self._started_at, 3)),
            gauge("reactor_ready", "1 if /readyz answers ready, else 0.",
                  int(self.unready_reason() is None)),
            counter("reactor_log_lines_dropped_total",
                    "Log lines dropped because the log output was not keeping up (the log"
                    " queue is bounded and never makes the server wait).", _log_lines_dropped()),
            counter("reactor_admin_requests_total",
                    "Admin endpoint requests answered, by HTTP status.",
                    label="status", values={str(k): v for k, v in self.requests.items()}),
        ]
        if self.version:
            families.append(Metric("reactor_build_info", "gauge",
                                   "The server's version, as a label; always 1.",
                                   [((("version", self.version),), 1)]))
        return families


def _log_lines_dropped() -> int:
    # The log queue belongs to the process (the root logger's handler), not
    # to one server: read from there, 0 where the pipeline is not running.
    return sum(handler.dropped_total for handler in logging.getLogger().handlers
               if isinstance(handler, DroppingQueueHandler))


class AdminConnection:
    """One admin request: read its head, answer, close.

    Kept to what a backend tells a connection
    (:class:`~reactor.contracts.ConnectionEvents`)."""

    output_backlog = False
    not_reading = False
    over_soft_limit_since: float | None = None
    pending_lines: tuple[()] = ()

    def __init__(self, transport: Transport, endpoint: AdminEndpoint) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.is_open = True
        self.timer: TimerHandle | None = None
        self._head = HeadReader()
        self._aborted = False

    def data_received(self, data: bytes) -> None:
        if not self.is_open:
            return  # after the response: discarded until the peer closes
        try:
            if not data and not self._head.started:
                # Connected and gone without a word (a TCP probe): nobody to answer.
                self.is_open = False
                self._cancel_timer()
                self.transport.close()
                return
            got = self._head.feed(data)
            if got is None:
                return
            if isinstance(got, Refusal):
                self.respond(got.status, f"{got.reason}\n".encode())
                return
            status, body, content_type = self.endpoint.answer(got)
            extra = (ALLOWED,) if status == 405 else ()
            self.respond(status, body, content_type, got.method == "HEAD", extra)
        except Exception as error:
            self.fail(error)

    def respond(self, status: int, body: bytes, content_type: str = TEXT,
                head_only: bool = False, extra: tuple[str, ...] = ()) -> None:
        """Send the one response and close."""
        if not self.is_open:
            return
        self.is_open = False
        self._cancel_timer()
        self.endpoint.requests[str(status)] += 1
        self.transport.write(response(status, body, content_type, head_only, extra))
        self.transport.close()

    def timed_out(self) -> None:
        self.timer = None
        self.respond(408, b"the request head did not arrive in time\n")

    def output_drained(self) -> None:
        pass

    def connection_lost(self) -> None:
        self.is_open = False
        self._cancel_timer()
        self.endpoint.forget(self)
        self.transport.fail_handoffs()
        self.transport.connection = None

    def abort(self, reason: str) -> None:
        if self._aborted:
            return
        self._aborted = True
        self.is_open = False
        self._cancel_timer()
        self.transport.abort()

    def fail(self, error: BaseException) -> None:
        log.error("Internal error while answering an admin request from %s; closing it",
                  self.transport.peer_host, exc_info=error)
        try:
            self.abort("internal error")
        except Exception:
            log.exception("Aborting an admin connection failed as well")

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


__all__ = ["AdminConnection", "AdminEndpoint"]
