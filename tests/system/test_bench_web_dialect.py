"""The benchmark's web dialect, byte for byte, against the server's own web wire
(sans-IO, no socket, no clock): what the ``select-ws`` load clients send is
what a browser sends, and they answer the server's pings."""

from __future__ import annotations

import pytest

pytest.importorskip("websockets")

from bench.harness import wire
from reactor.web.http import Site, StaticFile
from reactor.web.wire import WebWire, frames_for

MAX_LINE = 1024
PAGE = StaticFile(b"<!doctype html><title>chat</title>", "text/html; charset=utf-8", '"v1"')


def server_wire() -> WebWire:
    """The server's wire with its default origin rule (same host only)."""
    return WebWire(Site(files={"/": PAGE}), MAX_LINE, "127.0.0.1")


def logged_in(name: str = "c7") -> WebWire:
    server = server_wire()
    assert server.receive(wire.login("web", name)) == (name.encode() + b"\n", False)
    return server


def test_a_login_in_one_write_opens_the_socket_and_sends_the_name() -> None:
    server = logged_in("c7")
    answer = server.data_to_send()
    assert answer.startswith(b"HTTP/1.1 101 ") and wire.END_OF_HEAD in answer


def test_the_login_asks_as_a_page_of_the_same_host_would() -> None:
    request = wire.upgrade_request()
    assert b"\r\nOrigin: http://127.0.0.1\r\n" in request
    assert b"\r\nHost: 127.0.0.1\r\n" in request
    assert request.count(b"Sec-WebSocket-Key: ") == 1


def test_chat_lines_go_out_as_masked_frames_the_server_reads_back() -> None:
    server = logged_in()
    text = wire.payload(wire.KIND_BROADCAST, 17, 123456789, pad=200)  # a 16-bit length
    frame = wire.broadcast("web", text)
    assert frame[1] & 0x80 and text not in frame  # masked: the payload is hidden
    direct = wire.direct("web", "c9", wire.payload(wire.KIND_DIRECT, 3, 42))
    assert server.receive(frame + direct + wire.logout("web", "c7")) == (
        b'broadcast "%s"\n' % text + b'chat c9 "seq=D3 t=42 "\n' + b"bye\n",
        False,
    )


def test_a_masked_frame_reads_back_whatever_its_mask() -> None:
    for mask in (b"\0\0\0\0", b"\xff\x00\xa5\x5a", b"abcd"):
        frame = wire.client_frame(b"hello", mask=mask)
        assert frame[2:6] == mask
        assert logged_in().receive(frame) == (b"hello\n", False)


def test_a_ping_is_answered_with_a_pong_the_server_accepts() -> None:
    server = logged_in()
    server.data_to_send()  # the HTTP answer
    server.heartbeat()
    ping = server.data_to_send()
    end, pongs, closed = wire.scan_frames(ping)
    assert (end, closed) == (len(ping), False) and pongs
    server.receive(pongs)
    assert not server.awaiting_pong
    server.heartbeat()  # no WebFailure: the last ping got its pong


def test_the_scan_stops_at_the_last_complete_frame_wherever_the_read_ends() -> None:
    lines = [b"<User c1 is online.>\n", b"x" * 300 + b"\n", b"<To everyone> seq=B1 t=2 \n"]
    stream = b"".join(frames_for(line) for line in lines)
    ends = [0]
    for line in lines:
        ends.append(ends[-1] + len(frames_for(line)))
    for cut in range(len(stream) + 1):
        end, pongs, closed = wire.scan_frames(stream[:cut])
        assert end == max(e for e in ends if e <= cut), cut
        assert (pongs, closed) == (b"", False)


def test_a_close_frame_is_reported() -> None:
    server = logged_in()
    server.data_to_send()
    assert server.close("bye")
    assert wire.scan_frames(server.data_to_send())[2]


def _whole_client_frames(stream: bytes) -> int:
    """How many complete (masked) client frames ``stream`` holds from its start."""
    i = frames = 0
    while i + 6 <= len(stream):
        length, start = stream[i + 1] & 0x7F, i + 6
        if length >= 126:
            start += 2 if length == 126 else 8
            length = int.from_bytes(stream[i + 2 : start - 4], "big")
        if start + length > len(stream):
            break
        i, frames = start + length, frames + 1
    return frames


def test_messages_the_server_never_took_are_counted_unsent_though_masked() -> None:
    """A server that stops reading: what the kernel took is counted sent, the
    rest unsent, by bytes (masked frames hide the payloads' markers)."""
    import socket

    from bench.harness.driver import Conn, open_loop

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        conn = Conn(*listener.getsockname()[:2])
        peer, _ = listener.accept()
        count = 5000  # 20 MB: more than the kernel's buffers hold for a peer that never reads

        def line(seq: int, intended: int) -> bytes:
            return wire.broadcast("web", wire.payload(wire.KIND_BROADCAST, seq, intended, 4000))

        log = open_loop(conn, line, 1e6, count, slack=0.2)
        conn.close()
        received = bytearray()
        while chunk := peer.recv(1 << 20):
            received += chunk
        peer.close()
    finally:
        listener.close()
    assert log.unsent > 0 and log.sent + log.unsent == count
    assert _whole_client_frames(bytes(received)) == log.sent
