"""The web wire over plain bytes: what a browser (websockets' client protocol,
sans-IO) and the connection's line path see, with no socket and no clock."""

from __future__ import annotations

import logging
import tracemalloc

import pytest

pytest.importorskip("websockets")

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from reactor.outbuf import OutputBuffer
from reactor.web.http import MAX_HEAD, OriginRule, Site, StaticFile
from reactor.web.wire import WebFailure, WebWire, frames_for, text_frame

MAX_LINE = 64
PAGE = StaticFile(b"<!doctype html><title>chat</title>", "text/html; charset=utf-8", '"v1"')


def make_wire(origins: tuple[str, ...] = ()) -> WebWire:
    site = Site(OriginRule(origins), {"/": PAGE, "/index.html": PAGE})
    return WebWire(site, MAX_LINE, "203.0.113.5")


def sent(wire: WebWire) -> bytes:
    """What the wire has to say by itself."""
    return wire.data_to_send()


def browser(origin: str | None = "http://chat.example:8080") -> tuple[ClientProtocol, bytes]:
    client = ClientProtocol(parse_uri("ws://chat.example:8080/ws"),
                            origin=origin)  # type: ignore[arg-type]
    client.send_request(client.connect())
    return client, b"".join(client.data_to_send())


def opened() -> tuple[WebWire, ClientProtocol]:
    wire = make_wire()
    client, request = browser()
    assert wire.receive(request) == (b"", False)
    client.receive_data(sent(wire))
    [answer] = client.events_received()
    assert isinstance(answer, Response) and answer.status_code == 101
    return wire, client


def client_frames(client: ClientProtocol, wire: WebWire) -> list[Frame]:
    client.receive_data(sent(wire))
    return [e for e in client.events_received() if isinstance(e, Frame)]


def close_code(client: ClientProtocol, wire: WebWire) -> int:
    frames = client_frames(client, wire)
    assert frames[-1].opcode is Opcode.CLOSE
    return client.close_rcvd.code  # type: ignore[union-attr]


def test_the_handshake_opens_the_socket_and_a_text_message_is_one_chat_line() -> None:
    wire, client = opened()
    assert wire.upgraded
    client.send_text(b'chat Bob "hi"')
    assert wire.receive(b"".join(client.data_to_send())) == (b'chat Bob "hi"\n', False)


def test_a_message_in_fragments_is_one_line() -> None:
    wire, client = opened()
    client.send_text(b"broad", fin=False)
    client.send_continuation(b'cast "x"', fin=True)
    assert wire.receive(b"".join(client.data_to_send())) == (b'broadcast "x"\n', False)


def test_a_message_in_countless_empty_fragments_holds_only_its_bytes() -> None:
    """Memory while fragments keep coming does not grow with their number:
    the peak over ten times more of them is about the same as over a few."""
    wire, client = opened()
    client.send_text(b"broad", fin=False)
    wire.receive(b"".join(client.data_to_send()))

    def peak_while_fed(chunks: int) -> int:
        tracemalloc.start()
        try:
            for _ in range(chunks):
                for _ in range(250):
                    client.send_continuation(b"", fin=False)
                assert wire.receive(b"".join(client.data_to_send())) == (b"", False)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few = peak_while_fed(10)
    many = peak_while_fed(100)
    assert many < 1.5 * few, (few, many)
    client.send_continuation(b'cast "x"', fin=True)
    assert wire.receive(b"".join(client.data_to_send())) == (b'broadcast "x"\n', False)


def test_each_queued_chat_line_reaches_the_browser_as_one_text_message() -> None:
    _, client = opened()
    client.receive_data(WebWire.frame(b"<User Ann is online.>\n<User Bob is online.>\n"))
    client.receive_data(WebWire.frame(b"<To Bob> hi\n"))
    frames = client.events_received()
    assert [(f.opcode, f.data) for f in frames] == [  # type: ignore[union-attr]
        (Opcode.TEXT, b"<User Ann is online.>"), (Opcode.TEXT, b"<User Bob is online.>"),
        (Opcode.TEXT, b"<To Bob> hi")]


def test_every_line_is_a_frame_even_without_its_terminator() -> None:
    assert WebWire.frame(b"a\n\nb") == text_frame(b"a") + text_frame(b"") + text_frame(b"b")


def test_queued_frames_keep_the_output_queues_promises() -> None:
    """Frames are queued whole: a line's handoff runs when its frame is sent."""
    done: list[bool] = []
    output = OutputBuffer()
    frame = WebWire.frame(b"<To Bob> hi\n")
    output.append(frame, done.append)
    assert output.consume(len(frame) - 1) == []
    for handoff in output.consume(1):
        handoff(True)
    assert done == [True]


def test_a_broadcast_line_is_framed_once_for_every_recipient() -> None:
    line = b'<Broadcast from Ann: "hello">\n'
    queues = [OutputBuffer() for _ in range(3)]
    for queue in queues:
        queue.append(WebWire.frame(line))
    first = queues[0].buffers()[0]
    assert all(queue.buffers()[0] is first for queue in queues)
    assert frames_for(line) == Frame(Opcode.TEXT, line[:-1]).serialize(mask=False)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_our_frames_are_the_library_frames(size: int) -> None:
    payload = b"a" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_a_binary_message_closes_with_1003() -> None:
    wire, client = opened()
    client.send_binary(b"\x00\x01")
    with pytest.raises(WebFailure, match="1003"):
        wire.receive(b"".join(client.data_to_send()))
    assert close_code(client, wire) == 1003


def test_a_message_over_the_line_limit_closes_with_1009() -> None:
    wire, client = opened()
    client.send_text(b"x" * (MAX_LINE + 1))
    with pytest.raises(WebFailure, match="1009"):
        wire.receive(b"".join(client.data_to_send()))
    assert close_code(client, wire) == 1009


def test_a_message_at_the_line_limit_is_a_line() -> None:
    wire, client = opened()
    client.send_text(b"x" * MAX_LINE)
    assert wire.receive(b"".join(client.data_to_send())) == (b"x" * MAX_LINE + b"\n", False)


def test_invalid_utf8_closes_with_1007() -> None:
    wire, client = opened()
    client.send_frame(Frame(Opcode.TEXT, b"caf\xc3"))
    with pytest.raises(WebFailure, match="1007"):
        wire.receive(b"".join(client.data_to_send()))
    assert close_code(client, wire) == 1007


def test_a_newline_inside_a_message_closes_with_1007_and_forges_no_second_line() -> None:
    wire, client = opened()
    client.send_text(b'chat Bob "a"\nbroadcast "b"')
    with pytest.raises(WebFailure, match="1007"):
        wire.receive(b"".join(client.data_to_send()))
    assert close_code(client, wire) == 1007


def test_a_close_from_the_browser_ends_the_input_and_is_answered() -> None:
    wire, client = opened()
    client.send_close(1000, "bye")
    assert wire.receive(b"".join(client.data_to_send())) == (b"", True)
    assert close_code(client, wire) == 1000


def test_the_server_pings_and_closes_when_no_pong_came() -> None:
    wire, client = opened()
    wire.heartbeat()
    assert client_frames(client, wire)[0].opcode is Opcode.PING
    # The browser answers: the next heartbeat pings again.
    wire.receive(b"".join(client.data_to_send()))
    wire.heartbeat()
    assert client_frames(client, wire)[0].opcode is Opcode.PING
    # No answer this time: the next heartbeat closes.
    with pytest.raises(WebFailure, match="no pong"):
        wire.heartbeat()
    assert close_code(client, wire) == 1011


def test_a_server_close_goes_out_as_going_away() -> None:
    wire, client = opened()
    assert wire.close("server shutting down")
    assert close_code(client, wire) == 1001


def test_the_page_is_served_with_its_security_headers_and_closed() -> None:
    wire = make_wire()
    request = b"GET / HTTP/1.1\r\nHost: chat.example:8080\r\n\r\n"
    assert wire.receive(request) == (b"", True)
    answer = sent(wire)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == PAGE.body
    for header in (b"Content-Security-Policy: default-src 'none'; script-src 'self'",
                   b"connect-src 'self'", b"X-Content-Type-Options: nosniff",
                   b"Cache-Control: no-cache", b'ETag: "v1"', b"Connection: close"):
        assert header in head
    assert b"unsafe-inline" not in head
    assert wire.closing


def test_a_page_the_browser_has_is_not_sent_again() -> None:
    wire = make_wire()
    wire.receive(b'GET / HTTP/1.1\r\nHost: h\r\nIf-None-Match: "v1"\r\n\r\n')
    assert sent(wire).startswith(b"HTTP/1.1 304 ")


@pytest.mark.parametrize(("request_head", "status"), [
    (b"HELLO\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n", b"400"),
    (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", b"505"),
    (b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", b"405"),
    (b"GET /secret HTTP/1.1\r\nHost: a\r\n\r\n", b"404"),
    (b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n", b"426"),
    (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
     b"400"),  # no key
])
def test_a_bad_request_gets_a_4xx_and_a_close(request_head: bytes, status: bytes) -> None:
    wire = make_wire()
    with pytest.raises(WebFailure, match="HTTP " + status.decode()):
        wire.receive(request_head)
    assert sent(wire).startswith(b"HTTP/1.1 " + status)
    assert wire.closing and wire.ended and not wire.upgraded


def test_a_request_head_is_bounded() -> None:
    wire = make_wire()
    assert wire.receive(b"GET / HTTP/1.1\r\nHost: a\r\n") == (b"", False)
    with pytest.raises(WebFailure, match="HTTP 431"):
        for _ in range(MAX_HEAD // 64 + 1):
            wire.receive(b"X-Padding: " + b"p" * 51 + b"\r\n")
    assert sent(wire).startswith(b"HTTP/1.1 431")


def test_another_sites_page_is_refused_with_403_and_a_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    wire = make_wire()
    _, request = browser(origin="http://evil.example")
    with caplog.at_level(logging.WARNING, "reactor"), pytest.raises(WebFailure, match="403"):
        wire.receive(request)
    assert sent(wire).startswith(b"HTTP/1.1 403")
    assert "refused a WebSocket from 203.0.113.5: origin http://evil.example" in caplog.text


def test_the_origin_allowlist_replaces_the_same_host_rule() -> None:
    rule = OriginRule(("https://chat.example",))
    assert rule.allows("https://chat.example", "internal:8080")
    assert not rule.allows("http://internal:8080", "internal:8080")
    same_host = OriginRule()
    assert same_host.allows("http://internal:8080", "internal:8080")
    assert same_host.allows("https://internal:8080", "internal:8080")
    assert not same_host.allows("http://internal:8081", "internal:8080")
    assert not same_host.allows("null", "internal:8080")
    assert same_host.allows(None, "internal:8080")  # not a page: a program


def test_lines_that_arrive_with_the_handshake_are_not_lost() -> None:
    wire = make_wire()
    client, request = browser()
    client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n")  # not read back: only bytes
    frame = Frame(Opcode.TEXT, b"Ann").serialize(mask=True)
    assert wire.receive(request + frame) == (b"Ann\n", False)


def test_a_frame_split_across_reads_is_one_line() -> None:
    wire, client = opened()
    client.send_text(b"hi")
    data = b"".join(client.data_to_send())
    assert wire.receive(data[:3]) == (b"", False)
    assert wire.receive(data[3:]) == (b"hi\n", False)


def test_the_end_of_input_without_a_close_frame_ends_the_peers_side() -> None:
    wire, _ = opened()
    assert wire.receive(b"") == (b"", True)
    assert wire.ended and not wire.data_to_send()
