"""Clients that vanish, on both backends: a reset mid-line, a half-close, a
kill -9, and a peer whose machine is simply gone (found by TCP keepalive).

Whatever the way out, the others see exactly one ``<User X is offline.>`` and
the name can be taken again at once.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from reactor.backends.base import Server
from reactor.connection import Connection
from tests.fake_transport import DeferredWhiteboard
from tests.faults import VanishingPeerNetwork, reset
from tests.support import DEFAULT_TIMEOUT, Clients, LineClient, running_server, wait_until


@pytest.fixture
def alice_and_bob(clients: Clients) -> tuple[LineClient, LineClient]:
    alice, bob = clients.login("Alice"), clients.login("Bob")
    alice.expect("<User Bob is online.>")
    return alice, bob


def only_bob_went_offline(alice: LineClient) -> None:
    """Alice's next line says Bob left, and nothing else came with it."""
    alice.expect("<User Bob is offline.>")
    alice.send("users")
    alice.expect("<Online users: Alice>")


def bob_can_log_in_again_at_once(clients: Clients, alice: LineClient) -> None:
    again = clients.connect()
    again.send("Bob")
    again.expect("<User Bob is online.>")  # the first try, not a retry
    alice.expect("<User Bob is online.>")


def test_a_reset_mid_line_is_a_drop(clients: Clients,
                                    alice_and_bob: tuple[LineClient, LineClient]) -> None:
    alice, bob = alice_and_bob
    bob.send_raw(b'chat Alice "half a mess')
    reset(bob.sock)
    only_bob_went_offline(alice)  # and the half line went nowhere
    bob_can_log_in_again_at_once(clients, alice)


def test_a_plain_close_after_an_unterminated_line_handles_it_then_drops(
        clients: Clients, alice_and_bob: tuple[LineClient, LineClient]) -> None:
    """End of input ends the last line: the original C client writes its
    final ``bye`` with no newline and closes, and means it."""
    alice, bob = alice_and_bob
    bob.send_raw(b"broadcast last words, no newline")
    bob.close()
    alice.expect('<Broadcast from Bob: "last words, no newline">')
    only_bob_went_offline(alice)
    bob_can_log_in_again_at_once(clients, alice)


def test_a_half_close_is_answered_then_a_drop(clients: Clients,
                                              alice_and_bob: tuple[LineClient, LineClient]) -> None:
    """``printf 'Bob\\nbroadcast hi\\n' | nc``: the peer stops sending but still
    reads, so what it sent is done and answered before it is let go."""
    alice, bob = alice_and_bob
    bob.send_raw(b'broadcast "last words"\nchat Alice "and one more"\n')
    bob.sock.shutdown(socket.SHUT_WR)
    assert bob.expect_closed() == b"<To everyone> last words\n<To Alice> and one more\n"
    alice.expect('<Broadcast from Bob: "last words">', '<Message from Bob: "and one more">')
    only_bob_went_offline(alice)
    bob_can_log_in_again_at_once(clients, alice)


KILLABLE_CLIENT = textwrap.dedent("""
    import socket, sys
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    sock.sendall(b"Bob\\n")
    assert sock.recv(100) == b"<User Bob is online.>\\n"
    sock.sendall(b'chat Alice "cut sh')
    print("ready", flush=True)
    sys.stdin.read()  # until killed
""")


def test_end_of_input_is_reported_once_while_a_line_waits_for_its_answer(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sends its name and half-closes while the claim is still being
    decided (a shared roster answers later).  End of input reaches the
    connection once: a backend that kept watching the socket for input after
    its EOF would recv() b"" again on every pass -- a busy loop (100 % CPU)
    for as long as the answer takes, up to --delivery-timeout for a direct
    message to a slow reader followed by a half-close."""
    ends: list[Connection] = []
    original = Connection.data_received

    def counting(self: Connection, data: bytes) -> None:
        if not data:
            ends.append(self)
        original(self, data)

    monkeypatch.setattr(Connection, "data_received", counting)
    whiteboard = DeferredWhiteboard()  # never answers here
    with running_server(backend, options={"roster": whiteboard}) as server, \
            LineClient(server.port) as client:
        client.send_raw(b"Alice\n")
        client.sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: len(whiteboard.waiting) == 1, message="the claim")
        wait_until(lambda: len(ends) >= 1, message="end of input")
        time.sleep(0.5)  # a spinning loop would report it thousands of times by now
        assert len(ends) == 1, f"end of input reported {len(ends)} times"


def test_a_kill_9_of_the_client_process_is_a_drop(server: Server, clients: Clients) -> None:
    alice = clients.login("Alice")
    child = subprocess.Popen([sys.executable, "-c", KILLABLE_CLIENT, str(server.port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        alice.expect("<User Bob is online.>")
        child.kill()
        child.wait(DEFAULT_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(DEFAULT_TIMEOUT)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
    only_bob_went_offline(alice)
    bob_can_log_in_again_at_once(clients, alice)


# -- keepalive ----------------------------------------------------------------------


def _server_side_socket(server: Server) -> socket.socket:
    wait_until(lambda: server.chat.connection_count == 1, message="the connection")
    (session,) = server.chat._connections
    return session.transport.sock  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("idle, interval, count", [(7, 3, 4), (60, 10, 5)])
def test_accepted_sockets_get_keepalive_as_configured(backend: str, idle: int, interval: int,
                                                      count: int) -> None:
    with running_server(backend, keepalive_idle=idle, keepalive_interval=interval,
                        keepalive_count=count) as server, LineClient(server.port):
        sock = _server_side_socket(server)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == count


def test_keepalive_idle_0_turns_keepalive_off(backend: str) -> None:
    with running_server(backend, keepalive_idle=0) as server, LineClient(server.port):
        sock = _server_side_socket(server)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


@pytest.fixture
def vanishing_network() -> Iterator[VanishingPeerNetwork]:
    reason = VanishingPeerNetwork.available()
    if reason:
        pytest.skip(reason)
    network = VanishingPeerNetwork()
    try:
        network.__enter__()
    except subprocess.CalledProcessError as error:  # e.g. a container without CAP_NET_ADMIN
        pytest.skip(f"cannot make network namespaces: {error.stderr.decode().strip()}")
    try:
        yield network
    finally:
        network.__exit__()


@pytest.mark.slow
def test_a_peer_whose_machine_vanished_is_found_by_keepalive_and_dropped(
    backend: str, vanishing_network: VanishingPeerNetwork,
) -> None:
    """Two servers in one namespace, a client on the other side of a veth link
    to each; the link goes down without a FIN or RST.  The server with
    keepalive (1 s idle, 2 probes 1 s apart) drops the ghost within seconds and
    tells the others; the one without keepalive still thinks it is there."""
    net = vanishing_network
    fast = dict(keepalive_idle=1, keepalive_interval=1, keepalive_count=2)
    with contextlib.ExitStack() as stack:
        with net.inside(net.server_ns):  # the listeners are bound in there
            # (A short close linger: at the end a ghost cannot say goodbye.)
            probing = stack.enter_context(
                running_server(backend, host="0.0.0.0", close_linger=0.2, **fast))
            trusting = stack.enter_context(
                running_server(backend, host="0.0.0.0", close_linger=0.2, keepalive_idle=0))
        watchers: list[LineClient] = []
        ghosts: list[LineClient] = []
        try:
            for server in (probing, trusting):
                with net.inside(net.server_ns):
                    watchers.append(LineClient(server.port))
                with net.inside(net.peer_ns):
                    ghosts.append(LineClient(server.port, host=net.SERVER_ADDRESS))
            for watcher, ghost in zip(watchers, ghosts, strict=True):
                watcher.send("Watcher")
                watcher.expect("<User Watcher is online.>")
                ghost.send("Ghost")
                ghost.expect("<User Ghost is online.>")
                watcher.expect("<User Ghost is online.>")
            net.vanish()
            watchers[0].expect("<User Ghost is offline.>", timeout=15)
            with net.inside(net.server_ns):
                again = LineClient(probing.port)
            watchers.append(again)
            again.send("Ghost")
            again.expect("<User Ghost is online.>")
            # The control: without keepalive nobody finds out.
            watchers[1].send("users")
            watchers[1].expect("<Online users: Ghost, Watcher>")
        finally:
            for client in watchers + ghosts:
                client.close()
