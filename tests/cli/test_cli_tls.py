"""A plain client pointed at a TLS port is told to add ``--tls``.

The opposite mistake (``--tls`` on the plain port) already gets a hint from
the TLS handshake ("is that the server's TLS port?").  A TLS port shuts a
plain client out without a word, or with a TLS alert; either way the client
must say more than "the server closed the connection".
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
import trustme

from reactor import DEFAULT_BACKEND
from reactor.backends.base import Server
from tests.cli_support import TIMEOUT, cli_args, run_cli, terminal
from tests.support import running_server

# A TLS record: a fatal alert, "protocol version" (what a TLS server says to a
# client hello it cannot read).
TLS_ALERT = b"\x15\x03\x03\x00\x02\x02\x46"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    issued = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "server.pem", directory / "server.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@contextlib.contextmanager
def _tls_server(backend: str, certificate: tuple[str, str]) -> Iterator[Server]:
    cert, key = certificate
    with running_server(backend, tls_cert=cert, tls_key=key, tls_port=0) as server:
        assert server.tls_port is not None
        yield server


def _one_line(stderr: bytes) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_plain_client_on_the_tls_port_is_told_to_add_tls(backend: str,
                                                           certificate: tuple[str, str]) -> None:
    with _tls_server(backend, certificate) as server:
        result = run_cli(cli_args(server.tls_port, "Alice"), b"bye\n")  # type: ignore[arg-type]
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert line.startswith("reactor-chat: cannot log in as Alice: the server "), line
    assert line.endswith("add --tls)"), line
    assert result.stdout == b""


def test_the_interactive_client_on_the_tls_port_is_told_to_add_tls(
        certificate: tuple[str, str]) -> None:
    with _tls_server(DEFAULT_BACKEND, certificate) as server, \
            terminal(server.tls_port, logged_in=False) as alice:  # type: ignore[arg-type]
        assert alice.wait_exit() == 1
        assert "add --tls" in alice.raw.decode()


@contextlib.contextmanager
def _alerting_port() -> Iterator[int]:
    """A port that answers the first line with a TLS alert and then holds the
    connection open: only the bytes can tell the client what happened."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            held.append(conn)
            conn.settimeout(TIMEOUT)
            conn.recv(1024)
            conn.sendall(TLS_ALERT)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(TIMEOUT)
        for conn in held:
            conn.close()


ANSWERED_IN_TLS = ("reactor-chat: cannot log in as Alice: the server answered in TLS "
                   "(that is its TLS port: add --tls)")


def test_a_tls_alert_is_recognised_at_once() -> None:
    with _alerting_port() as port:
        result = run_cli(cli_args(port, "Alice"), b"bye\n")
    assert result.returncode == 1
    assert _one_line(result.stderr) == ANSWERED_IN_TLS


def test_the_interactive_client_recognises_a_tls_alert_at_once() -> None:
    with _alerting_port() as port, terminal(port, logged_in=False) as alice:
        assert alice.wait_exit() == 1
        assert ANSWERED_IN_TLS in alice.raw.decode().replace("\r\n", " ")
