"""Stalled TLS handshakes against ``--max-clients`` and ``--max-clients-per-ip``.

A connection that never finishes its handshake still holds a descriptor and
a TLS object, so it counts as a client: that is what keeps memory bounded
whatever peers do.  What must hold on every backend, as users observe it:

* such a connection holds its slot only until the login timeout, so a real
  user is locked out at most that long, and is told ``<Server is full.>``
  (over TLS) meanwhile rather than left hanging;
* with ``--max-clients-per-ip``, stalled handshakes from one address use up
  that address's share only: users from other addresses still get in;
* users already logged in are never disturbed, and the server logs the
  refusals without a traceback.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from tests.backends.test_tls import Certs, TLSClient, client_hello, log_in, tls_server
from tests.backends.test_tls import (
    certs as certs,  # a fixture, re-exported so that pytest finds it here
)
from tests.faults import close_all
from tests.support import DEFAULT_TIMEOUT, LineClient, wait_until

ATTACKER = "127.0.0.2"  # any of 127/8 is this machine: one address per role
USER = "127.0.0.3"


@contextlib.contextmanager
def stalled_handshakes(port: int, count: int, source: str) -> Iterator[list[socket.socket]]:
    """``count`` connections that send half a ClientHello and nothing more."""
    hello = client_hello()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=DEFAULT_TIMEOUT,
                                            source_address=(source, 0))
            sock.sendall(hello[: len(hello) // 2])
            socks.append(sock)
        yield socks
    finally:
        close_all(socks)


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(DEFAULT_TIMEOUT)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


class SourcedTLSClient(TLSClient):
    def __init__(self, port: int, certs: Certs, source: str) -> None:
        LineClient.__init__(self, port, source=source)
        self.sock = certs.client_context().wrap_socket(self.sock, server_hostname="127.0.0.1")


def test_stalled_handshakes_hold_slots_only_until_the_login_timeout(
    backend: str, certs: Certs
) -> None:
    with tls_server(backend, certs, max_clients=4, login_timeout=1.0,
                    close_linger=0.2) as server:
        assert server.tls_port is not None
        context = certs.client_context()
        with TLSClient(server.tls_port, context) as alice:
            log_in(alice, "Alice")
            with stalled_handshakes(server.tls_port, 3, ATTACKER) as stalled:
                wait_until(lambda: server.chat.connection_count == 4,
                           message="the stalled handshakes counted")
                # Full: a real user is told so, over TLS, and closed.
                with TLSClient(server.tls_port, context) as bob:
                    bob.expect("<Server is full.>")
                    assert bob.expect_closed() == b""
                # The login timeout ends every stalled handshake...
                assert all(closed_by_server(sock) for sock in stalled)
            wait_until(lambda: server.chat.connection_count == 1, message="the slots freed")
            # ... and then the real user gets in; Alice noticed nothing but him.
            with TLSClient(server.tls_port, context) as bob:
                log_in(bob, "Bob")
                alice.expect("<User Bob is online.>")
                alice.send('chat Bob "welcome"')
                alice.expect("<To Bob> welcome")
                bob.expect('<Message from Alice: "welcome">')


def test_stalled_handshakes_from_one_address_lock_out_only_that_address(
    backend: str, certs: Certs
) -> None:
    # A login timeout far beyond the test: only the per-address share can
    # let the real user in.
    with tls_server(backend, certs, max_clients=10, max_clients_per_ip=3,
                    login_timeout=60.0, close_linger=0.2) as server:
        assert server.tls_port is not None
        with stalled_handshakes(server.tls_port, 3, ATTACKER):
            wait_until(lambda: server.chat.connection_count == 3,
                       message="the stalled handshakes counted")
            with stalled_handshakes(server.tls_port, 1, ATTACKER) as (fourth,):
                # Refused at once (before any handshake: the notice is
                # plaintext, or the connection simply closes).
                assert closed_by_server(fourth)
            with SourcedTLSClient(server.tls_port, certs, USER) as bob:
                log_in(bob, "Bob")
                bob.send("users")
                bob.expect("<Online users: Bob>")
