"""The web port (``--web-port``), on every backend: browsers are chat users.

What a browser observes, over real sockets: the page and its headers; a
WebSocket user chatting with a TCP user, plain and over TLS (https/wss,
trustme certificates); the origin rule; bad input closed with the right
WebSocket code; a browser that stops reading cut off like a TCP client that
does; the shutdown notice followed by a close frame; a handshake that never
comes ended by the login timeout.  The WebSocket clients are the
``websockets`` library's, as a browser's stand-in: its synchronous client,
or its sans-IO client over a socket the test reads only when it wants to.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
from pathlib import Path

import pytest

pytest.importorskip("websockets")

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from reactor.backends.base import Server
from reactor.flow import FloodLimits
from tests.backends.test_tls import Certs
from tests.faults import Drain, client_pool
from tests.support import DEFAULT_TIMEOUT, LineClient, running_server, wait_until

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("web-tls"))


def browser(server: Server, context: ssl.SSLContext | None = None,
            origin: str | None = None) -> ClientConnection:
    """A WebSocket to the server's web port, as a page would open it."""
    assert server.web_port is not None
    sock = None if context is None else tls_with_its_tickets(server.web_port, context)
    # (Over TLS the socket is ours, already encrypted: "ws" so that it is not
    # wrapped twice; the request is the same.)
    return connect(f"ws://127.0.0.1:{server.web_port}/ws", sock=sock,
                   origin=origin, open_timeout=DEFAULT_TIMEOUT,  # type: ignore[arg-type]
                   compression=None, legacy=True)


def tls_with_its_tickets(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection whose session tickets (sent by the server just after
    the handshake, in TLS 1.3) are read before it is handed over.  The sync
    client reads on a thread of its own while it writes its request on
    another, and one SSL object used from two threads at once can swallow
    the request: the server then waits for a request that never left (seen
    once in a few dozen connections).  Nothing else is read here."""
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port),
                                                        timeout=DEFAULT_TIMEOUT),
                               server_hostname="127.0.0.1")
    sock.setblocking(False)
    try:
        wait_until(lambda: _tickets_read(sock), message="the server's session tickets")
    finally:
        sock.settimeout(None)
    return sock


def _tickets_read(sock: ssl.SSLSocket) -> bool:
    try:
        sock.recv(1)  # (the server says nothing before the request: only tickets come)
    except ssl.SSLWantReadError:
        pass
    session = sock.session
    return session is not None and session.has_ticket


def login(server: Server, name: str, context: ssl.SSLContext | None = None) -> ClientConnection:
    ws = browser(server, context)
    ws.send(name)
    assert ws.recv(timeout=DEFAULT_TIMEOUT) == f"<User {name} is online.>"
    return ws


def recv_until(ws: ClientConnection, wanted: str) -> list[str]:
    seen: list[str] = []
    while True:
        message = ws.recv(timeout=DEFAULT_TIMEOUT)
        assert isinstance(message, str)
        seen.append(message)
        if message == wanted:
            return seen


class RawBrowser:
    """A WebSocket client over a plain socket read only when the test says:
    websockets' sans-IO client, so that the test can stop reading."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(DEFAULT_TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        events = self._events()
        assert isinstance(events[0], Response) and events[0].status_code == 101, events

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _events(self) -> list[object]:
        while True:
            events = self.protocol.events_received()
            if events:
                return events
            data = self.sock.recv(65536)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
                return [None]

    def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def read_to_the_end(self, answer_pings: bool = True) -> list[Frame]:
        """Every frame until the server closes the connection."""
        frames: list[Frame] = []
        while True:
            for event in self._events():
                if event is None:
                    return frames
                assert isinstance(event, Frame)
                frames.append(event)
            if answer_pings:
                self._flush()

    def close(self) -> None:
        self.sock.close()


# -- the page -----------------------------------------------------------------------


def test_the_web_port_serves_the_page_with_its_security_headers(backend: str) -> None:
    with running_server(backend, web_port=0) as server:
        assert server.web_port is not None and server.web_port != server.port
        page = http.client.HTTPConnection("127.0.0.1", server.web_port, timeout=DEFAULT_TIMEOUT)
        page.request("GET", "/")
        answer = page.getresponse()
        body = answer.read()
        assert answer.status == 200
        assert b'<script src="app.js"' in body or b"app.js" in body
        assert "script-src 'self'" in answer.getheader("Content-Security-Policy", "")
        assert answer.getheader("X-Content-Type-Options") == "nosniff"
        page.close()
        missing = http.client.HTTPConnection("127.0.0.1", server.web_port,
                                             timeout=DEFAULT_TIMEOUT)
        missing.request("GET", "/etc/passwd")
        assert missing.getresponse().status == 404
        missing.close()


def test_a_request_that_is_not_http_gets_400_and_a_close(backend: str) -> None:
    with running_server(backend, web_port=0) as server:
        assert server.web_port is not None
        with LineClient(server.web_port) as peer:
            peer.send_raw(b"Alice\r\n\r\n")
            assert peer.read_line_bytes().startswith(b"HTTP/1.1 400 ")
            peer.expect_closed()
        # ... and the TCP port is not disturbed.
        with LineClient(server.port) as tcp:
            tcp.send("Alice")
            tcp.expect("<User Alice is online.>")


# -- a browser is a chat user -------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_a_browser_and_a_tcp_user_chat(backend: str, tls: bool, certs: Certs,
                                       caplog: pytest.LogCaptureFixture) -> None:
    options: dict[str, object] = {"web_port": 0}
    if tls:
        options.update(tls_cert=str(certs.cert), tls_key=str(certs.key), tls_port=0)
    context = certs.client_context() if tls else None
    with caplog.at_level(logging.INFO), running_server(backend, **options) as server, \
            client_pool(server.port) as pool:
        bob = pool.login("Bob")
        alice = login(server, "Alice", context)
        bob.expect("<User Alice is online.>")

        alice.send('chat Bob "Hello Bob!"')
        assert alice.recv(timeout=DEFAULT_TIMEOUT) == "<To Bob> Hello Bob!"
        bob.expect('<Message from Alice: "Hello Bob!">')
        bob.send('chat Alice "Hi <b>Alice</b>"')
        assert alice.recv(timeout=DEFAULT_TIMEOUT) == '<Message from Bob: "Hi <b>Alice</b>">'
        bob.read_line()  # (the echo)
        alice.send('broadcast "to all"')
        assert alice.recv(timeout=DEFAULT_TIMEOUT) == "<To everyone> to all"
        bob.read_until(lambda line: line == '<Broadcast from Alice: "to all">')

        alice.send("bye")
        recv_until(alice, "<User Alice is offline.>")
        bob.read_until(lambda line: line == "<User Alice is offline.>")
        alice.close()
    # The server's log has its own lines about Alice, not the library's.
    assert "Alice connected (127.0.0.1)" in caplog.text
    assert "connection open" not in caplog.text


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_broadcasts_reach_every_browser_once_each_in_order(backend: str, tls: bool,
                                                             certs: Certs) -> None:
    """Broadcasts to several browsers and a TCP user, from either: each
    arrives once, as one whole text message, in the order sent."""
    context = certs.client_context() if tls else None
    with running_server(backend, web_port=0, tls_port=0 if tls else None,
                        tls_cert=str(certs.cert) if tls else None,
                        tls_key=str(certs.key) if tls else None) as server, \
            client_pool(server.port) as pool:
        bob = pool.login("Bob")
        names = ["Ann", "Cy", "Dee"]
        browsers = []
        for name in names:
            browsers.append(login(server, name, context))
            bob.expect(f"<User {name} is online.>")
        for ws in browsers[:-1]:  # the later logins, announced
            recv_until(ws, f"<User {names[-1]} is online.>")
        # In one write: read together, so the backend joins them (one piece
        # per recipient, framed line by line for the browsers; threads and
        # asyncio leave TLS recipients out of a join).
        bob.send_raw("".join(f'broadcast "from tcp {i}"\n' for i in range(5)).encode())
        sent = [f'<Broadcast from Bob: "from tcp {i}">' for i in range(5)]
        bob.read_until(lambda line: line == "<To everyone> from tcp 4")  # all fanned out
        browsers[0].send('broadcast "from a browser"')
        bob.read_until(lambda line: line == '<Broadcast from Ann: "from a browser">')
        for name, ws in zip(names, browsers, strict=True):
            expected = [*sent, '<Broadcast from Ann: "from a browser">']
            if name == "Ann":
                expected[-1] = "<To everyone> from a browser"
            seen = recv_until(ws, expected[-1])
            assert [m for m in seen if m.startswith(("<Broadcast", "<To everyone>"))] == expected
            ws.close()


def test_the_web_ports_certificate_is_reloaded_with_the_others(
        backend: str, tmp_path: Path) -> None:
    first, second = Certs(tmp_path, "first"), Certs(tmp_path, "second")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    with running_server(backend, web_port=0, tls_cert=str(cert), tls_key=str(key)) as server:
        alice = login(server, "Alice", first.client_context())
        cert.write_bytes(second.cert.read_bytes())
        key.write_bytes(second.key.read_bytes())
        server.reload()  # what SIGHUP does

        def reloaded() -> bool:
            try:
                browser(server, second.client_context()).close()
            except ssl.SSLCertVerificationError:
                return False
            return True

        wait_until(reloaded, message="the new certificate on the web port")
        with pytest.raises(ssl.SSLCertVerificationError):
            browser(server, first.client_context())
        alice.send("users")  # the connection made before the reload carries on
        assert alice.recv(timeout=DEFAULT_TIMEOUT) == "<Online users: Alice>"
        alice.close()


def test_a_page_of_another_site_is_refused_and_logged(
        backend: str, caplog: pytest.LogCaptureFixture) -> None:
    with running_server(backend, web_port=0) as server:
        with pytest.raises(InvalidStatus) as refused:
            browser(server, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        assert any("origin https://evil.example is not allowed" in record.getMessage()
                   for record in caplog.records)
        # The page's own origin is let in.
        ws = browser(server, origin=f"http://127.0.0.1:{server.web_port}")
        ws.send("Alice")
        assert ws.recv(timeout=DEFAULT_TIMEOUT) == "<User Alice is online.>"
        ws.close()


def test_an_origin_listed_with_web_origin_is_let_in(backend: str) -> None:
    with running_server(backend, web_port=0,
                        web_origins=("https://chat.example.org",)) as server:
        ws = browser(server, origin="https://chat.example.org")
        ws.send("Alice")
        assert ws.recv(timeout=DEFAULT_TIMEOUT) == "<User Alice is online.>"
        ws.close()
        with pytest.raises(InvalidStatus):
            browser(server, origin=f"http://127.0.0.1:{server.web_port}")


# -- bad input, slow readers, the end -----------------------------------------------


@pytest.mark.parametrize(("message", "code"), [
    ("x" * 5000, 1009),  # longer than --max-line
    (["x" * 3000, "x" * 3000], 1009),  # ... in fragments, each within it
    (b"\x00binary", 1003),
    ("two\nlines", 1007),
], ids=["oversize", "oversize-in-fragments", "binary", "newline"])
def test_a_message_the_chat_cannot_take_closes_the_socket_with_its_code(
        backend: str, message: str | bytes | list[str], code: int) -> None:
    with running_server(backend, web_port=0, max_line=4096) as server, \
            client_pool(server.port) as pool:
        bob = pool.login("Bob")
        alice = login(server, "Alice")
        bob.expect("<User Alice is online.>")
        with pytest.raises(ConnectionClosed) as closed:
            alice.send(message)  # (in fragments: the close may come before the last)
            while True:
                alice.recv(timeout=DEFAULT_TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
        bob.expect("<User Alice is offline.>")
        alice.close()


def test_a_browser_that_stops_reading_is_cut_off_like_a_tcp_client(backend: str) -> None:
    """Slow (a browser) stops reading while Alice's broadcasts keep coming:
    once its queue passes the hard limit it is cut off and everyone is told."""
    hard = 1 * MiB
    with running_server(backend, web_port=0, output_limit=256 * KiB, output_hard_limit=hard,
                        slow_consumer_grace=3600, flood=FloodLimits(enabled=False)) as server, \
            client_pool(server.port) as pool:
        assert server.web_port is not None
        slow = RawBrowser(server.web_port, rcvbuf=16 * KiB)
        slow.send("Slow")  # ... and it never reads again
        alice = pool.login("Alice")
        offline = b"<User Slow is offline.>"
        alice_lines = Drain(alice.sock, keep=lambda line: line == offline)
        blob = b'broadcast "' + b"y" * 3000 + b'"\n'
        # Slow's login is its own connection's (its own thread, on threads):
        # Alice's may be served first.
        wait_until(lambda: server.chat.whiteboard.lookup("Slow") is not None,
                   message="Slow logged in")
        found = server.chat.whiteboard.lookup("Slow")
        assert found is not None
        connection = found[1]
        while not alice_lines.kept():
            assert connection.transport.queued <= hard + 16 * len(blob)
            before = alice_lines.line_count
            alice.send_raw(blob * 16)
            alice_lines.wait_for(lambda d, b=before: d.line_count >= b + 16 or bool(d.kept()),
                                 message="the echoes")
        assert connection.close_reason is not None
        assert connection.close_reason.startswith("slow consumer")
        slow.sock.settimeout(DEFAULT_TIMEOUT)
        slow.read_to_the_end()  # what the kernel had taken, then the end
        slow.close()
        alice_lines.stop()


def test_a_peer_that_pings_and_never_reads_the_pongs_is_cut_off(backend: str) -> None:
    """Pings are not chat lines (no flood control meters them), but their
    pongs are output like any other: past the hard limit, a slow consumer."""
    hard = 1 * MiB
    with running_server(backend, web_port=0, output_limit=256 * KiB,
                        output_hard_limit=hard) as server:
        assert server.web_port is not None
        pinger = RawBrowser(server.web_port, rcvbuf=16 * KiB)
        pinger.send("Pinger")
        wait_until(lambda: server.chat.whiteboard.lookup("Pinger") is not None,
                   message="Pinger online")
        connection = server.chat.whiteboard.lookup("Pinger")[1]  # type: ignore[index]
        ping = b"p" * 125
        try:
            for _ in range(64 * hard // 128):  # (far more pongs than the limit)
                for _ in range(64):
                    pinger.protocol.send_ping(ping)
                for data in pinger.protocol.data_to_send():
                    pinger.sock.sendall(data)
                if not connection.is_open:
                    break
        except OSError:
            pass  # cut off while sending
        wait_until(lambda: not connection.is_open, message="Pinger cut off")
        assert connection.close_reason == f"slow consumer: more than {hard} bytes of output queued"
        pinger.close()


def test_shutdown_tells_a_browser_and_sends_a_close_frame(backend: str) -> None:
    with running_server(backend, web_port=0) as server:
        alice = login(server, "Alice")
        server.stop()
        notice = alice.recv(timeout=DEFAULT_TIMEOUT)
        assert isinstance(notice, str) and "shutting down" in notice.lower()
        with pytest.raises(ConnectionClosed) as closed:
            alice.recv(timeout=DEFAULT_TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        alice.close()


def test_a_browser_counts_against_max_clients_and_a_full_server_turns_it_away(
        backend: str) -> None:
    with running_server(backend, web_port=0, max_clients=1) as server:
        alice = login(server, "Alice")
        with pytest.raises((InvalidHandshake, ConnectionClosed, OSError)):
            browser(server)  # closed before its handshake is answered
        with LineClient(server.port) as bob:
            bob.send("Bob")
            assert b"full" in bob.expect_closed().lower()
        alice.send("users")
        assert alice.recv(timeout=DEFAULT_TIMEOUT) == "<Online users: Alice>"
        alice.close()


def test_a_handshake_that_never_comes_is_closed_at_the_login_timeout(backend: str) -> None:
    with running_server(backend, web_port=0, login_timeout=0.5) as server:
        assert server.web_port is not None
        with LineClient(server.web_port) as idle:
            idle.send_raw(b"GET /ws HTTP/1.1\r\n")  # ... and nothing more
            idle.expect_closed()
        wait_until(lambda: server.chat.connection_count == 0, message="the connection gone")


def test_a_browser_that_answers_pings_stays_and_one_that_does_not_is_closed(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a short ping interval: a browser that answers pings (as every
    browser does by itself) stays connected through several of them; a
    peer that never answers is closed (1011) after the next one."""
    from reactor.web import wire

    # Long enough for a loaded machine to answer a ping in time.
    monkeypatch.setattr(wire, "PING_INTERVAL", 0.3)
    with running_server(backend, web_port=0) as server:
        assert server.web_port is not None
        mute = RawBrowser(server.web_port)
        mute.send("Mute")
        frames = mute.read_to_the_end(answer_pings=False)
        assert frames[-1].opcode is Opcode.CLOSE and frames[-1].data[:2] == (1011).to_bytes(2, "big")
        mute.close()

        alice = login(server, "Alice")
        pings = 0

        def pinged(_data: bytes) -> None:
            nonlocal pings
            pings += 1

        # websockets' client answers each ping; count them on their way in.
        original = alice.protocol.recv_frame  # type: ignore[attr-defined]

        def counting(frame: Frame) -> None:
            if frame.opcode is Opcode.PING:
                pinged(frame.data)
            original(frame)

        alice.protocol.recv_frame = counting  # type: ignore[method-assign]
        wait_until(lambda: pings >= 2, message="two pings")
        alice.send("users")
        assert alice.recv(timeout=DEFAULT_TIMEOUT) == "<Online users: Alice>"
        alice.close()


def test_a_browser_paused_by_flood_control_is_not_closed_for_a_pong_left_unread(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A browser over its line rate waits while its lines are metered, and
    the server reads nothing more from it meanwhile -- its pongs included.
    Paused for several ping intervals, it is not closed for a missing pong:
    every line is answered, and the pings start again after the pause."""
    from reactor.web import wire

    monkeypatch.setattr(wire, "PING_INTERVAL", 0.3)
    lines = 20  # at 10 a second after a burst of 4: paused for several intervals
    with running_server(backend, web_port=0,
                        flood=FloodLimits(lines_per_second=10, lines_burst=4)) as server:
        assert server.web_port is not None
        flooder = RawBrowser(server.web_port)
        flooder.send("Flooder")
        for i in range(lines):  # in one write: read at once, then metered
            flooder.protocol.send_text(f'broadcast "b{i}"'.encode())
        flooder._flush()
        echoes: list[str] = []
        pinged_after = False
        while not pinged_after:
            for event in flooder._events():
                assert isinstance(event, Frame), "closed by the server"
                assert event.opcode is not Opcode.CLOSE, bytes(event.data)
                text = bytes(event.data)
                if event.opcode is Opcode.TEXT and text.startswith(b"<To everyone>"):
                    echoes.append(text.decode())
                elif event.opcode is Opcode.PING and len(echoes) == lines:
                    pinged_after = True  # the keepalive carries on after the pause
            flooder._flush()  # the pongs (websockets' client makes them)
        assert echoes == [f"<To everyone> b{i}" for i in range(lines)]
        flooder.send("users")
        texts: list[bytes] = []
        while not texts:
            for event in flooder._events():
                assert isinstance(event, Frame) and event.opcode is not Opcode.CLOSE
                if event.opcode is Opcode.TEXT:
                    texts.append(bytes(event.data))
            flooder._flush()
        assert texts == [b"<Online users: Flooder>"]
        flooder.close()
