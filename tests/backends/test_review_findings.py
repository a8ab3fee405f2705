"""Regression tests for bugs found in review (each names what was wrong)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from reactor import make_server
from reactor.backends.base import Server
from reactor.connection import Connection
from reactor.outbuf import Entry
from tests.fake_transport import DeferredWhiteboard
from tests.support import TEST_CONFIG, LineClient, running_server, wait_until


def _serve(server: Server) -> Iterator[Server]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=15)
        assert not thread.is_alive(), "server did not stop"


def test_end_of_input_is_reported_once_while_a_line_waits_for_its_answer(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sends its name and half-closes while the claim is still being
    decided (a shared whiteboard answers later).  End of input must reach the
    connection once.  The select backend kept the socket registered for
    reading after EOF, so every pass recv()'d b"" again: a busy loop (100 %
    CPU) for as long as the answer took -- up to --delivery-timeout for a
    direct message to a slow reader followed by a half-close."""
    ends: list[Connection] = []
    original = Connection.data_received

    def counting(self: Connection, data: bytes) -> None:
        if not data:
            ends.append(self)
        original(self, data)

    monkeypatch.setattr(Connection, "data_received", counting)
    whiteboard = DeferredWhiteboard()  # never answers here
    server = make_server(replace(TEST_CONFIG), backend, roster=whiteboard)
    for _ in _serve(server):
        client = LineClient(server.port)
        client.send_raw(b"Alice\n")
        client.sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: len(whiteboard.waiting) == 1, message="the claim")
        wait_until(lambda: len(ends) >= 1, message="end of input")
        time.sleep(0.5)  # a spinning loop would report it thousands of times by now
        assert len(ends) == 1, f"end of input reported {len(ends)} times"
        client.close()


@pytest.mark.slow
def test_a_recipient_marked_not_reading_who_reads_gets_messages_again(backend: str) -> None:
    """Bob stops reading; Alice's pipelined messages fill his buffers until
    one waits past the delivery timeout, is taken back, and the rest are
    refused at once, "Bob is not reading".  Then Bob reads everything: the
    next message must reach him.  On select and threads it was refused for
    good whenever the withdrawn message had been all that was queued (the
    kernel full, nothing of ours waiting, which is common): the mark is
    cleared by output_drained, and those backends reported it only when a
    send emptied the queue, never when the socket took more after a
    withdraw had emptied it."""
    from tests.faults import Drain

    kib = 1024
    with running_server(backend, delivery_timeout=0.3,
                        flood=replace(TEST_CONFIG.flood, enabled=False)) as server:
        bob = LineClient(server.port)
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * kib)
        bob.send("Bob")
        bob.expect("<User Bob is online.>")
        alice = LineClient(server.port)
        alice.send("Alice")
        alice.expect("<User Alice is online.>")
        alice_lines = Drain(alice.sock, keep=lambda line: line.startswith(b"<"))
        refused = b"<Message to Bob not delivered: Bob is not reading.>"

        def answers() -> list[bytes]:
            return [line for line in alice_lines.kept()
                    if line.startswith((b"<To Bob>", b"<Message to Bob not", b"<User Bob is off"))]

        padding = "p" * 2000
        sent = 0
        while refused not in alice_lines.kept():
            if b"<User Bob is offline.>" in alice_lines.kept():
                break
            assert sent < 5000, "Bob's buffers took everything"
            alice.send_raw("".join(f'chat Bob "m{sent + i} {padding}"\n'
                                   for i in range(100)).encode())
            sent += 100
            target = sent - 100
            alice_lines.wait_for(lambda d, t=target: len(answers()) >= t, timeout=30,
                                 message="answers")
        total = sent
        alice_lines.wait_for(lambda d: len(answers()) >= total, timeout=30, message="all answers")
        assert b"<User Bob is offline.>" not in alice_lines.kept(), "Bob was cut off"
        # Bob reads everything there is.
        bob.sock.settimeout(1.0)
        try:
            while bob.sock.recv(1 << 20):
                pass
        except TimeoutError:
            pass
        alice.send('chat Bob "after reading"')
        alice_lines.wait_for(lambda d: len(answers()) == total + 1, timeout=10,
                             message="the answer")
        assert answers()[-1] == b"<To Bob> after reading"
        alice_lines.stop()
        bob.close()


def test_threads_withdraw_takes_the_send_lock() -> None:
    """The threads backend's writer thread reads and consumes the output queue
    under the transport's send lock (its sendmsg releases the GIL), but
    withdraw() -- the delivery timeout, on the timer thread -- removed the
    entry without it: a message could be sent and still reported "not
    delivered", and consume() then popped the wrong entries."""
    with running_server("threads") as server:
        client = LineClient(server.port)
        client.send("Alice")
        client.expect("<User Alice is online.>")
        transport = next(iter(server.chat.connections)).transport
        lock = transport._send_lock  # type: ignore[attr-defined]
        entry = Entry(b"x", lambda ok: None)
        done = threading.Event()
        with lock:
            worker = threading.Thread(target=lambda: (transport.withdraw(entry), done.set()))
            worker.start()
            assert not done.wait(0.3), "withdraw() ran while the writer held the send lock"
        assert done.wait(5)
        worker.join()
        client.close()


@pytest.mark.slow
def test_a_failing_server_timer_shuts_the_server_down_with_the_notice(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timer that belongs to no connection (the chat's housekeeping) raises:
    that is the loop's own failure -- shutdown notice, exit status 1.  On the
    threads backend the exception killed the timer thread instead: the server
    ran on with no timers at all (no login timeouts, no close lingers, no
    flood-control retries, no output limits), and exited 0."""
    from reactor.chat import ChatService

    with running_server(backend) as server:
        client = LineClient(server.port)
        client.send("Alice")
        client.expect("<User Alice is online.>")

        def buggy(self: ChatService) -> None:
            raise RuntimeError("planted in housekeeping")

        monkeypatch.setattr(ChatService, "_enforce_output_limits", buggy)
        client.expect("<Server is shutting down.>", timeout=5)
        client.expect_closed()
        wait_until(lambda: server.exit_status == 1, message="exit status 1")


def test_a_failure_while_sending_one_clients_queue_ends_only_that_client(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug met while moving Bob's queued output to the kernel is Bob's
    connection's failure (contract point 8: "its write"): Bob is cut and
    announced offline, the server carries on.  The threads backend's writer
    thread had no containment (the exception killed it silently, Bob stayed
    online with a queue nobody sent), and the asyncio backend's end-of-burst
    push ran as a bare loop callback (the whole server shut down)."""
    from reactor.outbuf import OutputBuffer

    with running_server(backend, flood=replace(TEST_CONFIG.flood, enabled=False),
                        output_limit=64 << 20, output_hard_limit=64 << 20) as server:
        alice = LineClient(server.port)
        alice.send("Alice")
        alice.expect("<User Alice is online.>")
        bob = LineClient(server.port)
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        bob.send("Bob")
        bob.expect("<User Bob is online.>")
        alice.expect("<User Bob is online.>")
        found = server.chat.whiteboard.lookup("Bob")
        assert found is not None
        bobs_queue = found[1].transport.output
        original = OutputBuffer.buffers

        # buffers(): what every backend asks of a queue for each send it tries
        # (consume() is only reached once the kernel takes something).
        def buggy(self: OutputBuffer) -> list:  # type: ignore[type-arg]
            if self is bobs_queue:
                raise RuntimeError("planted in Bob's output")
            return original(self)

        monkeypatch.setattr(OutputBuffer, "buffers", buggy)
        big = "b" * 3000
        offline = False
        for _ in range(80):  # up to 12 MB: more than the kernel buffers hold
            alice.send_raw(f'broadcast "{big}"\n'.encode() * 50)
            echoes = 0
            while echoes < 50:
                line = alice.read_line()
                echoes += line.startswith("<To everyone>")
                offline |= line == "<User Bob is offline.>"
            if offline:
                break
        assert offline, "Bob was never cut"
        alice.send("users")
        alice.read_until(lambda line: line == "<Online users: Alice>")
        assert server.exit_status == 0
        bob.close()
        alice.close()


@pytest.mark.slow
def test_echoed_messages_reach_a_cut_recipient_whose_own_input_was_unread(backend: str) -> None:
    """README: "What the kernel has accepted still reaches X if X reads, even
    after X is cut off", also when X had sent input the server had not read
    (X's connection paused, X not reading its own replies).  An abort whose
    close() leaves unread input makes the kernel send a reset and throw away
    what it had accepted for X and not yet transmitted: messages already
    echoed "<To X>" to their senders would be lost."""
    import re

    from tests.faults import Drain, client_pool, read_all_until_closed

    kib = 1024
    with running_server(backend, output_limit=256 * kib, output_hard_limit=512 * kib,
                        delivery_timeout=0.5,
                        flood=replace(TEST_CONFIG.flood, enabled=False)) as server, \
            client_pool(server.port) as pool:
        bob = pool.login("Bob")
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * kib)
        alice, carol = pool.login("Alice"), pool.login("Carol")
        found = server.chat.whiteboard.lookup("Bob")
        assert found is not None
        bobs = found[1]
        alice_lines = Drain(alice.sock, keep=lambda line: line.startswith(b"<"))
        Drain(carol.sock)
        padding = "p" * 2000
        total = 3000  # 6 MB: more than Bob's buffers take, so that some wait
        alice.send_raw("".join(f'chat Bob "m{i} {padding}"\n' for i in range(total)).encode())
        alice_lines.wait_for(
            lambda d: any(line.startswith((b"<Message to Bob not", b"<User Bob is offline"))
                          for line in d.kept()),
            timeout=30, message="a message to Bob refused")
        assert b"<User Bob is offline.>" not in alice_lines.kept(), "Bob was cut off too soon"
        # Now Bob pipelines commands and reads none of the replies: his
        # connection pauses, and the rest of his input stays unread in the
        # server's kernel.
        bob.sock.setblocking(False)
        try:
            bob.sock.send(b"help\n" * 100_000)
        except BlockingIOError:
            pass
        wait_until(lambda: bobs._reading_paused, message="Bob's input paused")
        big = "c" * 3000
        while b"<User Bob is offline.>" not in alice_lines.kept():
            carol.send_raw(f'broadcast "{big}"\n'.encode() * 50)
            time.sleep(0.05)
        echoed = [int(m) for m in re.findall(rb"<To Bob> m(\d+) ", b"\n".join(alice_lines.kept()))]
        assert echoed, "no message was echoed"
        rest = read_all_until_closed([bob.sock], timeout=30)[bob.sock]
        delivered = {int(m) for m in re.findall(rb'<Message from Alice: "m(\d+) p+">\n', rest)}
        lost = sorted(set(echoed) - delivered)
        assert not lost, f"{len(lost)} of {len(echoed)} echoed but never delivered: {lost[:5]}..."
        alice_lines.stop()


def test_a_rate_out_of_range_is_named_as_a_rate_not_in_seconds() -> None:
    """--line-rate 0 said "must be 0.1-1e+06 seconds": a rate is per second."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "reactor", "--line-rate", "0"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "must be 0.1-1e+06 per second, got 0" in result.stderr, result.stderr


@pytest.mark.slow
def test_each_read_hands_the_chat_at_most_16_kib(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, "work per client per turn": one read of at most 16 KiB, the
    bound on how long one flooding client holds the others up.  The asyncio
    backend read what asyncio's transport reads, up to 256 KiB at a time."""
    sizes: list[int] = []
    original = Connection.data_received

    def measuring(self: Connection, data: bytes) -> None:
        sizes.append(len(data))
        original(self, data)

    monkeypatch.setattr(Connection, "data_received", measuring)
    with running_server(backend, flood=replace(TEST_CONFIG.flood, enabled=False)) as server:
        client = LineClient(server.port)
        client.send("Alice")
        client.expect("<User Alice is online.>")
        # Blank lines: no replies, so nothing pauses the reading.
        # 1 MiB: many times what the kernel hands over in one read.
        client.send_raw(b"\n" * (1 << 20))
        client.send("users")
        client.expect("<Online users: Alice>", timeout=30)
        assert sum(sizes) >= 1 << 20
        assert max(sizes) <= 16 * 1024, f"a read of {max(sizes)} bytes"
        client.close()


def test_the_asyncio_backend_serves_on_uvloop() -> None:
    """--loop uvloop: connection_made asserted isinstance(transport,
    asyncio.Transport), which uvloop's transports are not, so the first
    client's connection failed the loop and shut the server down."""
    pytest.importorskip("uvloop")
    config = replace(TEST_CONFIG)
    server = make_server(config, "asyncio", loop="uvloop")
    for _ in _serve(server):
        alice = LineClient(server.port)
        alice.send("Alice")
        alice.expect("<User Alice is online.>")
        bob = LineClient(server.port)
        bob.send("Bob")
        bob.expect("<User Bob is online.>")
        alice.expect("<User Bob is online.>")
        alice.send('chat Bob "hi"')
        alice.expect("<To Bob> hi")
        bob.expect('<Message from Alice: "hi">')
        bob.send("bye")
        bob.expect("<User Bob is offline.>")
        bob.expect_closed()
        alice.expect("<User Bob is offline.>")
        assert server.exit_status == 0
        alice.close()
