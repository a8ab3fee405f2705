"""What an attacker on loopback found (issue 13), each as a reproduction, on every backend.

Readers that read everything are never cut off; an echoed message is never
lost; nothing a client sends too fast is dropped, it is read later; a thread
that cannot start leaves no ghost; a closed connection is freed at once; all
queues together stay within a budget; and a user who half-closes leaves at
once.  Timings are never asserted here: latency under flood is a benchmark.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import socket
import threading
import weakref
from dataclasses import replace

import pytest

from reactor.flow import FloodLimits
from tests.faults import Drain, client_pool, raise_own_open_file_limit, read_all_until_closed
from tests.support import (
    DEFAULT_TIMEOUT,
    Clients,
    LineClient,
    a_flooder_is_metered_while_others_chat,
    running_server,
    wait_until,
)

KiB = 1024
MiB = 1024 * KiB
NO_FLOOD_CONTROL = FloodLimits(enabled=False)


@pytest.fixture(autouse=True, scope="module")
def enough_descriptors() -> None:
    raise_own_open_file_limit(4096)


def _read_lines_until(client: LineClient, count: int, timeout: float = 30) -> list[bytes]:
    lines = []
    for _ in range(count):
        lines.append(client.read_line_bytes(timeout))
    return lines


# -- 1. readers are not cut off for what one pass queued -----------------------------


def test_users_asked_150_times_in_one_write_is_answered_150_times(backend: str) -> None:
    """With many users online each ``users`` reply is large; asked 150 times in
    one write, the asker's replies pass the output limit many times over.  A
    client that reads is never cut off: its next commands wait until it has
    read (asyncio's write high-water mark), nothing is dropped."""
    names = [f"user{index:04d}" + "x" * 23 for index in range(200)]  # 31 characters
    with running_server(backend, output_limit=256 * KiB, output_hard_limit=512 * KiB,
                        flood=NO_FLOOD_CONTROL, max_clients=300) as server, \
            client_pool(server.port) as pool:
        crowd = [pool.connect() for _ in names]
        for client, name in zip(crowd, names, strict=True):
            client.send(name)
        wait_until(lambda: len(server.chat.whiteboard) == len(names), message="the crowd")
        asker = pool.connect()
        asker.send("Asker")
        asker.expect("<User Asker is online.>")
        asker.send_raw(b"users\n" * 150)  # ~1 MB of replies, 4x the soft limit
        replies = _read_lines_until(asker, 150)
        assert all(line.startswith(b"<Online users: ") for line in replies)
        assert len(set(replies)) == 1 and len(replies[0]) > 6 * KiB
        asker.send("users")  # still online, still answered
        assert asker.read_line().startswith("<Online users: ")


def test_a_burst_of_big_broadcasts_in_one_pass_cuts_off_no_reader(backend: str) -> None:
    """64 users each broadcast ~8 KB (4,000 backslashes, doubled on the wire)
    with their newlines arriving together: every reader is owed ~500 KB at
    once, twice the soft limit.  Everybody reads, so nobody is cut off and
    everybody gets all 63 broadcasts."""
    count = 64
    with running_server(backend, output_limit=256 * KiB, output_hard_limit=1 * MiB,
                        flood=NO_FLOOD_CONTROL) as server, client_pool(server.port) as pool:
        users = [pool.login(f"u{index}", expect_online=False) for index in range(count)]
        wait_until(lambda: len(server.chat.whiteboard) == count, message="everyone online")
        body = "\\\\" * 2000  # each \\ is one backslash, sent back as \\
        for user in users:
            user.send_raw(f'broadcast "{body}"'.encode())
        for user in users:
            user.send_raw(b"\n")
        received = {user: 0 for user in users}
        offline = []
        for user in users:
            while received[user] < count - 1:
                line = user.read_line_bytes(30)
                if line.startswith(b"<Broadcast from "):
                    received[user] += 1
                elif line.endswith(b" is offline.>\n"):
                    offline.append(line)
        assert not offline, offline[:3]
        for user in users:
            user.send("users")
            assert user.read_until(lambda line: line.startswith("<Online users: "))


# -- 2. an echoed message is never lost ---------------------------------------------


@pytest.mark.parametrize("his_own_input", ["read", pytest.param("unread", marks=pytest.mark.slow)])
def test_every_echoed_message_reaches_a_recipient_who_stops_reading_and_is_cut(
    backend: str, his_own_input: str,
) -> None:
    """Bob stops reading.  Alice pipelines numbered messages to him: those his
    connection takes are echoed ``<To Bob>``; one that waits too long is taken
    back and answered "not delivered", and so are the rest until Bob reads.
    Then Carol's broadcasts push Bob past his hard limit and he is cut off.
    Bob, reading to the end, has every message Alice saw echoed (README:
    what the kernel has accepted still reaches him) -- also when he had
    sent input the server had not read (``unread``: his connection paused,
    not reading his own replies), which a close would turn into a reset
    that throws away what the kernel had accepted for him."""
    with running_server(backend, output_limit=256 * KiB, output_hard_limit=512 * KiB,
                        delivery_timeout=0.5, flood=NO_FLOOD_CONTROL) as server, \
            client_pool(server.port) as pool:
        bob = pool.login("Bob")
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        alice, carol = pool.login("Alice"), pool.login("Carol")
        alice_lines = Drain(alice.sock, keep=lambda line: line.startswith(b"<"))
        Drain(carol.sock)
        total = 3000  # 6 MB: more than the kernel buffers on both sides hold
        padding = "p" * 2000
        alice.send_raw("".join(f'chat Bob "m{i} {padding}"\n' for i in range(total)).encode())

        def answers() -> tuple[list[bytes], int]:
            """Alice's replies about Bob, and how many "offline" replies came
            after Bob was cut (one "offline" line is the presence notice)."""
            kept = alice_lines.kept()
            replies = [line for line in kept
                       if line.startswith((b"<To Bob>", b"<Message to Bob not delivered"))]
            return replies, max(0, kept.count(b"<User Bob is offline.>") - 1)

        alice_lines.wait_for(lambda d: len(answers()[0]) + answers()[1] == total, timeout=30,
                             message="an answer to every message")
        replies, after_the_cut = answers()
        echoed = [int(m) for m in re.findall(rb"<To Bob> m(\d+) ", b"\n".join(replies))]
        refused = [line for line in replies if line.startswith(b"<Message to Bob not")]
        assert refused or after_the_cut, "Bob's buffers took everything: no message waited"
        # Taken back while Bob stays; or, if a message was stuck half-sent,
        # Bob is cut off as a slow consumer and the rest are answered so.
        assert set(refused) <= {
            b"<Message to Bob not delivered: Bob is not reading.>",
            b"<Message to Bob not delivered: Bob left before it could be sent.>",
        }
        assert echoed == list(range(len(echoed)))  # in order, none missing in between
        if his_own_input == "unread":
            assert not after_the_cut, "Bob was cut off too soon"
            # Bob pipelines commands and reads none of the replies: his
            # connection pauses, and the rest of his input stays unread in
            # the server's kernel.
            bob.sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                bob.sock.send(b"help\n" * 100_000)
            found = server.chat.whiteboard.lookup("Bob")
            assert found is not None
            wait_until(lambda: found[1]._reading_paused,  # type: ignore[attr-defined]
                       message="Bob's input paused")
        # Carol pushes Bob over his hard limit: he is cut off.
        big = "c" * 3000
        while b"<User Bob is offline.>" not in alice_lines.kept():
            carol.send_raw(f'broadcast "{big}"\n'.encode() * 50)
            alice_lines.wait_for(lambda d: len(d.kept()) > 0, message="Alice's lines")
        rest = read_all_until_closed([bob.sock], timeout=30)[bob.sock]
        # Whole lines only: a cut can end the stream in the middle of one.
        delivered = [int(m) for m in re.findall(rb'<Message from Alice: "m(\d+) p+">\n', rest)]
        lost = sorted(set(echoed) - set(delivered))
        assert not lost, f"{len(lost)} echoed but never delivered: {lost[:10]}"
        assert len(delivered) == len(set(delivered)), "a message arrived twice"
        assert not set(delivered) - set(echoed), "a message said not delivered arrived"
        alice_lines.stop()


@pytest.mark.slow
def test_a_recipient_marked_not_reading_who_reads_gets_messages_again(backend: str) -> None:
    """Bob stops reading; Alice's pipelined messages fill his buffers until
    one waits past the delivery timeout, is taken back, and the rest are
    refused at once, "Bob is not reading".  Then Bob reads everything: the
    next message reaches him.  The mark is cleared when Bob's queue drains,
    so a backend must say so also when a withdraw emptied the queue while
    the kernel was full and the socket then takes more (no send empties
    the queue then), or Bob is refused for good."""
    with running_server(backend, delivery_timeout=0.3, flood=NO_FLOOD_CONTROL) as server:
        bob = LineClient(server.port)
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
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
        # Bob reads everything there is, and goes on reading.
        after = b'<Message from Alice: "after reading">'
        bob_lines = Drain(bob.sock, keep=lambda line: line == after)
        wait_until(lambda: not any(c.not_reading for c in server.chat.connections), timeout=30,
                   message="Bob's queue read empty")
        alice.send('chat Bob "after reading"')
        alice_lines.wait_for(lambda d: len(answers()) == total + 1, timeout=10,
                             message="the answer")
        assert answers()[-1] == b"<To Bob> after reading"
        bob_lines.wait_for(lambda d: d.kept() == [after], message="the message")
        alice_lines.stop()
        bob_lines.stop()
        bob.close()


# -- 4. flood control: too fast is read later, never dropped ------------------------


@pytest.mark.slow
def test_lines_over_the_rate_wait_their_turn_and_none_is_dropped(backend: str) -> None:
    limits = FloodLimits(lines_per_second=200, lines_burst=20)
    with running_server(backend, flood=limits) as server:
        clients = Clients(server.port)
        try:
            flooder, alice, bob = (clients.login(n) for n in ("Flooder", "Alice", "Bob"))
            alice.expect("<User Bob is online.>")
            a_flooder_is_metered_while_others_chat(flooder, alice, bob)
        finally:
            clients.close_all()


def test_a_broadcast_flood_is_metered_by_its_recipients(backend: str) -> None:
    """Each broadcast costs one delivery per recipient: with 20 deliveries a
    second and 4 recipients, 12 broadcasts all arrive, in order, metered."""
    limits = FloodLimits(deliveries_per_second=100, deliveries_burst=8)
    with running_server(backend, flood=limits) as server:
        clients = Clients(server.port)
        try:
            flooder = clients.login("Flooder")
            others = [clients.login(f"R{index}") for index in range(4)]
            flooder.read_until(lambda line: line == "<User R3 is online.>")
            flooder.send_raw(b"".join(f'broadcast "b{i}"\n'.encode() for i in range(12)))
            for other in others:
                got = other.read_until(lambda line: line == '<Broadcast from Flooder: "b11">')
                assert [x for x in got if x.startswith("<Broadcast")] == [
                    f'<Broadcast from Flooder: "b{i}">' for i in range(12)]
        finally:
            clients.close_all()


def test_logins_from_one_address_are_metered_not_refused(backend: str) -> None:
    limits = FloodLimits(logins_per_second=20, logins_burst=3)
    with running_server(backend, flood=limits) as server:
        clients = Clients(server.port)
        try:
            users = [clients.login(f"user{index}", expect_online=False) for index in range(8)]
            for index, user in enumerate(users):
                user.read_until(lambda line, i=index: line == f"<User user{i} is online.>")
        finally:
            clients.close_all()


# -- 7. a writer thread that cannot start leaves no ghost ---------------------------


def test_a_thread_that_cannot_start_leaves_no_ghost(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of threads, a connection that needs a writer is closed, announced
    and its name freed; on backends without writer threads nothing changes.
    Either way: no user stays listed whose messages go nowhere."""
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.startswith("writer-"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    with running_server(backend, flood=NO_FLOOD_CONTROL) as server, \
            client_pool(server.port) as pool:
        bob = pool.login("Bob")
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        alice = pool.login("Alice")
        alice_lines = Drain(alice.sock, keep=lambda line: line.startswith(b"<"))
        monkeypatch.setattr(threading.Thread, "start", start)
        alice.send_raw(b'broadcast "' + b"z" * 3000 + b'"\n' * 1)
        alice.send_raw((b'broadcast "' + b"z" * 3000 + b'"\n') * 200)
        alice.send("users")
        alice_lines.wait_for(lambda d: any(x.startswith(b"<Online users") for x in d.kept()),
                             timeout=30, message="the users reply")
        monkeypatch.setattr(threading.Thread, "start", real_start)
        listed = next(x for x in alice_lines.kept() if x.startswith(b"<Online users"))
        bob_gone = b"<User Bob is offline.>" in alice_lines.kept()
        assert (b"Bob" in listed) != bob_gone, (listed, bob_gone)
        if bob_gone:
            again = pool.login("Bob")  # the name is free
            again.send("users")
            again.expect("<Online users: Alice, Bob>")
        alice_lines.stop()


# -- 8. a closed connection is freed at once ----------------------------------------


def test_a_closed_connection_is_freed_at_once_not_when_its_login_deadline_passes(
    backend: str,
) -> None:
    with running_server(backend, login_timeout=3600) as server:
        refs = []
        for _ in range(20):
            client = LineClient(server.port)
            client.send_raw(b"x" * 1000)  # a partial line held for it
            wait_until(lambda: server.chat.connection_count == 1, message="the connection")
            (connection,) = list(server.chat.connections)
            refs.append(weakref.ref(connection))
            del connection
            client.close()
            wait_until(lambda: server.chat.connection_count == 0, message="the close")

        def all_freed() -> bool:
            gc.collect()
            return all(ref() is None for ref in refs)

        wait_until(all_freed, message="closed connections to be freed")


# -- 9. all queues together stay within a budget ------------------------------------


@pytest.mark.slow
def test_past_the_output_budget_the_largest_queues_are_cut(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="reactor")
    with running_server(backend, output_limit=64 * MiB, output_hard_limit=64 * MiB,
                        output_budget=2 * MiB, flood=NO_FLOOD_CONTROL) as server, \
            client_pool(server.port) as pool:
        sleepers = [pool.login(f"Sleeper{index}") for index in range(4)]
        for sleeper in sleepers:
            sleeper.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        alice = pool.login("Alice")
        alice_lines = Drain(alice.sock, keep=lambda line: line.endswith(b"is offline.>"))
        big = b'broadcast "' + b"b" * 3000 + b'"\n'
        while not alice_lines.kept():
            alice.send_raw(big * 100)
            alice_lines.wait_for(lambda d: True)
        alice_lines.wait_for(lambda d: len(d.kept()) >= 1, message="a cut")
        assert any("over the budget" in r.getMessage() for r in caplog.records)
        assert any("slow consumer: cut to keep the server's output budget" in r.getMessage()
                   for r in caplog.records)
        alice_lines.stop()


def test_a_broadcast_burst_over_the_budget_slows_the_senders_and_cuts_no_reader(
    backend: str,
) -> None:
    """Five readers, and a crowd that each broadcasts 30,000 backslashes
    (escaped to 60 KB per recipient) and never reads: ten times the output
    budget.  The budget is kept by handling the crowd's broadcasts more
    slowly and by cutting those who do not read -- never a reader: the
    readers stay, hear the same broadcasts in the same order, and hear the
    whole crowd leave and a reader's last broadcast."""
    crowd_size = 100
    budget = 64 * MiB
    with running_server(backend, output_budget=budget, max_line=64 * KiB,
                        flood=NO_FLOOD_CONTROL, max_clients=crowd_size + 16) as server, \
            client_pool(server.port) as pool:
        readers = [pool.login(f"Reader{index}") for index in range(5)]
        heard = [Drain(reader.sock, keep=lambda line: line.startswith(
                     (b"<Broadcast from ", b"<Disconnected", b"<User Crowd")))
                 for reader in readers]
        most_queued = 0
        sampling = threading.Event()

        def sample() -> None:  # all queues together, as the test sees them
            nonlocal most_queued
            while not sampling.is_set():
                with contextlib.suppress(RuntimeError):  # the set changed meanwhile
                    total = sum(c.transport.queued for c in list(server.chat.connections))
                    most_queued = max(most_queued, total)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        crowd = []
        try:
            for index in range(crowd_size):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KiB)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(b"Crowd%d\n" % index)
                crowd.append(sock)
            burst = b"broadcast " + b"\\" * 30000 + b"\n"
            for sock in crowd:
                sock.sendall(burst)
            everyone_online = [b"<User Crowd%d is online.>" % i for i in range(crowd_size)]
            heard[0].wait_for(lambda d: set(everyone_online) <= set(d.kept()), timeout=30,
                              message="the crowd online")
            heard[0].wait_for(lambda d: sum(line.startswith(b"<Broadcast from Crowd")
                                            for line in d.kept()) >= 10,
                              timeout=30, message="the burst under way")
            for sock in crowd:
                sock.close()
            gone = {b"<User Crowd%d is offline.>" % i for i in range(crowd_size)}
            for drain in heard:
                drain.wait_for(lambda d: gone <= set(d.kept()) or d.eof.is_set(), timeout=60,
                               message="the crowd gone")
            readers[0].send_raw(b"broadcast the end\n")
            for drain in heard[1:]:
                drain.wait_for(lambda d: b"<Broadcast from Reader0: \"the end\">" in d.kept()
                               or d.eof.is_set(), timeout=30, message="the last broadcast")
            for index, drain in enumerate(heard):
                assert not drain.eof.is_set(), f"Reader{index} was cut off"
                assert not any(line.startswith(b"<Disconnected") for line in drain.kept())
            sequences = [[line.split(b":", 1)[0] for line in drain.kept()
                          if line.startswith(b"<Broadcast from Crowd")] for drain in heard]
            assert all(sequence == sequences[0] for sequence in sequences[1:])
            assert most_queued <= budget
            for drain in heard:
                drain.stop()
        finally:
            sampling.set()
            sampler.join()
            for sock in crowd:
                sock.close()


# -- 10. a user who half-closes leaves at once --------------------------------------


def test_a_half_closed_client_leaves_at_once_while_its_output_drains(backend: str) -> None:
    with running_server(backend, flood=NO_FLOOD_CONTROL, output_limit=16 * MiB,
                        close_linger=30) as server, \
            client_pool(server.port) as pool:
        bob = pool.login("Bob")
        alice = pool.login("Alice")
        alice_lines = Drain(alice.sock, keep=lambda line: line.startswith((b"<User", b"<To")))
        # ~6 MB owed to Bob: more than the kernel's buffers hold for him.
        alice.send_raw((b'broadcast "' + b"q" * 3000 + b'"\n') * 2000)
        alice_lines.wait_for(lambda d: len(d.kept()) == 2000, timeout=30,
                             message="all the broadcasts sent")
        assert any(c.transport.queued for c in list(server.chat.connections)
                   if c.username == "Bob"), "Bob's kernel buffers took it all: nothing queued"
        bob.sock.shutdown(socket.SHUT_WR)
        alice_lines.wait_for(lambda d: b"<User Bob is offline.>" in d.kept(),
                             message="Bob's offline notice while his output still drains")
        again = pool.login("Bob")  # the name is free before the old connection is gone
        again.send("users")
        again.read_until(lambda line: line == "<Online users: Alice, Bob>")
        rest = read_all_until_closed([bob.sock], timeout=DEFAULT_TIMEOUT * 3)[bob.sock]
        assert rest.count(b"<Broadcast from Alice: ") == 2000  # and he got all of it
        alice_lines.stop()


def test_the_default_limits_are_consistent() -> None:
    from reactor import ServerConfig

    config = ServerConfig()
    assert config.output_limit <= config.output_hard_limit <= config.output_budget
    assert replace(config, flood=NO_FLOOD_CONTROL).flood.enabled is False
