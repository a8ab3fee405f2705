"""Talking to the admin endpoint (``--admin-port``) as a scraper or a probe
would: raw HTTP/1.1 over a socket, and the text format read back strictly."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from tests.support import DEFAULT_TIMEOUT

# A sample line of the text format 0.0.4: name, optional labels, value.
SAMPLE = re.compile(
    r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)\})?'
    r' (?P<value>-?[0-9.e+-]+|NaN|[+-]Inf)')
COMMENT = re.compile(r"# (?P<kind>HELP|TYPE) (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) (?P<rest>.*)")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def exchange(port: int, request: bytes, timeout: float = DEFAULT_TIMEOUT) -> Reply:
    """Send ``request`` as it is, read until the server closes; the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_reply(sock)


def read_reply(sock: socket.socket) -> Reply:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    if "content-length" in headers:
        assert int(headers["content-length"]) == len(body) or not body, (headers, body)
    return Reply(int(status), headers, body)


def get(port: int, path: str, method: str = "GET") -> Reply:
    return exchange(port, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())


def scrape(port: int) -> dict[str, float]:
    """``/metrics``, checked line by line against the text format, as
    ``{'name{label="value"}': value}``."""
    reply = get(port, "/metrics")
    assert reply.status == 200, reply
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(reply.text)


def parse_exposition(text: str) -> dict[str, float]:
    """The samples of a text-format exposition; fails on any line that
    breaks the format (a family's HELP and TYPE come first, once; its
    samples follow together; counters end in ``_total``; a histogram's
    samples are its ``_bucket``, ``_sum`` and ``_count``)."""
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    described: dict[str, set[str]] = {}
    kinds: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        comment = COMMENT.fullmatch(line)
        if comment is not None:
            name = comment["name"]
            assert comment["kind"] not in described.setdefault(name, set()), line
            described[name].add(comment["kind"])
            if comment["kind"] == "TYPE":
                assert comment["rest"] in ("counter", "gauge", "histogram"), line
                kinds[name] = comment["rest"]
                assert comment["rest"] != "counter" or name.endswith("_total"), line
            current = name
            continue
        sample = SAMPLE.fullmatch(line)
        assert sample is not None, f"not a sample line: {line!r}"
        assert current is not None and described[current] == {"HELP", "TYPE"}, line
        names = ((current, f"{current}_bucket", f"{current}_sum", f"{current}_count")
                 if kinds[current] == "histogram" else (current,))
        assert sample["name"] in names, line
        key = sample["name"] + (f"{{{sample['labels']}}}" if sample["labels"] else "")
        assert key not in samples, f"twice: {key}"
        samples[key] = float(sample["value"])
    assert all(kinds.get(name) for name in described), "a family without its TYPE"
    return samples
