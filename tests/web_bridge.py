"""A test-only bridge: browsers on a web port, each relayed to the chat's TCP port.

Until a backend serves ``--web-port`` itself, this lets a real browser try
the page against a real server, through the real :class:`WebWire`: each
WebSocket becomes one TCP connection to the chat, lines both ways.  Two
threads per connection (browser -> chat, chat -> browser), one lock around
the wire, which is not thread-safe.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from reactor.web.http import Site
from reactor.web.wire import WebFailure, WebWire


class Bridge:
    """The web port, and the chat port it relays to (changed when a test
    restarts the chat server on another port)."""

    def __init__(self, port: int, chat_port: int) -> None:
        self.port = port
        self.chat_port = chat_port


class _Pair:
    def __init__(self, browser: socket.socket, bridge: Bridge, site: Site) -> None:
        self.browser = browser
        self.bridge = bridge
        self.chat: socket.socket | None = None
        self.wire = WebWire(site, 4096, browser.getpeername()[0])
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.from_browser, daemon=True)]

    def flush(self, frames: bytes = b"") -> None:
        """Send ``frames`` and then what the wire has to say, in that order."""
        with self.lock:
            self.browser.sendall(frames + self.wire.data_to_send())

    def from_browser(self) -> None:
        try:
            while True:
                data = self.browser.recv(65536)
                try:
                    with self.lock:
                        lines, ended = self.wire.receive(data)
                except WebFailure:
                    lines, ended = b"", True
                if self.wire.upgraded and self.chat is None:
                    self.chat = socket.create_connection(("127.0.0.1", self.bridge.chat_port))
                    self.threads.append(threading.Thread(target=self.from_chat, daemon=True))
                    self.threads[-1].start()
                if lines and self.chat is not None:
                    self.chat.sendall(lines)
                self.flush()
                if ended or not data:
                    break
        except OSError:
            pass
        finally:
            self.close()

    def from_chat(self) -> None:
        assert self.chat is not None
        rest = b""
        try:
            while data := self.chat.recv(65536):
                buffer = rest + data
                end = buffer.rfind(b"\n") + 1
                lines, rest = buffer[:end], buffer[end:]
                if lines:
                    self.flush(WebWire.frame(lines))
            with self.lock:
                self.wire.close("the chat closed the connection")
            self.flush()
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        for sock in (self.browser, self.chat):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def web_bridge(chat_port: int) -> Iterator[Bridge]:
    """Serve the page and /ws on a free port, relaying to ``chat_port``."""
    site = Site()
    listener = socket.create_server(("127.0.0.1", 0))
    bridge = Bridge(listener.getsockname()[1], chat_port)
    pairs: list[_Pair] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                browser, _ = listener.accept()
            except OSError:
                return
            pair = _Pair(browser, bridge, site)
            pairs.append(pair)
            pair.threads[0].start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield bridge
    finally:
        stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)
        for pair in pairs:
            pair.close()
            for worker in list(pair.threads):
                worker.join(timeout=5)
            for sock in (pair.browser, pair.chat):
                if sock is not None:
                    sock.close()
