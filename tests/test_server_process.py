"""``python -m reactor`` as a user runs it: arguments, logging, signals, exit codes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from reactor import BACKENDS
from tests.faults import server_process
from tests.support import LineClient


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "reactor", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def test_the_log_reads_like_the_original(backend: str) -> None:
    with server_process(backend, log_level="INFO") as server:
        port = server.port
        with LineClient(port) as alice, LineClient(port) as bob:
            alice.send("Alice")
            alice.expect("<User Alice is online.>")
            bob.send("Bob")
            bob.expect("<User Bob is online.>")
            alice.send('chat Bob "Hello Bob!"')
            bob.expect('<Message from Alice: "Hello Bob!">')
            bob.send("bye")
            bob.expect_closed()
            server.wait_for_log(lambda line: "Bob disconnected." in line)
        assert server.terminate() == 0
        server.wait_for_log(lambda line: "Server stopped." in line)
        assert server.log[:5] == [
            f"[Server] Listening on port {port}...",
            "[Server] Alice connected (127.0.0.1)",
            "[Server] Bob connected (127.0.0.1)",
            '[Server] Message from Alice to Bob: "Hello Bob!"',
            "[Server] Bob disconnected.",
        ]


def test_the_listening_line_is_shown_at_any_log_level(backend: str) -> None:
    with server_process(backend, log_level="ERROR") as server:
        server.wait_for_log(lambda line: line == f"[Server] Listening on port {server.port}...")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_tells_every_client_and_exits_zero(backend: str, signum: int) -> None:
    with server_process(backend) as server:
        with LineClient(server.port) as alice, LineClient(server.port) as anonymous:
            alice.send("Alice")
            alice.expect("<User Alice is online.>")
            server.process.send_signal(signum)
            assert alice.expect_closed() == b"<Server is shutting down.>\n"
            assert anonymous.expect_closed() == b"<Server is shutting down.>\n"
        assert server.process.wait(timeout=5) == 0
        assert not any("Traceback" in line for line in server.log)


def test_a_busy_port_is_one_clear_line(backend: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_server("--backend", backend, "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr == f"reactor: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--backend", "fork"], "argument --backend: invalid choice: 'fork' (choose from "
                                 + ", ".join(map(repr, BACKENDS)) + ")"),
        (["--port", "70000"], "argument --port: must be 0-65535, got 70000"),
        (["--port", "http"], "argument --port: must be a whole number, got 'http'"),
        (["--login-timeout", "soon"], "argument --login-timeout: must be a number, got 'soon'"),
        (["--max-clients", "0"], "argument --max-clients: must be at least 1, got 0"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_are_named_without_a_traceback(args: list[str], complaint: str) -> None:
    result = run_server(*args)
    assert result.returncode == 2
    assert result.stderr == f"python -m reactor: {complaint} (see --help)\n"
