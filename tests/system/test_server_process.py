"""``python -m reactor`` as a user runs it: arguments, logging, signals, exit codes."""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import time

import pytest

from reactor import BACKENDS
from reactor.logs import QUEUE_BOUND, STOP_TIMEOUT
from reactor.options import config_from_args, parse_args
from tests.admin_support import get, scrape
from tests.faults import REPO, Drain, port_in_log_line, server_process
from tests.support import DEFAULT_TIMEOUT, LineClient, without_log_time

# Slow: a server process per test.
pytestmark = pytest.mark.slow

PROGRAM = "reactor-chat-server"


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "reactor", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


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
    assert result.stderr == f"{PROGRAM}: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert result.stdout == ""


def test_the_admin_port_is_served_on_the_standard_library_alone(backend: str) -> None:
    with server_process(backend, "--admin-port", "0", standard_library_only=True) as server:
        # (Two listening ports: each is read from its own log line.)
        chat = port_in_log_line(server.wait_for_log(lambda line: "Listening on port " in line))
        port = port_in_log_line(server.wait_for_log(lambda line: "Admin endpoint on port " in line))
        with LineClient(chat) as alice:
            alice.send("Alice")
            alice.expect("<User Alice is online.>")
            assert scrape(port)["reactor_users_online"] == 1
        assert get(port, "/readyz").text == "ready\n"
        assert server.terminate() == 0


def test_a_busy_admin_port_is_one_clear_line_and_nothing_is_served(backend: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_server("--backend", backend, "--host", "127.0.0.1", "--port", "0",
                            "--admin-host", "127.0.0.1", "--admin-port", str(port))
    assert result.returncode == 1
    assert result.stderr == f"{PROGRAM}: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--backend", "fork"], "argument --backend: invalid choice: 'fork' (choose from "
                                 + ", ".join(map(repr, BACKENDS)) + ")"),
        (["--port", "70000"], "argument --port: must be 0-65535, got 70000"),
        (["--port", "http"], "argument --port: must be a whole number, got 'http'"),
        (["--login-timeout", "soon"], "argument --login-timeout: must be a number, got 'soon'"),
        (["--max-clients", "0"], "argument --max-clients: must be 1-1000000, got 0"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        # Every numeric option has a range, checked before anything starts.
        (["--port", "-1"], "argument --port: must be 0-65535, got -1"),
        (["--max-clients", "1000001"], "argument --max-clients: must be 1-1000000, got 1000001"),
        (["--max-clients-per-ip", "-1"], "argument --max-clients-per-ip: must be 0-1000000, got -1"),
        (["--max-line", "15"], "argument --max-line: must be 16-1048576 bytes, got 15"),
        (["--max-line", "1048577"], "argument --max-line: must be 16-1048576 bytes, got 1048577"),
        (["--output-limit", "65535"], "argument --output-limit: must be 65536-1073741824 bytes, got 65535"),
        (["--output-limit", "1073741825"], "argument --output-limit: must be 65536-1073741824 bytes, got 1073741825"),
        (["--max-line", "65536", "--output-limit", "100000"],
         "argument --output-limit: must be at least twice --max-line (131072 bytes), got 100000"),
        (["--login-timeout", "2592000"], "argument --login-timeout: must be 0.1-86400 seconds, got 2592000"),
        (["--login-timeout", "1e9"], "argument --login-timeout: must be 0.1-86400 seconds, got 1e9"),
        (["--login-timeout", "inf"], "argument --login-timeout: must be 0.1-86400 seconds, got inf"),
        (["--login-timeout", "nan"], "argument --login-timeout: must be 0.1-86400 seconds, got nan"),
        (["--login-timeout", "0.05"], "argument --login-timeout: must be 0.1-86400 seconds, got 0.05"),
        (["--keepalive-idle", "32768"], "argument --keepalive-idle: must be 0-32767, got 32768"),
        (["--keepalive-idle", "-1"], "argument --keepalive-idle: must be 0-32767, got -1"),
        (["--log-text", "maybe"], "argument --log-text: must be on or off, got 'maybe'"),
    ],
)
def test_bad_arguments_are_named_in_one_line(
    args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # main() reads its arguments before anything else; the process as a
    # user runs it is the next test.
    with pytest.raises(SystemExit) as exited:
        parse_args(args)
    assert exited.value.code == 2
    assert capsys.readouterr() == ("", f"{PROGRAM}: {complaint} (see --help)\n")


def test_a_bad_argument_is_one_line_and_exit_2_without_a_traceback() -> None:
    result = run_server("--port", "70000")
    assert result.returncode == 2
    assert result.stderr == f"{PROGRAM}: argument --port: must be 0-65535, got 70000 (see --help)\n"
    assert result.stdout == ""


def test_the_ends_of_every_range_are_accepted() -> None:
    low = parse_args(["--port", "0", "--max-clients", "1", "--max-clients-per-ip", "0",
                      "--max-line", "16", "--output-limit", "65536", "--login-timeout", "0.1",
                      "--keepalive-idle", "0"])
    high = parse_args(["--port", "65535", "--max-clients", "1000000",
                       "--max-clients-per-ip", "1000000", "--max-line", "1048576",
                       "--output-limit", "1073741824", "--output-hard-limit", "1073741824",
                       "--login-timeout", "86400", "--keepalive-idle", "32767"])
    assert (low.login_timeout, high.login_timeout) == (0.1, 86400.0)
    assert (low.keepalive_idle, high.keepalive_idle) == (0, 32767)


def test_help_shows_how_the_server_was_started() -> None:
    result = run_server("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m reactor [-h]")
    assert "--log-text on|off" in result.stdout


def test_log_text_is_a_config_field() -> None:
    assert config_from_args(parse_args([])).log_text is False  # private by default
    assert config_from_args(parse_args(["--log-text", "off"])).log_text is False
    assert config_from_args(parse_args(["--log-text", "ON"])).log_text is True


def test_by_default_messages_stay_out_of_the_log(backend: str) -> None:
    with server_process(backend, log_level="INFO") as server:
        with LineClient(server.port) as alice, LineClient(server.port) as bob:
            alice.send("Alice")
            alice.expect("<User Alice is online.>")
            bob.send("Bob")
            bob.expect("<User Bob is online.>")
            alice.send('chat Bob "a private word"')
            bob.expect('<Message from Alice: "a private word">')
            alice.send('broadcast "a public word"')
            bob.expect('<Broadcast from Alice: "a public word">')
        assert server.terminate() == 0
        log = server.final_log()
    assert not any("private word" in line or "public word" in line for line in log), log


# -- the host to listen on ----------------------------------------------------------


def test_an_unknown_host_is_one_clear_line(backend: str) -> None:
    result = run_server("--backend", backend, "--host", "nosuch.invalid")
    assert result.returncode == 1
    assert result.stderr == f"{PROGRAM}: cannot listen on nosuch.invalid:1234: unknown host\n"
    assert result.stdout == ""


def _ipv6_loopback() -> str | None:
    """None if this machine can listen on ::1 with dual-stack sockets, else why not."""
    if not socket.has_dualstack_ipv6():
        return "no dual-stack IPv6 sockets here"
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return None
    except OSError as error:
        return f"no IPv6 loopback: {error}"


def _log_in(port: int, host: str, name: str) -> LineClient:
    client = LineClient(port, host=host)
    client.send(name)
    client.expect(f"<User {name} is online.>")
    return client


@pytest.mark.skipif(_ipv6_loopback() is not None, reason=str(_ipv6_loopback()))
def test_the_ipv6_wildcard_listens_on_ipv4_and_ipv6(backend: str) -> None:
    with server_process(backend, "--host", "::", log_level="INFO") as server:
        with _log_in(server.port, "127.0.0.1", "Four") as four, \
                _log_in(server.port, "::1", "Six"):
            four.expect("<User Six is online.>")
        # An IPv4 client is logged (and counted per address) as IPv4.
        server.wait_for_log(lambda line: line == "[Server] Four connected (127.0.0.1)")
        server.wait_for_log(lambda line: line == "[Server] Six connected (::1)")


@pytest.mark.skipif(_ipv6_loopback() is not None, reason=str(_ipv6_loopback()))
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_literal_is_listened_on(backend: str, host: str) -> None:
    with server_process(backend, "--host", host) as server, \
            _log_in(server.port, "::1", "Six"):
        pass


# -- signals ------------------------------------------------------------------------


def test_sighup_and_sigusr1_leave_the_server_serving(backend: str) -> None:
    with server_process(backend) as server:
        with LineClient(server.port) as alice, LineClient(server.port) as anonymous:
            alice.send("Alice")
            alice.expect("<User Alice is online.>")
            server.process.send_signal(signal.SIGHUP)
            server.wait_for_log(lambda line: line == "[Server] Reloading configuration")
            # The anonymous connection is counted once the server has accepted it,
            # which may be a moment after connect() returned (the threads backend
            # accepts on its own thread): ask for the status until it shows.
            expected = f"[Server] Status: 2 connections, 1 user online, {backend} backend, up "
            deadline = time.monotonic() + 10
            while True:
                server.process.send_signal(signal.SIGUSR1)
                try:
                    server.wait_for_log(lambda line: line.startswith(expected), timeout=0.5)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
            with LineClient(server.port) as bob:
                bob.send("Bob")
                bob.expect("<User Bob is online.>")
                alice.expect("<User Bob is online.>")
                server.process.send_signal(signal.SIGTERM)
                for client in (alice, anonymous, bob):
                    assert client.expect_closed() == b"<Server is shutting down.>\n"
        assert server.process.wait(timeout=5) == 0
        assert not any("Traceback" in line for line in server.final_log())


# -- a log that cannot be written -----------------------------------------------------


def _shrink_pipe(fd: int) -> None:
    """Make the log pipe as small as Linux allows (one page), so it fills fast."""
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 4096)


def _unread(fd: int) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def _chat_in_bulk(port: int, count: int) -> None:
    """Alice sends Bob ``count`` messages (a log line each at INFO), pipelined;
    returns once both have had every answer, then both leave."""
    with LineClient(port) as alice, LineClient(port) as bob:
        alice.send("Alice")
        alice.expect("<User Alice is online.>")
        bob.send("Bob")
        bob.expect("<User Bob is online.>")
        alice.expect("<User Bob is online.>")
        echoes, messages = Drain(alice.sock), Drain(bob.sock)
        try:
            alice.send_raw(b"".join(b'chat Bob "m%d"\n' % i for i in range(count)))
            messages.wait_for(lambda d: d.line_count >= count, timeout=30,
                              message=f"{count} messages to Bob")
            echoes.wait_for(lambda d: d.line_count >= count, timeout=30,
                            message=f"{count} echoes to Alice")
        finally:
            echoes.stop()
            messages.stop()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_log_nobody_reads_stops_neither_serving_nor_shutdown(
        backend: str, log_format: str) -> None:
    # Flood control off: its subject is the log, and 3,000 pipelined lines at
    # the default line rate would take a minute.
    with server_process(backend, "--flood-control", "off", "--log-format", log_format,
                        log_level="INFO", read_log=False) as server:
        _shrink_pipe(server.log_pipe_fd())
        _chat_in_bulk(server.port, 3000)  # ~130 KB of log for a 4 KiB pipe
        assert _unread(server.log_pipe_fd()) > 0  # nobody read it
        with LineClient(server.port) as carol:
            carol.send("Carol")
            carol.expect("<User Carol is online.>")
        # The log gives up after STOP_TIMEOUT; the exit does not wait for it.
        assert server.terminate(timeout=STOP_TIMEOUT + 6) == 0


DROPPED = re.compile(r"\[Server\] (\d+) log lines? dropped \(output was not keeping up\)")


def test_log_lines_dropped_while_nobody_reads_are_counted(backend: str) -> None:
    count = QUEUE_BOUND + 5000  # more than the queue, the writer's batch and the pipe hold
    with server_process(backend, "--flood-control", "off", "--log-text", "on",
                        log_level="INFO", read_log=False) as server:
        _shrink_pipe(server.log_pipe_fd())
        _chat_in_bulk(server.port, count)
        server.start_reading_log()
        assert server.terminate() == 0
        log = server.final_log()
    assert log[0].startswith("[Server] Listening on port ")
    assert log[-1] == "[Server] Server stopped."
    notices = [int(match[1]) for match in map(DROPPED.fullmatch, log) if match]
    assert notices, log[-5:]
    # Every line was either written or counted: two logins, the messages, two
    # logouts.
    written = [line for line in log[1:-1] if not DROPPED.fullmatch(line)]
    assert len(written) + sum(notices) == 2 + count + 2
    # The messages written are the first ones, in order, up to the gap.
    messages = [line for line in written if line.startswith("[Server] Message from")]
    assert messages == [f'[Server] Message from Alice to Bob: "m{i}"' for i in range(len(messages))]


def _read_line(fd: int, deadline: float) -> bytes:
    """One line from a pipe, reading a byte at a time so as to take no more."""
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no complete line in time; have {line!r}")
        byte = os.read(fd, 1)
        if not byte:
            raise AssertionError(f"end of output; have {line!r}")
        line += byte
    return line


def test_a_closed_stdout_is_one_line_on_stderr_and_serving_goes_on(backend: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0",
         "--backend", backend, "--keepalive-idle", "0"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        first = without_log_time(_read_line(process.stdout.fileno(), deadline).decode())
        port = int(first.removeprefix("[Server] Listening on port ").removesuffix("...\n"))
        process.stdout.close()  # as `| head -1` does
        with _log_in(port, "127.0.0.1", "Alice") as alice:  # a log line: EPIPE
            complaint = _read_line(process.stderr.fileno(), deadline).decode()
            assert complaint == (f"{PROGRAM}: cannot write the log to stdout (Broken pipe); "
                                 "log lines are discarded from now on\n")
            with _log_in(port, "127.0.0.1", "Bob"):
                alice.expect("<User Bob is online.>")
                alice.send('chat Bob "still here"')
                alice.expect("<To Bob> still here")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEFAULT_TIMEOUT) == 0
        assert process.stderr.read() == b""  # nothing more: no "Logging error" traceback
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEFAULT_TIMEOUT)
        process.stderr.close()
