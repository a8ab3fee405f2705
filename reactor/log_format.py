"""How a log record becomes a line: the text form or JSON, with a timestamp.

Goals:

* Formatting is the writer thread's work, not the serving thread's.  A record
  is queued with its message template and arguments as they are
  (:func:`ready_to_queue`) and made into a line by the formatters here, on the
  writer thread (``reactor.logs``).  Only a record whose arguments are not
  plain values (an exception, a connection object), or that carries a
  traceback, is made into text before it is queued: such values can change,
  or are not for another thread to read, and such records are rare.
* The text form is the original exercise's line, ``[Server] Alice connected
  (127.0.0.1)``, after an RFC 3339 timestamp unless timestamps are off (under
  journald, which stamps every line itself).
* The JSON form is one object per line: ``time`` (unless off), ``level``,
  ``source`` (``Server``, or ``Worker 2`` under ``--workers``), ``event`` (a
  stable name from :data:`EVENTS`, else the message template), ``message``
  (the text form's words) and the record's arguments as named fields
  (``user``, ``address``, ``reason`` ...; ``args`` for a template not in the
  table).
* What users write is logged only as :class:`UserText`: its length, and its
  text only where the operator allows it (``--log-text``), in both forms.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol.escaping import escape

TIME_CHOICES = ("utc", "local", "off")
FORMAT_CHOICES = ("text", "json")
# Keys of every JSON line; no event's field may take one of these names.
RESERVED_KEYS = frozenset({"time", "level", "source", "event", "message", "args",
                           "exception", "stack"})


@dataclass(frozen=True, slots=True)
class UserText:
    """What a user wrote, as a log argument: ``"escaped text"`` in the text
    form, or ``(N characters)`` when the operator keeps text out of the log.

    Built on the serving thread for the price of an object (the text is a str,
    never changed); escaped on the writer thread.
    """

    length: int
    text: str | None  # None: --log-text off, the text is not even queued

    @classmethod
    def of(cls, text: str, shown: bool) -> UserText:
        return cls(len(text), text if shown else None)

    def __str__(self) -> str:
        if self.text is None:
            return f"({self.length} characters)"
        return f'"{escape(self.text)}"'


@dataclass(frozen=True)
class Event:
    """A message template's stable name in JSON and the names of its arguments."""

    name: str
    fields: tuple[str, ...] = ()


# The lines an operator filters on.  A template missing here still logs, with
# its template as the event and its arguments as "args"; a test checks that
# every template here is still one the code logs.
EVENTS: dict[str, Event] = {
    "Listening on port %d...": Event("listening", ("port",)),
    "Listening on port %d (TLS)...": Event("listening_tls", ("port",)),
    "Admin endpoint on port %d (/metrics, /healthz, /readyz)": Event("listening_admin", ("port",)),
    "Serving the web page on port %d (%s)...": Event("listening_web", ("port", "scheme")),
    "web: closed the connection from %s: %s": Event("web_closed", ("address", "reason")),
    "web: refused a WebSocket from %s: origin %s is not allowed (--web-origin)":
        Event("web_origin_refused", ("address", "origin")),
    "Server stopped.": Event("stopped"),
    "%s connected (%s)": Event("connected", ("user", "address")),
    "%s disconnected.": Event("disconnected", ("user",)),
    "%s disconnected: %s.": Event("disconnected", ("user", "reason")),
    "Message from %s to %s: %s": Event("message", ("from", "to", "text")),
    "Broadcast from %s: %s": Event("broadcast", ("from", "text")),
    "Message from %s to %s stored until they log in": Event("message_stored", ("from", "to")),
    "Message from %s to %s not stored: too many wait":
        Event("message_not_stored", ("from", "to")),
    "%s logged in: waiting messages delivered: %d":
        Event("waiting_delivered", ("user", "count")),
    "Refused a connection from %s: server full": Event("refused_server_full", ("address",)),
    "Refused a connection from %s: too many from it":
        Event("refused_too_many_from_address", ("address",)),
    "%s registered (%s)": Event("registered", ("user", "address")),
    "Password changed for %s (%s)": Event("password_changed", ("user", "address")),
    "Refused registered name %s from %s: not a secure connection":
        Event("refused_insecure_login", ("user", "address")),
    "Login failures for %s from %s: backing off %g s":
        Event("login_backoff", ("user", "address", "seconds")),
    "Closed the connection from %s: %d wrong passwords for %s":
        Event("wrong_passwords", ("address", "tries", "user")),
    "TLS handshake with %s failed: %s; closing that connection":
        Event("tls_handshake_failed", ("address", "reason")),
    "TLS error from %s: %s; closing that connection": Event("tls_error", ("address", "reason")),
    "TLS certificate reloaded from %s": Event("tls_certificate_reloaded", ("path",)),
    "Reloading configuration": Event("reloading"),
    "%d log line dropped (output was not keeping up)": Event("log_lines_dropped", ("count",)),
    "%d log lines dropped (output was not keeping up)": Event("log_lines_dropped", ("count",)),
    "Started %d workers on port %d": Event("workers_started", ("count", "port")),
    "Worker %d restarted (pid %d)": Event("worker_restarted", ("worker", "pid")),
    "Joining the chat through Redis at %s as node %s": Event("joining", ("redis", "node")),
    "Connected to Redis at %s": Event("redis_connected", ("redis",)),
    "Node %s stopped renewing its lease: its users are offline": Event("node_dead", ("node",)),
}

# Arguments that may wait in the queue as they are: immutable, and safe to
# format on another thread.  Exact types, so that no subclass's __str__ runs.
_PLAIN = frozenset({str, int, float, bool, type(None), UserText})
_EXCEPTIONS = logging.Formatter()


def ready_to_queue(record: logging.LogRecord) -> logging.LogRecord:
    """The record to queue for the writer thread, formatting nothing if it can.

    A record with plain arguments is queued as it is (it is not changed
    afterwards: the writer only reads it).  Otherwise a copy with its message
    and traceback made into text now, and its arguments kept as text for the
    JSON fields.
    """
    args = record.args
    if type(record.msg) is str and not record.exc_info and type(args) is tuple:
        for arg in args:
            if type(arg) not in _PLAIN:
                break
        else:
            return record
    frozen = copy.copy(record)  # the original may go on to other handlers
    frozen.rendered = record.getMessage()  # type: ignore[attr-defined]
    frozen.msg = str(record.msg)
    if isinstance(args, tuple):
        frozen.args = tuple(arg if type(arg) in _PLAIN else str(arg) for arg in args)
    else:
        frozen.args = ()
    if record.exc_info:
        frozen.exc_text = record.exc_text or _EXCEPTIONS.formatException(record.exc_info)
        frozen.exc_info = None
    return frozen


def message_of(record: logging.LogRecord) -> str:
    """The record's words: its template filled in, here or before it was queued."""
    rendered = record.__dict__.get("rendered")
    return rendered if rendered is not None else record.getMessage()


class Timestamps:
    """RFC 3339 times to the millisecond (``2026-12-07T05:40:12.345Z``), in
    UTC or with the local offset.  The date and time of day are computed once
    a second: one instance per writer thread."""

    def __init__(self, utc: bool = True) -> None:
        self.utc = utc
        self._second = -1
        self._prefix = ""
        self._zone = "Z"

    def __call__(self, record: logging.LogRecord) -> str:
        # The milliseconds as logging computed them for its own formatter.
        second = int(record.created)
        if second != self._second:
            moment = time.gmtime(second) if self.utc else time.localtime(second)
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", moment)
            self._zone = "Z" if self.utc else _offset(moment.tm_gmtoff)
            self._second = second
        return f"{self._prefix}.{int(record.msecs):03d}{self._zone}"


def _offset(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def timestamps(choice: str) -> Callable[[logging.LogRecord], str] | None:
    """The stamper for a ``--log-time`` choice; None for ``off``."""
    if choice not in TIME_CHOICES:
        raise ValueError(f"log time must be one of {', '.join(TIME_CHOICES)}, got {choice!r}")
    return None if choice == "off" else Timestamps(utc=choice == "utc")


class TextFormatter(logging.Formatter):
    """``[Server] words``, after a timestamp unless they are off."""

    def __init__(self, label: str = "Server",
                 stamp: Callable[[logging.LogRecord], str] | None = None) -> None:
        super().__init__()
        self.prefix = f"[{label}] "
        self.stamp = stamp

    def format(self, record: logging.LogRecord) -> str:
        line = self.prefix + message_of(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{record.stack_info}"
        return line if self.stamp is None else f"{self.stamp(record)} {line}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside are escaped)."""

    def __init__(self, label: str = "Server",
                 stamp: Callable[[logging.LogRecord], str] | None = None) -> None:
        super().__init__()
        self.source = label
        self.stamp = stamp

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {}
        if self.stamp is not None:
            entry["time"] = self.stamp(record)
        entry["level"] = record.levelname
        entry["source"] = self.source
        template = record.msg if isinstance(record.msg, str) else str(record.msg)
        event = EVENTS.get(template)
        entry["event"] = template if event is None else event.name
        entry["message"] = message_of(record)
        args = record.args if isinstance(record.args, tuple) else ()
        if event is not None and len(args) == len(event.fields):
            for name, value in zip(event.fields, args, strict=True):
                _add_field(entry, name, value)
        elif args:
            entry["args"] = [_json_value(value) for value in args]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def _add_field(entry: dict[str, object], name: str, value: object) -> None:
    if type(value) is UserText:
        # The length always; the text only where the operator allows it.
        entry["length"] = value.length
        if value.text is not None:
            entry[name] = escape(value.text, quoted=False)
        return
    entry[name] = _json_value(value)


def _json_value(value: object) -> object:
    if type(value) in (str, int, bool) or value is None:
        return value
    if type(value) is float and math.isfinite(value):  # type: ignore[arg-type]
        return value
    return str(value)


def formatter(log_format: str, label: str = "Server",
              time_choice: str = "utc") -> logging.Formatter:
    """The formatter for ``--log-format`` and ``--log-time``."""
    stamp = timestamps(time_choice)
    if log_format == "json":
        return JsonFormatter(label, stamp)
    if log_format == "text":
        return TextFormatter(label, stamp)
    raise ValueError(f"log format must be one of {', '.join(FORMAT_CHOICES)}, got {log_format!r}")
