"""Just enough HTTP/1.x for the admin endpoint, with no I/O (as ``protocol/``).

Goals: a request head is read into a buffer of at most :data:`MAX_HEAD`
bytes (more is refused, not kept), parsed once it is complete, and answered
with one response after which the connection closes -- no keep-alive, no
request body, no chunking: a scraper or a health probe asks one question per
connection, and whatever else a client sends is refused with a status line.
"""

from __future__ import annotations

from dataclasses import dataclass

# A request head (request line and headers) larger than this is refused (431):
# a scraper's is a few hundred bytes.
MAX_HEAD = 8192
TEXT = "text/plain; charset=utf-8"

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}

_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query string


@dataclass(frozen=True, slots=True)
class Refusal:
    """The request cannot be answered: its status and a one-line reason."""

    status: int
    reason: str


class HeadReader:
    """Collects a request head from the bytes as they arrive.

    ``feed`` returns None while the head is incomplete, else the
    :class:`Request` or the :class:`Refusal` -- once; what follows the head
    is ignored (the response ends the connection)."""

    __slots__ = ("_buffer", "_done", "started")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._done = False
        self.started = False  # some of a request has arrived

    def feed(self, data: bytes) -> Request | Refusal | None:
        if self._done:
            return None
        buffer = self._buffer
        self.started = self.started or bool(data)
        # Only the last three bytes of what came before can start the end.
        start = max(0, len(buffer) - 3)
        buffer += data
        end = _head_end(buffer, start)
        if end < 0:
            if len(buffer) > MAX_HEAD:
                return self._finish(Refusal(431, f"request head longer than {MAX_HEAD} bytes"))
            if not data:
                return self._finish(Refusal(400, "the request ended before its head did"))
            return None
        if end > MAX_HEAD:
            return self._finish(Refusal(431, f"request head longer than {MAX_HEAD} bytes"))
        return self._finish(parse_head(bytes(buffer[:end])))

    def _finish(self, result: Request | Refusal) -> Request | Refusal:
        """Answered: nothing more is read, nor kept."""
        self._done = True
        self._buffer = bytearray()
        return result


def _head_end(buffer: bytearray, start: int) -> int:
    """Where the head ends (after its blank line), or -1.  A bare LF is
    accepted as a line end, as most servers do."""
    crlf = buffer.find(b"\r\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    ends = [i + n for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
    return min(ends) if ends else -1


def parse_head(head: bytes) -> Request | Refusal:
    """The request line of a complete head (headers are not needed, only
    checked to be lines of text)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return Refusal(400, "the request head is not ASCII")
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return Refusal(400, "the request line is not METHOD TARGET VERSION")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN:
        return Refusal(400, "the method is not a token")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        return Refusal(400, "the version is not HTTP/1.0 or HTTP/1.1")
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        return Refusal(400, "the target is not a path")
    for line in lines[1:]:
        if line and (":" not in line or line[0] in " \t"):
            return Refusal(400, "a header line is not NAME: VALUE")
    return Request(method, target.split("?", 1)[0])


def response(status: int, body: bytes, content_type: str = TEXT,
             head_only: bool = False, extra: tuple[str, ...] = ()) -> bytes:
    """One whole response; the connection closes after it."""
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *extra,
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii") + (b"" if head_only else body)
