"""``python -m reactor`` as a user runs it: arguments, logging, signals, exit codes."""

from __future__ import annotations

import signal
import socket

import pytest

from tests.support import LineClient, ServerProcess


def test_the_log_reads_like_the_original(backend: str) -> None:
    with ServerProcess("--backend", backend, "--host", "127.0.0.1", "--port", "0") as server:
        port = server.wait_listening()
        assert server.log_lines == [f"[Server] Listening on port {port}..."]
        with LineClient(port) as alice, LineClient(port) as bob:
            alice.send("Alice")
            alice.expect("<User Alice is online.>")
            bob.send("Bob")
            bob.expect("<User Bob is online.>")
            alice.send('chat Bob "Hello Bob!"')
            bob.expect('<Message from Alice: "Hello Bob!">')
            bob.send("bye")
            bob.expect_closed()
            server.read_log_until(lambda line: "Bob disconnected." in line)
        server.proc.send_signal(signal.SIGTERM)
        status, _, err = server.finish()
    assert status == 0, err
    assert server.log_lines[:5] == [
        f"[Server] Listening on port {port}...",
        "[Server] Alice connected (127.0.0.1)",
        "[Server] Bob connected (127.0.0.1)",
        '[Server] Message from Alice to Bob: "Hello Bob!"',
        "[Server] Bob disconnected.",
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_tells_every_client_and_exits_zero(backend: str, signum: int) -> None:
    with ServerProcess("--backend", backend, "--host", "127.0.0.1", "--port", "0") as server:
        port = server.wait_listening()
        with LineClient(port) as alice, LineClient(port) as anonymous:
            alice.send("Alice")
            alice.expect("<User Alice is online.>")
            server.proc.send_signal(signum)
            assert alice.expect_closed() == b"<Server is shutting down.>\n"
            assert anonymous.expect_closed() == b"<Server is shutting down.>\n"
        status, _, err = server.finish(timeout=5)
    assert status == 0
    assert "Traceback" not in err


def test_a_busy_port_is_one_clear_line(backend: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with ServerProcess("--backend", backend, "--host", "127.0.0.1", "--port", str(port)) as server:
            status, out, err = server.finish()
    assert status != 0
    assert err.strip() == f"reactor: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--backend", "fork"], "invalid choice: 'fork'"),
        (["--port", "70000"], "must be 0-65535, got 70000"),
        (["--port", "http"], "invalid _port value: 'http'"),
        (["--max-clients", "0"], "must be at least 1, got 0"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_are_named_without_a_traceback(args: list[str], complaint: str) -> None:
    with ServerProcess(*args) as server:
        status, _, err = server.finish()
    assert status == 2
    assert complaint in err
    assert "Traceback" not in err
