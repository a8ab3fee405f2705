"""TLS, on every backend: real handshakes over sockets, certificates made by trustme.

The chat logic is the same on a TLS connection, so what is tested here is what
TLS adds or could break: the conversation and the plain port beside the TLS
one; the handoff promise (a ``<To Bob>`` echo means Bob's connection took the
message's ciphertext) and the limits, on a representative subset; peers that
stall the handshake, send garbage or plaintext; certificates checked at start
and reloaded on SIGHUP; and our client's ``--tls``, ``--ca`` and
``--insecure``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from reactor.backends.base import Server
from reactor.flow import FloodLimits
from tests.cli_support import cli_args, piped_client, run_cli, terminal
from tests.faults import REPO, Drain, client_pool, server_process
from tests.support import (
    DEFAULT_TIMEOUT,
    LineClient,
    a_flooder_is_metered_while_others_chat,
    running_server,
    send_a_burst_and_check_it,
    wait_until,
)

KiB = 1024
MiB = 1024 * KiB
NO_FLOOD_CONTROL = FloodLimits(enabled=False)


# -- certificates and clients -----------------------------------------------------


class Certs:
    """A CA and a server certificate for 127.0.0.1 and localhost, as files."""

    def __init__(self, directory: Path, name: str = "server") -> None:
        self.ca = trustme.CA()
        issued = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = directory / f"{name}.pem"
        self.key = directory / f"{name}.key"
        self.ca_file = directory / f"{name}-ca.pem"
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        issued.private_key_pem.write_to_path(str(self.key))
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


class TLSClient(LineClient):
    """A line client over TLS (a blocking SSLSocket, used from one thread)."""

    def __init__(self, port: int, context: ssl.SSLContext, host: str = "127.0.0.1",
                 source: str | None = None) -> None:
        super().__init__(port, host, source)
        self.sock = context.wrap_socket(self.sock, server_hostname=host)


@contextlib.contextmanager
def tls_server(backend: str, certs: Certs, **overrides: object) -> Iterator[Server]:
    """A server with a plain port (``server.port``) and a TLS one (``server.tls_port``)."""
    settings: dict[str, object] = {"tls_cert": str(certs.cert), "tls_key": str(certs.key),
                                   "tls_port": 0}
    settings.update(overrides)
    with running_server(backend, **settings) as server:
        yield server


def log_in(client: LineClient, name: str) -> LineClient:
    client.send(name)
    client.expect(f"<User {name} is online.>")
    return client


def client_hello() -> bytes:
    """The first flight of a real TLS client."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def tls_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("TLS ")]


# -- the conversation -----------------------------------------------------------------


def test_the_conversation_over_tls(backend: str, certs: Certs) -> None:
    """With a certificate and no TLS port, the main port speaks TLS."""
    context = certs.client_context()
    with running_server(backend, tls_cert=str(certs.cert), tls_key=str(certs.key)) as server:
        assert server.tls_port == server.port
        with TLSClient(server.port, context) as alice, TLSClient(server.port, context) as bob:
            assert alice.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[attr-defined]
            log_in(alice, "Alice")
            log_in(bob, "Bob")
            alice.expect("<User Bob is online.>")
            alice.send('chat Bob "hello over TLS"')
            alice.expect("<To Bob> hello over TLS")
            bob.expect('<Message from Alice: "hello over TLS">')
            bob.send("broadcast hi all")
            bob.expect("<To everyone> hi all")
            alice.expect('<Broadcast from Bob: "hi all">')
            alice.send("users")
            alice.expect("<Online users: Alice, Bob>")
            alice.send("bye")
            alice.expect("<User Alice is offline.>")
            assert alice.expect_closed() == b""
            bob.expect("<User Alice is offline.>")


@pytest.mark.slow
@pytest.mark.parametrize("every_nth_a_message", [0, 3], ids=["broadcasts", "mixed"])
def test_a_burst_over_tls_arrives_once_each_in_order(
    backend: str, certs: Certs, every_nth_a_message: int
) -> None:
    """As over plain TCP (test_commands): a burst in one write is batched
    into fewer records, and still nothing is lost, doubled or reordered."""
    with tls_server(backend, certs) as server:
        port = server.tls_port
        assert port is not None
        clients = [TLSClient(port, certs.client_context()) for _ in range(6)]
        try:
            sender = log_in(clients[0], "Sender")
            readers = {f"Reader{i}": log_in(client, f"Reader{i}")
                       for i, client in enumerate(clients[1:])}
            send_a_burst_and_check_it(sender, readers, every_nth_a_message)
        finally:
            for client in clients:
                client.close()


@pytest.mark.slow
def test_plain_and_tls_ports_side_by_side_are_one_chat(backend: str, certs: Certs) -> None:
    with tls_server(backend, certs) as server:
        assert server.tls_port not in (None, server.port)
        assert server.tls_port is not None
        with LineClient(server.port) as alice, \
                TLSClient(server.tls_port, certs.client_context()) as bob:
            log_in(alice, "Alice")
            log_in(bob, "Bob")
            alice.expect("<User Bob is online.>")
            alice.send('chat Bob "plain to TLS"')
            alice.expect("<To Bob> plain to TLS")
            bob.expect('<Message from Alice: "plain to TLS">')
            bob.send('chat Alice "TLS to plain"')
            bob.expect("<To Alice> TLS to plain")
            alice.expect('<Message from Bob: "TLS to plain">')
            # A plaintext client on the plain port is not asked for TLS.
            with LineClient(server.port) as carol:
                log_in(carol, "Carol")
                bob.expect("<User Carol is online.>")


# -- limits and the handoff promise over TLS ----------------------------------------


def test_an_overlong_line_over_tls_is_refused_without_harm(backend: str, certs: Certs) -> None:
    with tls_server(backend, certs, max_line=64) as server:
        assert server.tls_port is not None
        with TLSClient(server.tls_port, certs.client_context()) as alice:
            log_in(alice, "Alice")
            alice.send_raw(b"chat Alice " + b"x" * 100_000 + b"\nusers\n")
            alice.expect('<Invalid input: line longer than 64 bytes, discarded. '
                         'Type "help" for commands.>')
            alice.expect("<Online users: Alice>")


@pytest.mark.slow
def test_a_slow_tls_consumer_is_cut_off_and_holds_nobody_up(backend: str, certs: Certs) -> None:
    """Slow, on TLS, never reads.  Its queue (plaintext not yet taken by the
    kernel as ciphertext) passes the hard limit and it is cut off; Bob, who
    reads, is answered all along."""
    hard = 1 * MiB
    with tls_server(backend, certs, output_limit=256 * KiB, output_hard_limit=hard,
                    slow_consumer_grace=3600, flood=NO_FLOOD_CONTROL) as server, \
            client_pool(server.port) as pool:
        assert server.tls_port is not None
        slow = TLSClient(server.tls_port, certs.client_context())
        try:
            log_in(slow, "Slow")  # ... and it never reads again
            alice, bob = pool.login("Alice"), pool.login("Bob")
            alice_lines = Drain(alice.sock, keep=lambda line: line == b"<User Slow is offline.>")
            bob_lines = Drain(bob.sock, keep=lambda line: not line.startswith(b"<Broadcast"))
            found = server.chat.whiteboard.lookup("Slow")
            assert found is not None
            transport = found[1].transport
            blob = b'broadcast "' + b"y" * 3000 + b'"\n'
            round_trip = 0
            while not alice_lines.kept():
                assert transport.queued <= hard
                before = alice_lines.line_count
                alice.send_raw(blob * 16)
                alice_lines.wait_for(lambda d, n=before: d.line_count >= n + 16,
                                     message="the echoes")
                round_trip += 1
                bob.send(f'chat Bob "ping {round_trip}"')
                bob_lines.wait_for(
                    lambda d, r=round_trip: f'<Message from Bob: "ping {r}">'.encode() in d.kept(),
                    timeout=5, message="Bob's round trip")
            slow.expect_closed()
            assert found[1].close_reason is not None
            assert found[1].close_reason.startswith("slow consumer")
            alice_lines.stop()
            bob_lines.stop()
        finally:
            slow.close()


@pytest.mark.slow
def test_every_echoed_message_reached_the_tls_recipient(backend: str, certs: Certs) -> None:
    """Bob (TLS) stops reading; Alice pipelines messages to him.  An echo
    ``<To Bob>`` is sent only once the kernel took the message's ciphertext;
    one that waited too long is taken back (or, encrypted and stuck, gets Bob
    cut off).  Carol's broadcasts then push Bob past his hard limit.  Bob,
    reading to the end, has every message Alice saw echoed."""
    with tls_server(backend, certs, output_limit=256 * KiB, output_hard_limit=512 * KiB,
                    delivery_timeout=0.5, flood=NO_FLOOD_CONTROL) as server, \
            client_pool(server.port) as pool:
        assert server.tls_port is not None
        bob = TLSClient(server.tls_port, certs.client_context())
        try:
            log_in(bob, "Bob")
            bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
            alice, carol = pool.login("Alice"), pool.login("Carol")
            alice_lines = Drain(alice.sock, keep=lambda line: line.startswith(b"<"))
            Drain(carol.sock)
            total = 3000  # 6 MB: more than the kernel buffers on both sides hold
            padding = "p" * 2000
            alice.send_raw("".join(f'chat Bob "m{i} {padding}"\n' for i in range(total)).encode())

            def answers() -> tuple[list[bytes], int]:
                kept = alice_lines.kept()
                replies = [line for line in kept
                           if line.startswith((b"<To Bob>", b"<Message to Bob not delivered"))]
                return replies, max(0, kept.count(b"<User Bob is offline.>") - 1)

            alice_lines.wait_for(lambda d: len(answers()[0]) + answers()[1] == total,
                                 timeout=30, message="an answer to every message")
            replies, after_the_cut = answers()
            echoed = [int(m) for m in re.findall(rb"<To Bob> m(\d+) ", b"\n".join(replies))]
            refused = [line for line in replies if not line.startswith(b"<To Bob>")]
            assert refused or after_the_cut, "Bob's buffers took everything: no message waited"
            assert echoed == list(range(len(echoed)))  # in order, none missing in between
            big = "c" * 3000
            while b"<User Bob is offline.>" not in alice_lines.kept():
                carol.send_raw(f'broadcast "{big}"\n'.encode() * 50)
                alice_lines.wait_for(lambda d: len(d.kept()) > 0, message="Alice's lines")
            rest = _read_to_the_end(bob)
            delivered = [int(m) for m in re.findall(rb'<Message from Alice: "m(\d+) p+">\n', rest)]
            lost = sorted(set(echoed) - set(delivered))
            assert not lost, f"{len(lost)} echoed but never delivered: {lost[:10]}"
            assert not set(delivered) - set(echoed), "a message said not delivered arrived"
            alice_lines.stop()
        finally:
            bob.close()


@pytest.mark.parametrize("wire", ["plain", "tls"])
def test_a_recipient_who_stops_reading_has_messages_taken_back_and_stays(
    backend: str, certs: Certs, wire: str,
) -> None:
    """Bob (plain or TLS) stops reading; Alice
    pipelines messages to him.  Those his connection takes are echoed; the
    first that waits too long is taken back, the rest refused at once -- all
    "Bob is not reading" -- and Bob stays: nobody is told he went offline.
    When Bob reads again he gets exactly the echoed messages, whole, and
    Alice's next message reaches him."""
    with tls_server(backend, certs, delivery_timeout=0.5, flood=NO_FLOOD_CONTROL) as server, \
            client_pool(server.port) as pool:
        assert server.tls_port is not None
        bob = (TLSClient(server.tls_port, certs.client_context()) if wire == "tls"
               else LineClient(server.port))
        try:
            log_in(bob, "Bob")
            bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
            alice = pool.login("Alice")
            alice_lines = Drain(alice.sock, keep=lambda line: line.startswith(b"<"))
            total = 3000  # 6 MB: more than the kernel buffers on both sides hold
            padding = "p" * 2000
            alice.send_raw("".join(f'chat Bob "m{i} {padding}"\n' for i in range(total)).encode())

            def replies() -> list[bytes]:
                return [line for line in alice_lines.kept()
                        if line.startswith((b"<To Bob>", b"<Message to Bob not delivered"))]

            alice_lines.wait_for(
                lambda d: len(replies()) == total or b"<User Bob is offline.>" in d.kept(),
                timeout=30, message="an answer to every message")
            assert b"<User Bob is offline.>" not in alice_lines.kept(), "Bob was cut off"
            answers = replies()
            echoed = [int(m) for m in re.findall(rb"<To Bob> m(\d+) ", b"\n".join(answers))]
            refused = set(answers[len(echoed):])
            assert echoed == list(range(len(echoed)))  # in order, none missing in between
            assert refused == {b"<Message to Bob not delivered: Bob is not reading.>"}
            # Bob reads again: the echoed messages, whole, then Alice's next one.
            last = f'<Message from Alice: "m{echoed[-1]} {padding}">'
            received = bob.read_until(lambda line: line == last, timeout=30)
            delivered = [int(m) for m in re.findall(r'^<Message from Alice: "m(\d+) p+">$',
                                                    "\n".join(received), re.M)]
            assert delivered == echoed
            wait_until(lambda: not any(c.not_reading for c in server.chat.connections),
                       message="Bob's queue read empty")
            alice.send('chat Bob "after"')
            bob.expect('<Message from Alice: "after">')
            alice_lines.wait_for(lambda d: b"<To Bob> after" in d.kept(), message="the echo")
            alice_lines.stop()
        finally:
            bob.close()


def _read_to_the_end(client: LineClient, timeout: float = 30) -> bytes:
    """Everything a TLS client receives until the connection ends, however it ends."""
    received = bytearray()
    client.sock.settimeout(timeout)
    with contextlib.suppress(OSError):  # a reset, or TLS cut in the middle of a record
        while chunk := client.sock.recv(65536):
            received += chunk
    return bytes(received)


@pytest.mark.slow
def test_a_tls_flooder_is_metered_and_holds_nobody_up(backend: str, certs: Certs) -> None:
    """Flood control and fairness over TLS: the flooder's 300 lines all get
    answered, in order and metered, while a plain and a TLS client chat."""
    limits = FloodLimits(lines_per_second=200, lines_burst=20)
    with tls_server(backend, certs, flood=limits) as server:
        assert server.tls_port is not None
        context = certs.client_context()
        with TLSClient(server.tls_port, context) as flooder, \
                TLSClient(server.tls_port, context) as alice, LineClient(server.port) as bob:
            for client, name in ((flooder, "Flooder"), (alice, "Alice"), (bob, "Bob")):
                log_in(client, name)
            alice.expect("<User Bob is online.>")
            a_flooder_is_metered_while_others_chat(flooder, alice, bob)


@pytest.fixture(scope="module")
def rsa_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """An RSA-2048 certificate: each handshake signs with RSA, the costly case."""
    certs = Certs.__new__(Certs)
    directory = tmp_path_factory.mktemp("tls-rsa")
    certs.ca = trustme.CA(key_type=trustme.KeyType.RSA)
    issued = certs.ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
    certs.cert, certs.key = directory / "server.pem", directory / "server.key"
    certs.ca_file = directory / "server-ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(certs.cert))
    issued.private_key_pem.write_to_path(str(certs.key))
    return certs


ATTACKER = "127.0.0.2"  # any of 127/8 is this machine: one address per role
NEWCOMER = "127.0.0.3"


def test_a_flood_of_replayed_handshakes_waits_its_turn_behind_users(
    backend: str, rsa_certs: Certs,
) -> None:
    """300 connections from one address each send a ClientHello and nothing
    more (a replayed first flight: every one costs the server a signature).
    As the flood lands, Alice and Bob, already chatting, exchange a message,
    and Carol, from another address, completes her handshake and logs in --
    all while most of the flood still waits for its ServerHello: handshakes
    go a few at a time and one per address, so established users and other
    addresses are served between them.  And the flood is served in the end."""
    flood = 300
    with tls_server(backend, rsa_certs, flood=NO_FLOOD_CONTROL,
                    max_clients=flood + 10) as server, \
            LineClient(server.port) as alice, LineClient(server.port) as bob:
        port = server.tls_port
        assert port is not None
        log_in(alice, "Alice")
        log_in(bob, "Bob")
        alice.expect("<User Bob is online.>")
        stalled = [socket.create_connection(("127.0.0.1", port), source_address=(ATTACKER, 0))
                   for _ in range(flood)]
        try:
            wait_until(lambda: server.chat.connection_count == flood + 2,
                       message="the flood accepted")
            hello = client_hello()
            for sock in stalled:
                sock.sendall(hello)
            alice.send('chat Bob "ping"')
            bob.expect('<Message from Alice: "ping">', timeout=30)
            # Served while the flood still waits (unmetered, the whole flood
            # went first).  How much of it is left depends on how long this
            # thread waited for the CPU, so only "some" is asserted.
            answered = select.select(stalled, [], [], 0)[0]
            assert len(answered) < flood, "every handshake was served before the users"
            bob.send('chat Alice "pong"')
            alice.read_until(lambda line: line == '<Message from Bob: "pong">', timeout=30)
            with TLSClient(port, rsa_certs.client_context(), source=NEWCOMER) as carol:
                log_in(carol, "Carol")
            for sock in stalled:
                sock.settimeout(DEFAULT_TIMEOUT)
                assert sock.recv(1)
        finally:
            for sock in stalled:
                sock.close()


def test_tls_clients_get_the_login_timeout_and_server_full_notices(
    backend: str, certs: Certs
) -> None:
    """Refusals and the login timeout reach a TLS client that completed its
    handshake, encrypted, before the close."""
    with tls_server(backend, certs, login_timeout=0.5, max_clients=2) as server:
        assert server.tls_port is not None
        context = certs.client_context()
        with TLSClient(server.tls_port, context) as silent, \
                TLSClient(server.tls_port, context) as alice:
            log_in(alice, "Alice")
            silent.expect("<Login timed out.>")
            assert silent.expect_closed() == b""
            silent.close()
            wait_until(lambda: server.chat.connection_count == 1, message="the silent one gone")
            # Two connections are the most: a third is told, over TLS.
            with TLSClient(server.tls_port, context) as second:
                with TLSClient(server.tls_port, context) as third:
                    third.expect("<Server is full.>")
                    assert third.expect_closed() == b""
                del second


# -- peers that do not speak TLS, or stall -----------------------------------------


@pytest.mark.slow
def test_a_stalled_handshake_costs_nothing_and_ends_at_the_login_timeout(
    backend: str, certs: Certs
) -> None:
    login_timeout = 1.0
    with tls_server(backend, certs, login_timeout=login_timeout, close_linger=0.5) as server:
        assert server.tls_port is not None
        context = certs.client_context()
        started = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", server.tls_port))
        half = socket.create_connection(("127.0.0.1", server.tls_port))
        try:
            hello = client_hello()
            half.sendall(hello[: len(hello) // 2])
            # Others log in and chat meanwhile, over TLS and in plain.
            with TLSClient(server.tls_port, context) as alice, LineClient(server.port) as bob:
                log_in(alice, "Alice")
                log_in(bob, "Bob")
                alice.send('chat Bob "still here"')
                alice.expect("<User Bob is online.>", "<To Bob> still here")
                bob.expect('<Message from Alice: "still here">')
                for stalled in (silent, half):
                    stalled.settimeout(DEFAULT_TIMEOUT)
                    with contextlib.suppress(ConnectionResetError):
                        while stalled.recv(4096):
                            pass
                assert time.monotonic() - started >= login_timeout
                alice.send("users")
                alice.expect("<Online users: Alice, Bob>")
        finally:
            silent.close()
            half.close()


GARBAGE = {
    "plaintext login": b"Alice\n",
    "an HTTP request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "binary noise": bytes(range(256)) * 4,
    "a broken ClientHello": b"\x16\x03\x01\x00\x40" + b"\xff" * 64,
}


@pytest.mark.slow
@pytest.mark.parametrize("what", list(GARBAGE))
def test_garbage_instead_of_a_client_hello_is_closed_with_one_log_line(
    backend: str, certs: Certs, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reactor")
    with tls_server(backend, certs) as server:
        assert server.tls_port is not None
        with LineClient(server.tls_port) as alice, LineClient(server.tls_port) as intruder:
            intruder.send_raw(GARBAGE[what])
            intruder.expect_closed()  # an alert at most, then the end
        # Nothing was harmed: the TLS port serves the next client.
        with TLSClient(server.tls_port, certs.client_context()) as carol:
            log_in(carol, "Carol")
        del alice
    warnings = tls_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("TLS handshake with 127.0.0.1 failed: "), warnings
    if what in ("plaintext login", "an HTTP request"):
        assert "not a TLS client hello" in warnings[0], warnings
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_client_that_leaves_during_the_handshake_is_not_an_error(
    backend: str, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    with tls_server(backend, certs) as server:
        assert server.tls_port is not None
        for first_bytes in (b"", client_hello()[:20]):
            with socket.create_connection(("127.0.0.1", server.tls_port)) as sock:
                sock.sendall(first_bytes)
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(DEFAULT_TIMEOUT)
                while sock.recv(4096):
                    pass
        with TLSClient(server.tls_port, certs.client_context()) as carol:
            log_in(carol, "Carol")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# -- certificates: checked at start, reloaded on SIGHUP -----------------------------


def _run_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )


@pytest.mark.slow
def test_bad_certificate_or_key_files_are_one_line_and_exit_status_2(
    certs: Certs, tmp_path: Path
) -> None:
    other = Certs(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = {
        "cannot read the certificate file /nowhere.pem: No such file or directory":
            ["--tls-cert", "/nowhere.pem", "--tls-key", str(certs.key)],
        f"cannot read the key file {tmp_path}/missing.key: No such file or directory":
            ["--tls-cert", str(certs.cert), "--tls-key", str(tmp_path / "missing.key")],
        f"{junk}: no PEM certificate in it": ["--tls-cert", str(junk), "--tls-key", str(certs.key)],
        f"{junk}: no PEM private key in it": ["--tls-cert", str(certs.cert), "--tls-key", str(junk)],
        f"{other.key}: the key does not match the certificate {certs.cert}":
            ["--tls-cert", str(certs.cert), "--tls-key", str(other.key)],
    }
    for message, args in cases.items():
        result = _run_server(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr == f"reactor-chat-server: TLS: {message}\n", result.stderr
        assert result.stdout == ""
    result = _run_server("--tls-port", "0")
    assert result.returncode == 2
    assert result.stderr == ("reactor-chat-server: argument --tls-port: needs --tls-cert and "
                             "--tls-key (see --help)\n")


@pytest.mark.slow
def test_an_encrypted_key_needs_its_password_file(certs: Certs, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"sesame")))
    (tmp_path / "right").write_text("sesame\n")
    (tmp_path / "wrong").write_text("open\n")
    result = _run_server("--tls-cert", str(certs.cert), "--tls-key", str(locked))
    assert result.returncode == 2
    assert result.stderr == (f"reactor-chat-server: TLS: {locked}: the key is encrypted; give its "
                             "password with --tls-key-password-file\n")
    result = _run_server("--tls-cert", str(certs.cert), "--tls-key", str(locked),
                         "--tls-key-password-file", str(tmp_path / "wrong"))
    assert result.returncode == 2
    assert result.stderr == (f"reactor-chat-server: TLS: {locked}: cannot load the key (wrong "
                             f"password in {tmp_path / 'wrong'}?)\n")
    with server_process("select", "--tls-cert", str(certs.cert), "--tls-key", str(locked),
                        "--tls-key-password-file", str(tmp_path / "right")) as server, \
            TLSClient(server.port, certs.client_context()) as alice:
        log_in(alice, "Alice")


@pytest.mark.slow
def test_sighup_reloads_the_certificate_without_dropping_anyone(
    backend: str, tmp_path: Path
) -> None:
    first = Certs(tmp_path, "first")
    second = Certs(tmp_path, "second")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    with server_process(backend, "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        alice = log_in(TLSClient(server.port, first.client_context()), "Alice")
        try:
            cert.write_bytes(second.cert.read_bytes())
            key.write_bytes(second.key.read_bytes())
            server.process.send_signal(signal.SIGHUP)
            server.wait_for_log(lambda line: line == f"[Server] TLS certificate reloaded from {cert}")
            # New connections get the new certificate; the old CA no longer verifies it.
            with pytest.raises(ssl.SSLCertVerificationError):
                TLSClient(server.port, first.client_context())
            with TLSClient(server.port, second.client_context()) as bob:
                log_in(bob, "Bob")
                alice.expect("<User Bob is online.>")
                alice.send('chat Bob "from the old connection"')
                alice.expect("<To Bob> from the old connection")
                bob.expect('<Message from Alice: "from the old connection">')
                # Bad new files: one error line, and the current certificate stays.
                key.write_text("garbage\n")
                server.process.send_signal(signal.SIGHUP)
                line = server.wait_for_log(lambda text: "not reloaded" in text)
                assert line == ("[Server] TLS certificate not reloaded, keeping the current one: "
                                f"{key}: no PEM private key in it"), line
                with TLSClient(server.port, second.client_context()) as carol:
                    log_in(carol, "Carol")
                    bob.send("users")
                    bob.read_until(lambda text: text == "<Online users: Alice, Bob, Carol>")
        finally:
            alice.close()
        assert server.terminate() == 0
        assert not any("Traceback" in line for line in server.final_log())


# -- our client: --tls, --ca, --insecure --------------------------------------------


@pytest.fixture
def select_tls_server(certs: Certs) -> Iterator[Server]:
    """The client's tests need one server, not one per backend."""
    with tls_server("select", certs) as server:
        yield server


def test_the_client_verifies_the_server_with_ca_and_chats(
    select_tls_server: Server, certs: Certs
) -> None:
    port = select_tls_server.tls_port
    assert port is not None
    with piped_client(port, "Alice", "--tls", "--ca", str(certs.ca_file)) as alice, \
            TLSClient(port, certs.client_context()) as bob:
        alice.expect("-- logged in as Alice")
        log_in(bob, "Bob")
        alice.expect("-- Bob is online")
        alice.send('chat Bob "sent by the client over TLS"')
        bob.expect('<Message from Alice: "sent by the client over TLS">')
        bob.send('chat Alice "and back"')
        while "and back" not in (line := alice.read_line()):
            assert "Bob" in line, line
        alice.close_stdin()
        assert alice.wait() == 0
        assert alice.rest("stderr") == []


def test_the_client_refuses_a_wrong_host_name_in_one_line(tmp_path: Path) -> None:
    elsewhere = Certs(tmp_path)
    issued = elsewhere.ca.issue_cert("chat.example.org")  # a certificate for another name
    cert, key = tmp_path / "other.pem", tmp_path / "other.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    with running_server("select", tls_cert=str(cert), tls_key=str(key)) as server:
        for host, kind in (("localhost", "hostname"), ("127.0.0.1", "IP address")):
            result = run_cli(cli_args(server.port, "Alice", "--tls", "--ca",
                                      str(elsewhere.ca_file), host=host), b"bye\n")
            assert result.returncode == 1
            assert result.stderr.decode() == (
                f"reactor-chat: cannot connect to {host}:{server.port}: certificate verify "
                f"failed: {kind} mismatch, certificate is not valid for '{host}'\n")
            assert result.stdout == b""


def test_the_client_trusts_only_real_cas_by_default(select_tls_server: Server) -> None:
    port = select_tls_server.tls_port
    assert port is not None
    result = run_cli(cli_args(port, "Alice", "--tls"), b"bye\n")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"reactor-chat: cannot connect to 127.0.0.1:{port}: certificate verify failed: "
        "unable to get local issuer certificate\n")


def test_insecure_connects_and_says_loudly_what_it_means(select_tls_server: Server) -> None:
    port = select_tls_server.tls_port
    assert port is not None
    result = run_cli(cli_args(port, "Alice", "--tls", "--insecure"), b"users\nbye\n")
    assert result.returncode == 0, result.stderr
    stderr = result.stderr.decode()
    assert stderr.startswith("reactor-chat: WARNING: --insecure: the server's certificate is "
                             "NOT verified."), stderr
    assert "read and change everything" in stderr
    assert b"-- logged in as Alice" in result.stdout


def test_the_client_on_the_plain_port_with_tls_says_so(select_tls_server: Server,
                                                      certs: Certs) -> None:
    port = select_tls_server.port
    result = run_cli(cli_args(port, "Alice", "--tls", "--ca", str(certs.ca_file)), b"bye\n")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"reactor-chat: cannot connect to 127.0.0.1:{port}: TLS handshake failed: wrong version "
        "number (is that the server's TLS port?)\n")


def test_tls_options_are_checked(certs: Certs) -> None:
    result = run_cli(cli_args(1, "Alice", "--insecure"))
    assert result.returncode == 2
    assert result.stderr.decode().startswith("reactor-chat: --insecure needs --tls")
    result = run_cli(cli_args(1, "Alice", "--tls", "--ca", "/nowhere/ca.pem"))
    assert result.returncode == 2
    assert result.stderr.decode() == ("reactor-chat: cannot read the CA file /nowhere/ca.pem: "
                                      "No such file or directory\n")


@pytest.mark.slow
def test_the_interactive_client_over_tls(select_tls_server: Server, certs: Certs) -> None:
    port = select_tls_server.tls_port
    assert port is not None
    with terminal(port, "Alice", "--tls", "--ca", str(certs.ca_file)) as alice, \
            TLSClient(port, certs.client_context()) as bob:
        log_in(bob, "Bob")
        alice.wait_for_text("Bob is online")
        bob.send('chat Alice "to the prompt, encrypted"')
        bob.expect("<To Alice> to the prompt, encrypted")
        alice.wait_for_text("to the prompt, encrypted")
        alice.enter("/msg Bob hello back")
        bob.expect('<Message from Alice: "hello back">')
        alice.enter("/quit")
        assert alice.wait_exit() == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_openssl_s_client_is_the_nc_of_tls(select_tls_server: Server, certs: Certs) -> None:
    """The README's ``openssl s_client -quiet -connect HOST:PORT``: type your name first."""
    port = select_tls_server.tls_port
    assert port is not None
    process = subprocess.Popen(
        ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}",
         "-CAfile", str(certs.ca_file), "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(b"Alice\n")
        process.stdin.flush()
        assert process.stdout.readline() == b"<User Alice is online.>\n"
        process.stdin.write(b"users\nbye\n")
        process.stdin.flush()
        assert process.stdout.read() == b"<Online users: Alice>\n<User Alice is offline.>\n"
        assert process.wait(timeout=DEFAULT_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
