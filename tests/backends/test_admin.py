"""The admin endpoint (``--admin-port``) on every backend, over real sockets:
the metrics follow a real conversation, health and readiness answer, bad
requests get their status, and admin clients cannot hurt the chat's users."""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reactor.admin import endpoint
from reactor.admin.http import MAX_HEAD
from reactor.backends.base import Server
from reactor.logs import DroppingQueueHandler
from tests.admin_support import Reply, exchange, get, parse_exposition, read_reply, scrape
from tests.backends.test_tls import (
    GARBAGE,
    NO_FLOOD_CONTROL,
    Certs,
    MiB,
    TLSClient,
    client_hello,
    log_in,
    tls_server,
)
from tests.faults import Drain, client_pool
from tests.support import Clients, LineClient, running_server, wait_until


@pytest.fixture
def server(backend: str) -> Iterator[Server]:
    with running_server(backend, admin_port=0) as server:
        yield server


def admin(server: Server) -> int:
    port = server.admin_port
    assert port is not None
    return port


def test_the_metrics_count_what_users_do(server: Server) -> None:
    port = admin(server)
    before = scrape(port)
    assert before["reactor_users_online"] == 0
    assert before["reactor_logins_total"] == 0
    with Clients(server.port) as clients:
        alice, bob = clients.login("Alice"), clients.login("Bob")
        alice.read_until(lambda line: line == "<User Bob is online.>")
        alice.send('chat Bob "hi"')
        bob.expect('<Message from Alice: "hi">')
        alice.expect("<To Bob> hi")
        alice.send('broadcast "all"')
        bob.expect('<Broadcast from Alice: "all">')
        alice.expect("<To everyone> all")
        alice.send('chat Nobody "lost"')
        alice.expect("<User Nobody does not exist.>")
        now = scrape(port)
        assert now["reactor_users_online"] == 2
        assert now["reactor_connections"] == 2
        assert now["reactor_logins_total"] == 2
        assert now["reactor_connections_accepted_total"] == 2
        assert now['reactor_messages_received_total{kind="direct"}'] == 2
        assert now['reactor_messages_received_total{kind="broadcast"}'] == 1
        assert now['reactor_deliveries_total{kind="direct"}'] == 1
        assert now['reactor_deliveries_total{kind="broadcast"}'] == 1
        assert now["reactor_direct_not_delivered_total"] == 1
        assert now["reactor_received_bytes_total"] > 0
        assert now["reactor_sent_bytes_total"] > now["reactor_received_bytes_total"]
        bob.send("bye")
        bob.expect_closed()

        def bob_gone() -> bool:
            seen = scrape(port)
            return (seen["reactor_users_online"] == 1
                    and seen['reactor_connections_closed_total{reason="bye"}'] == 1)

        wait_until(bob_gone, message="Bob's bye counted")
    with LineClient(server.port) as eve:
        eve.send("not a name!")
        eve.read_line()
        assert scrape(port)['reactor_login_refusals_total{reason="invalid_name"}'] == 1


def test_lines_are_counted_by_command_and_refused_lines_under_one_label(
        server: Server) -> None:
    port = admin(server)
    with Clients(server.port) as clients:
        alice = clients.login("Alice")
        for line in ("users", "help", "frobnicate now", "chat", "", 'chat Alice "sync"'):
            alice.send(line)
        alice.read_until(lambda line: line == '<Message from Alice: "sync">')
        seen = scrape(port)
    assert seen['reactor_lines_total{command="chat"}'] == 1
    assert seen['reactor_lines_total{command="users"}'] == 1
    assert seen['reactor_lines_total{command="help"}'] == 1
    assert seen['reactor_lines_total{command="invalid"}'] == 2  # the blank line is no command
    assert seen['reactor_lines_total{command="bans"}'] == 0  # every command, from the start
    assert not any("frobnicate" in key for key in seen)


def test_direct_message_handoffs_are_timed_in_a_histogram(server: Server) -> None:
    port = admin(server)
    family = "reactor_direct_handoff_seconds"
    assert scrape(port)[f"{family}_count"] == 0
    with Clients(server.port) as clients:
        alice, bob = clients.login("Alice"), clients.login("Bob")
        alice.read_until(lambda line: line == "<User Bob is online.>")
        for number in range(3):
            alice.send(f'chat Bob "hi {number}"')
            alice.expect(f"<To Bob> hi {number}")
            bob.expect(f'<Message from Alice: "hi {number}">')
        alice.send('chat Nobody "lost"')  # not handed to anyone: not timed
        alice.expect("<User Nobody does not exist.>")
        seen = scrape(port)
    buckets = [value for key, value in seen.items() if key.startswith(f"{family}_bucket")]
    assert buckets == sorted(buckets), "cumulative"
    assert seen[f'{family}_bucket{{le="+Inf"}}'] == seen[f"{family}_count"] == 3
    assert seen[f"{family}_count"] == seen['reactor_deliveries_total{kind="direct"}']
    assert 0 <= seen[f"{family}_sum"] < 3 * 5.0  # (below the largest finite bound each)


def test_log_lines_dropped_by_the_bounded_log_queue_are_counted(server: Server) -> None:
    port = admin(server)
    assert scrape(port)["reactor_log_lines_dropped_total"] == 0
    full = DroppingQueueHandler(queue.SimpleQueue(), bound=0)  # a queue with no room
    logging.getLogger().addHandler(full)
    try:
        with LineClient(server.port) as eve:
            eve.send("not a name!")  # logged by the server, at warning or below
            eve.read_line()
        logging.getLogger("reactor").warning("one more line for a full queue")
        assert scrape(port)["reactor_log_lines_dropped_total"] == full.dropped_total >= 1
    finally:
        logging.getLogger().removeHandler(full)


def test_tls_handshakes_are_counted_completed_and_failed(backend: str, tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    with tls_server(backend, certs, admin_port=0) as server:
        port, tls_port = admin(server), server.tls_port
        assert tls_port is not None
        with TLSClient(tls_port, certs.client_context()) as alice:
            log_in(alice, "Alice")
        with LineClient(tls_port) as plain:  # plaintext on the TLS port
            plain.send_raw(GARBAGE["an HTTP request"])
            plain.expect_closed()
        with socket.create_connection(("127.0.0.1", tls_port)) as gone:
            gone.sendall(client_hello()[:20])  # and gone mid-handshake: neither

        def counted() -> bool:
            seen = scrape(port)
            return (seen['reactor_tls_handshakes_total{outcome="completed"}'] == 1
                    and seen['reactor_tls_handshakes_total{outcome="failed"}'] == 1
                    and seen["reactor_connections"] == 0)

        wait_until(counted, message="one handshake completed, one failed")


def test_health_and_readiness_answer_and_head_has_no_body(server: Server) -> None:
    port = admin(server)
    health = get(port, "/healthz")
    assert (health.status, health.text) == (200, "ok\n")
    assert health.headers["connection"] == "close"
    ready = get(port, "/readyz?verbose")  # a query string is ignored
    assert (ready.status, ready.text) == (200, "ready\n")
    head = get(port, "/metrics", "HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) > 0
    assert scrape(port)["reactor_ready"] == 1


def test_healthz_is_answered_by_the_chat_s_own_loop_so_a_wedged_one_fails_it(
        server: Server) -> None:
    port = admin(server)
    release = threading.Event()
    wedged = threading.Event()

    def wedge() -> None:
        wedged.set()
        release.wait(30)

    # On the chat thread (select, asyncio), or under the chat lock (threads:
    # the helper thread runs it itself, holding the lock).
    helper = threading.Thread(target=server.call_soon_threadsafe, args=(wedge,))
    helper.start()
    try:
        assert wedged.wait(10)
        with socket.create_connection(("127.0.0.1", port)) as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            probe.settimeout(0.5)  # a probe's deadline: no answer while wedged
            with pytest.raises(TimeoutError):
                probe.recv(100)
            release.set()
            probe.settimeout(10)
            reply = read_reply(probe)
        assert (reply.status, reply.text) == (200, "ok\n")
    finally:
        release.set()
        helper.join(10)


def test_the_metrics_are_the_text_format_that_prometheus_reads(server: Server) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    text = get(admin(server), "/metrics").text
    families = {family.name: family for family in parser.text_string_to_metric_families(text)}
    # (The parser names a counter family without its _total.)
    assert families["reactor_logins"].type == "counter"
    assert families["reactor_connections"].type == "gauge"
    assert families["reactor_direct_handoff_seconds"].type == "histogram"
    assert len(parse_exposition(text)) == sum(len(f.samples) for f in families.values())


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"\x16\x03\x01\x02\x00\x01\r\n\r\n", 400),
    (b"\xff\xfe GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics\r\n\r\n", 400),
    (b"GET metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\n", 400),  # then the end of input
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"DELETE /readyz HTTP/1.1\r\n\r\n", 405),
    (b"GET /admin HTTP/1.1\r\n\r\n", 404),
    (b"GET / HTTP/1.0\n\n", 404),
    (b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
], ids=["tls-hello", "not-ascii", "no-version", "no-slash", "http2", "bad-header", "cut-short", "post",
        "delete", "unknown-path", "root", "huge-head"])
def test_a_bad_request_gets_its_status_and_the_server_carries_on(
        server: Server, request_bytes: bytes, status: int) -> None:
    port = admin(server)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes)
        if status == 400 and not request_bytes.endswith(b"\n\n"):
            sock.shutdown(socket.SHUT_WR)
        reply = read_reply(sock)
    assert reply.status == status, reply
    if status == 405:
        assert reply.headers["allow"] == "GET, HEAD"
    assert get(port, "/healthz").status == 200
    assert scrape(port)[f'reactor_admin_requests_total{{status="{status}"}}'] >= 1


def test_a_connection_that_says_nothing_gets_nothing(server: Server) -> None:
    # As a TCP health check does: connect, close.
    port = admin(server)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        assert sock.recv(100) == b""
    assert get(port, "/healthz").status == 200
    assert 'reactor_admin_requests_total{status="400"}' not in scrape(port)


def test_slow_and_idle_admin_clients_are_bounded_and_chat_users_never_wait_for_them(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint, "REQUEST_TIMEOUT", 0.5)
    port = admin(server)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(endpoint.MAX_CONNECTIONS)]
    try:
        idle[0].sendall(b"GET /metr")  # a request that never ends
        # Every admin slot is taken: the next is refused at once ...
        busy = get(port, "/healthz")
        assert (busy.status, busy.text) == (503, "too many admin connections\n")
        # ... while the chat serves its users as ever.
        with Clients(server.port) as clients:
            alice = clients.login("Alice")
            alice.send('chat Alice "still here"')
            alice.expect("<To Alice> still here", '<Message from Alice: "still here">')
        # The slow ones are cut once their time is up, with a 408.
        for sock in idle:
            sock.settimeout(10)
            assert read_reply(sock).status == 408
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: get(port, "/healthz").status == 200, message="the slots freed")


def test_the_admin_port_is_off_unless_asked_for(backend: str) -> None:
    with running_server(backend) as server:
        assert server.admin_port is None
        assert [listener.port for listener in server.listeners] == [server.port]


def test_a_stopped_server_closes_its_admin_connections(backend: str) -> None:
    with running_server(backend, admin_port=0) as server:
        port = admin(server)
        waiting = socket.create_connection(("127.0.0.1", port))
        waiting.sendall(b"GET /healthz HTTP/1.1\r\n")  # not finished
        assert exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n").status == 200
    waiting.settimeout(10)
    try:
        assert waiting.recv(100) == b""  # closed by the shutdown, not left open
    except ConnectionResetError:
        pass
    finally:
        waiting.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_while_the_users_go_readyz_says_shutting_down_and_healthz_still_answers(
        backend: str) -> None:
    # Bob reads nothing, with more owed to him than the kernel holds: the
    # shutdown notice waits behind it, so the drain lasts until he goes.
    with running_server(backend, admin_port=0, flood=NO_FLOOD_CONTROL,
                        output_limit=16 * MiB, close_linger=60) as server, \
            client_pool(server.port) as pool:
        port = admin(server)
        bob = pool.login("Bob")
        alice = pool.login("Alice")
        alice_lines = Drain(alice.sock, keep=lambda line: line.startswith(b"<To"))
        alice.send_raw((b'broadcast "' + b"q" * 3000 + b'"\n') * 2000)
        alice_lines.wait_for(lambda d: len(d.kept()) == 2000, timeout=30,
                             message="all the broadcasts sent")
        alice_lines.stop()
        assert get(port, "/readyz").status == 200

        server.stop()

        def readiness() -> Reply | None:
            try:
                return get(port, "/readyz")
            except OSError:
                return None  # (refused or reset: what a probe heard before)

        wait_until(lambda: (reply := readiness()) is not None and reply.status == 503,
                   message="/readyz answering 503 while the users go")
        assert get(port, "/readyz").text == "not ready: shutting down\n"
        assert get(port, "/healthz").status == 200  # the loop is alive
        assert scrape(port)["reactor_ready"] == 0
        bob.sock.close()  # the last user gone: the server stops (the with's join)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
