"""The admin endpoint's pieces without sockets: the request head reader,
the text format writer, and the close reasons' labels."""

from __future__ import annotations

from reactor.admin.endpoint import HOUSEKEEPING_LATE, AdminEndpoint
from reactor.admin.http import MAX_HEAD, HeadReader, Refusal, Request, parse_head, response
from reactor.metrics import CLOSE_LABELS, Metric, close_label, counter, exposition, gauge
from tests.admin_support import parse_exposition
from tests.fake_transport import Harness


def test_a_head_split_anywhere_is_read_whole_once() -> None:
    head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\nignored after the head"
    for size in (1, 2, 3, 5, len(head)):
        reader = HeadReader()
        results = [reader.feed(head[i:i + size]) for i in range(0, len(head), size)]
        done = [result for result in results if result is not None]
        assert done == [Request("GET", "/metrics")], size


def test_bare_line_feeds_end_a_head_too() -> None:
    assert HeadReader().feed(b"HEAD /healthz HTTP/1.0\nX: y\n\n") == Request("HEAD", "/healthz")


def test_a_head_that_never_ends_is_refused_at_the_limit_not_kept() -> None:
    reader = HeadReader()
    assert reader.feed(b"GET / HTTP/1.1\r\n") is None
    result = reader.feed(b"X: " + b"y" * MAX_HEAD)
    assert isinstance(result, Refusal) and result.status == 431
    assert reader.feed(b"\r\n\r\n") is None  # answered once


def test_an_unfinished_head_at_the_end_of_input_is_a_bad_request() -> None:
    reader = HeadReader()
    assert reader.feed(b"GET /metrics HTTP/1.1\r\n") is None
    assert reader.started
    result = reader.feed(b"")
    assert isinstance(result, Refusal) and result.status == 400


def test_malformed_heads_are_refused_with_a_reason() -> None:
    for head in (b"GET /\r\n\r\n", b"G\xc3\xa9T / HTTP/1.1\r\n\r\n", b"GET / HTTP/3\r\n\r\n",
                 b"GET http://x/ HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n folded\r\n\r\n",
                 b"GET /a b HTTP/1.1\r\n\r\n"):
        result = parse_head(head)
        assert isinstance(result, Refusal) and result.status == 400 and result.reason, head


def test_a_response_says_its_length_and_that_the_connection_closes() -> None:
    data = response(503, b"not ready: x\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Content-Length: 13" in head and b"Connection: close" in head
    assert body == b"not ready: x\n"
    assert response(200, b"abc", head_only=True).endswith(b"Content-Length: 3\r\n"
                                                          b"Cache-Control: no-store\r\n"
                                                          b"Connection: close\r\n\r\n")


def test_the_text_format_escapes_what_it_must_and_keeps_families_together() -> None:
    text = exposition([
        counter("x_total", 'help with \\ and\nnewline', label="why",
                values={'a "quoted"\nvalue\\': 2}, known=("first",)),
        gauge("y", "a float", 0.25),
        gauge("z", "huge", float("inf")),
        Metric("w", "gauge", "no samples"),
    ]).decode()
    assert "# HELP x_total help with \\\\ and\\nnewline\n" in text
    assert 'x_total{why="first"} 0\n' in text
    assert 'x_total{why="a \\"quoted\\"\\nvalue\\\\"} 2\n' in text
    assert "y 0.25\n" in text and "z +Inf\n" in text
    assert len(parse_exposition(text)) == 4


def test_close_reasons_map_to_a_fixed_set_of_labels() -> None:
    assert close_label("slow consumer: more than 16 bytes of output queued") == "slow_consumer"
    assert close_label("slow consumer: cut to keep the server's output budget") == "output_budget"
    assert close_label("kicked by Op") == "kicked"
    assert close_label(None) == "peer_closed"
    assert close_label("anything a client could say") == "other"
    assert {close_label(reason) for reason in ("bye", "login timed out")} <= set(CLOSE_LABELS)


def test_healthz_says_unhealthy_once_the_loop_s_timers_stop_firing() -> None:
    harness = Harness()
    admin = AdminEndpoint(harness.chat, [])
    harness.advance(30)  # timers fire as time passes: healthy
    assert admin.answer(Request("GET", "/healthz"))[:2] == (200, b"ok\n")
    harness.clock.now += HOUSEKEEPING_LATE + 5  # time passes, and no timer runs
    status, body, _ = admin.answer(Request("GET", "/healthz"))
    assert (status, body) == (503, b"unhealthy: the loop's timers are 15 s late\n")
    harness.advance(1)  # they run again
    assert admin.answer(Request("GET", "/healthz"))[0] == 200
