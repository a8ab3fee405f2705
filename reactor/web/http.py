"""HTTP/1.1 for the web endpoint: the request head, the page, the origin rule.

Goals:

* **Memory bounded whatever the peer sends.**  A request head is read up to
  :data:`MAX_HEAD` bytes; past that the answer is 431 and a close, so a peer
  that never ends its head costs at most that much.  Nothing but a head is
  read: the endpoint takes no request bodies.
* **A bad request gets a 4xx and a close, never a traceback.**  Every problem
  is an :class:`HTTPRefusal` carrying its status and a short reason, which is
  also the one log line about it.
* **The page runs only its own code.**  Every response carries a
  Content-Security-Policy that allows the page's own script and style and a
  connection to its own origin (the ``/ws`` socket) and nothing else, no
  inline script; ``nosniff``; and ``no-cache`` with an ETag, so that a browser
  asks again and gets a new page as soon as the server has one.

Only GET (and HEAD) exist; one request per connection (``Connection:
close``): the page is three small files, and the socket is the long-lived
part.  Standard library only.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources

log = logging.getLogger("reactor")

# A browser's request head is well under 2 KiB; cookies for the host could
# add some.  Past this the peer is not a browser asking for a page.
MAX_HEAD = 8 * 1024
MAX_HEADERS = 64
END_OF_HEAD = b"\r\n\r\n"

WEBSOCKET_PATH = "/ws"

# 'self' in connect-src covers ws:// and wss:// to the page's own host and port.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_REQUEST_LINE = re.compile(r"([A-Z]+) (/[!-~]*) HTTP/(\d)\.(\d)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A Host header: a name or address and a port, nothing that could end a header.
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")


class WebFailure(Exception):
    """The peer broke HTTP or WebSocket rules; ``reason`` says how.  What to
    tell it (a 4xx, a close frame) is already in the wire's ``data_to_send()``.
    (Here, not in ``wire``, so that the backends catch it without the extra.)"""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HTTPRefusal(Exception):
    """A request answered with an error status and then closed."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    path: str  # without the query string
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def wants_websocket(self) -> bool:
        return "websocket" in (self.headers.get("upgrade") or "").lower()


def head_end(buffer: bytes | bytearray) -> int:
    """Where the head in ``buffer`` ends (after its blank line), or -1.

    Raises 431 once ``buffer`` holds :data:`MAX_HEAD` bytes and no end."""
    end = buffer.find(END_OF_HEAD, 0, MAX_HEAD + len(END_OF_HEAD))
    if end >= 0:
        return end + len(END_OF_HEAD)
    if len(buffer) >= MAX_HEAD:
        raise HTTPRefusal(431, "request head too large")
    return -1


def parse_head(head: bytes) -> RequestHead:
    """Parse a complete request head; raises :class:`HTTPRefusal`."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HTTPRefusal(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise HTTPRefusal(400, "not an HTTP request line")
    method, target, major, minor = match.groups()
    if (major, minor) != ("1", "1"):
        raise HTTPRefusal(505, f"HTTP/{major}.{minor} is not served (HTTP/1.1 only)")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise HTTPRefusal(400, "malformed header line")
        if len(headers) >= MAX_HEADERS:
            raise HTTPRefusal(431, "too many header lines")
        key = name.lower()
        value = value.strip(" \t")
        # Repeated headers are joined as a list, as RFC 9110 allows.
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    host = headers.get("host")
    if host is None or _HOST.fullmatch(host) is None:
        raise HTTPRefusal(400, "missing or malformed Host header")
    if method not in ("GET", "HEAD"):
        raise HTTPRefusal(405, f"method {method} not allowed", (("Allow", "GET, HEAD"),))
    return RequestHead(method, target.partition("?")[0], headers)


def response(status: int, reason: str, headers: tuple[tuple[str, str], ...] = (),
             body: bytes = b"", *, include_body: bool = True) -> bytes:
    """A complete HTTP/1.1 response, with the security headers, closing the connection."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in (*SECURITY_HEADERS, *headers)]
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body if include_body else b"")


_REASONS = {
    304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 426: "Upgrade Required", 431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}


def refusal_response(refusal: HTTPRefusal) -> bytes:
    body = f"{refusal.status} {refusal.reason}\n".encode()
    headers = (("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store"),
               *refusal.headers)
    return response(refusal.status, _REASONS.get(refusal.status, "Error"), headers, body)


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static() -> dict[str, StaticFile]:
    """The page's files, read once from the package, by request path."""
    files: dict[str, StaticFile] = {}
    for entry in resources.files("reactor.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if suffix not in _TYPES or not entry.is_file():
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files["/" + entry.name] = StaticFile(body, _TYPES[suffix], etag)
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


_ORIGIN = re.compile(r"https?://(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


def parse_origins(text: str) -> tuple[str, ...]:
    """``--web-origin``'s value: origins separated by commas, each
    ``http[s]://host[:port]`` as a browser sends it; ValueError, with the
    one it cannot use, for anything else.  Empty: none listed."""
    if not text.strip():
        return ()
    origins = tuple(part.strip().rstrip("/").lower() for part in text.split(","))
    for origin in origins:
        if _ORIGIN.fullmatch(origin) is None:
            raise ValueError(f"not an origin (http[s]://host[:port]): {origin!r}")
    return origins


class OriginRule:
    """Which pages may open the WebSocket.

    By default only a page served by this same host and port (the Origin's
    host equals the request's Host), as websockets' and Centrifugo's
    defaults: another site's page cannot use a visitor's browser to chat.
    With ``allowed`` (``--web-origin``), exactly those origins.  A request
    without an Origin is not from a page (a browser always sends one on a
    WebSocket) and is let in: the terminal-like clients and the benchmarks.
    """

    def __init__(self, allowed: tuple[str, ...] = ()) -> None:
        self.allowed = frozenset(origin.rstrip("/").lower() for origin in allowed)

    def allows(self, origin: str | None, host: str) -> bool:
        if origin is None:
            return True
        origin = origin.lower()
        if self.allowed:
            return origin in self.allowed
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and rest == host.lower()


class Site:
    """What one web listener serves: the page's files and the origin rule."""

    def __init__(self, origins: OriginRule | None = None,
                 files: dict[str, StaticFile] | None = None) -> None:
        self.origins = origins or OriginRule()
        self.files = load_static() if files is None else files

    def page(self, request: RequestHead) -> bytes:
        """The answer to a request that is not a WebSocket upgrade."""
        if request.path == WEBSOCKET_PATH:
            raise HTTPRefusal(426, "this path is a WebSocket", (("Upgrade", "websocket"),))
        found = self.files.get(request.path)
        if found is None:
            raise HTTPRefusal(404, f"no page at {request.path}")
        headers = (("Content-Type", found.content_type), ("Cache-Control", "no-cache"),
                   ("ETag", found.etag))
        if request.header("if-none-match") == found.etag:
            return response(304, "Not Modified", headers)
        return response(200, "OK", headers, found.body, include_body=request.method == "GET")

    def check_upgrade(self, request: RequestHead, peer_host: str) -> None:
        """Raise 404 or 403 (with the log line) for an upgrade not to accept."""
        if request.path != WEBSOCKET_PATH:
            raise HTTPRefusal(404, f"no WebSocket at {request.path}")
        origin = request.header("origin")
        if not self.origins.allows(origin, request.headers["host"]):
            log.warning("web: refused a WebSocket from %s: origin %s is not allowed "
                        "(--web-origin)", peer_host, origin)
            raise HTTPRefusal(403, "origin not allowed")
