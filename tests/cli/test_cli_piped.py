"""The scriptable client (stdin not a terminal) and every way the client can fail.

With ``--raw`` scripts see exactly the server's lines on stdout, flushed as
they arrive; without it the lines people read, with no colour; the client's
own complaints go to stderr as one line each; the exit status says what
happened (0 normal, 1 connection or server trouble, 2 usage, 3 a line was
refused or not delivered).
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from reactor import DEFAULT_BACKEND
from reactor.backends.base import Server
from reactor.config import HistoryConfig
from tests.cli_support import ROOT, TIMEOUT, FakeServer, cli_args, piped_client, run_cli
from tests.support import Clients, running_server, without_log_time


def test_the_issue_example_works_as_a_pipe(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    result = run_cli(cli_args(server.port, "Alice", "--raw"), b'chat Bob "hi"\nbye\n')
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "<User Alice is online.>",
        "<To Bob> hi",
        "<User Alice is offline.>",
    ]
    assert result.stderr == b""
    bob.expect("<User Alice is online.>", '<Message from Alice: "hi">',
               "<User Alice is offline.>")


def test_end_of_input_logs_out_like_bye(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    result = run_cli(cli_args(server.port, "Alice", "--raw"), b"broadcast hello all\nusers")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "<User Alice is online.>",
        "<To everyone> hello all",
        "<Online users: Alice, Bob>",
        "<User Alice is offline.>",
    ]
    bob.expect("<User Alice is online.>", '<Broadcast from Alice: "hello all">',
               "<User Alice is offline.>")


def test_server_lines_are_printed_as_they_arrive(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with piped_client(server.port, "Alice", "--raw") as alice:
        alice.expect("<User Alice is online.>")
        # stdin stays open: the line must come out now, not at exit.
        bob.send('chat Alice "ping"')
        alice.expect('<Message from Bob: "ping">')
        alice.send('chat Bob "pong"')
        alice.expect("<To Bob> pong")
        alice.close_stdin()
        alice.expect("<User Alice is offline.>")
        assert alice.wait() == 0


def test_sigterm_logs_out_like_the_end_of_input(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with piped_client(server.port, "Alice", "--raw") as alice:
        alice.expect("<User Alice is online.>")
        alice.send("users")  # a reply shows the session is under way
        alice.expect("<Online users: Alice, Bob>")
        alice.process.terminate()
        alice.expect("<User Alice is offline.>")
        assert alice.wait() == 0
    bob.expect("<User Alice is online.>", "<User Alice is offline.>")


@pytest.mark.slow
def test_a_malformed_command_is_reported_the_rest_run_and_the_status_is_3(
        server: Server, clients: Clients) -> None:
    clients.login("Bob")
    script = b'chat Bob "unterminated\n\nfrobnicate\nchat Bob "fine"\nbye\n'
    result = run_cli(cli_args(server.port, "Alice", "--raw"), script)
    assert result.returncode == 3
    assert result.stdout.decode().splitlines() == [
        "<User Alice is online.>",
        "<To Bob> fine",
        "<User Alice is offline.>",
    ]
    assert result.stderr.decode().splitlines() == [
        "reactor-chat: line 1 not sent: unterminated quote",
        'reactor-chat: line 3 not sent: "frobnicate" is not a command; '
        "type /help for the commands",
    ]


def test_messages_not_delivered_give_status_3_and_say_which_line(server: Server,
                                                                   clients: Clients) -> None:
    clients.login("Bob")
    script = (b"/msg Bob one\n/msg Nobody two\nchat Bob three\n/msg Bob " + b"x" * 5000
              + b"\n")
    result = run_cli(cli_args(server.port, "Alice", "--timestamps", "off"), script)
    assert result.returncode == 3, result.stderr
    assert result.stdout.decode().splitlines() == [
        "-- logged in as Alice",
        "✓ you → Bob: one",
        "✗ not delivered to Nobody: Nobody does not exist. You wrote: two",
        "✓ you → Bob: three",
        "-- logged out",
    ]
    assert result.stderr.decode().splitlines() == [
        "reactor-chat: line 4 not sent: the message is 915 characters too long "
        "(the server takes lines of at most 4,096 bytes)",
        "reactor-chat: line 2 not delivered to Nobody: Nobody does not exist",
    ]


def test_every_message_delivered_is_status_0(server: Server, clients: Clients) -> None:
    clients.login("Bob")
    result = run_cli(cli_args(server.port, "Alice", "--timestamps", "HH:MM:SS"),
                     b"/msg Bob one\nbroadcast two\n/who\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert [line[11:] for line in lines] == [
        "-- logged in as Alice",
        "✓ you → Bob: one",
        "✓ you → everyone: two",
        "-- online (2): Alice, Bob",
        "-- logged out",
    ]
    assert all(line[0] == "[" and line[9:11] == "] " for line in lines)
    assert "\x1b" not in result.stdout.decode()  # no colour into a pipe


def test_slash_broadcast_reaches_everyone_and_every_help_lists_it(server: Server,
                                                                  clients: Clients) -> None:
    bob = clients.login("Bob")
    result = run_cli(cli_args(server.port, "Alice"), b"/broadcast hello all\n/help\nhelp\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "-- logged in as Alice" and "✓ you → everyone: hello all" in lines
    client_help, server_help = (line for line in lines if "/broadcast <text>" in line)
    assert client_help.startswith("  /broadcast <text>")
    assert server_help.startswith("-- ") and "Also: /msg <user> <text>, /broadcast" in server_help
    assert "/broadcast <text>" in run_cli([sys.executable, "-m", "cli", "--help"]).stdout.decode()
    bob.expect("<User Alice is online.>", '<Broadcast from Alice: "hello all">',
               "<User Alice is offline.>")


@pytest.mark.slow
def test_lines_after_bye_are_not_sent(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    result = run_cli(cli_args(server.port, "Alice"), b'bye\nchat Bob "too late"\n')
    assert result.stdout.decode().splitlines() == ["-- logged in as Alice", "-- logged out"]
    assert result.returncode == 0
    bob.expect("<User Alice is online.>", "<User Alice is offline.>")
    bob.expect_silence()


def test_a_hostile_server_is_escaped_in_piped_output_too() -> None:
    with FakeServer(b"\x1b]0;pwned\x07\n\x1b[2J\rgone\n") as fake:
        result = run_cli(cli_args(fake.port, "Alice", "--raw"), b"bye\n")
    assert result.returncode == 0
    assert result.stdout.decode().splitlines() == [
        "<User Alice is online.>",
        r"\x1b]0;pwned\x07",
        r"\x1b[2J\x0dgone",
        "<User Alice is offline.>",
    ]


# -- errors: one line on stderr, a non-zero status, no traceback --------------


def _one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("args", [[], ["127.0.0.1"], ["127.0.0.1", "1234"],
                                  ["127.0.0.1", "port", "Alice"],
                                  ["127.0.0.1", "70000", "Alice"],
                                  ["127.0.0.1", "1234", "Alice", "extra"]])
def test_wrong_arguments_print_usage_and_exit_2(args: list[str]) -> None:
    result = run_cli([sys.executable, "-m", "cli", *args])
    assert result.returncode == 2
    line = _one_error_line(result)
    assert line.startswith("reactor-chat: ")
    assert "usage: python -m cli [options] SERVER PORT USERNAME" in line


def test_help_documents_the_exit_codes() -> None:
    result = run_cli([sys.executable, "-m", "cli", "--help"])
    assert result.returncode == 0
    assert "exit status:" in result.stdout.decode()


@contextlib.contextmanager
def _silent_listener() -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: shows whether a client connected."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        yield listener


@pytest.mark.parametrize(("name", "reason"), [
    ("has space", "a username is 1-32 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit"),
    ("x" * 33, "a username has at most 32 characters"),
    ("everyone", "the name everyone is reserved"),
])
def test_a_bad_username_is_refused_before_connecting(name: str, reason: str) -> None:
    with _silent_listener() as listener:
        result = run_cli(cli_args(listener.getsockname()[1], name))
        assert result.returncode == 2
        assert _one_error_line(result) == f"reactor-chat: invalid username: {reason}"
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_a_refused_connection_is_one_line_and_status_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    result = run_cli(cli_args(port, "Alice"))
    assert result.returncode == 1
    assert _one_error_line(result) == (
        f"reactor-chat: cannot connect to 127.0.0.1:{port}: "
        "connection refused (is the server running?)"
    )


@pytest.mark.slow
def test_a_taken_username_gives_the_servers_reason(server: Server, clients: Clients) -> None:
    clients.login("Alice")
    result = run_cli(cli_args(server.port, "ALICE"))
    assert result.returncode == 1
    assert _one_error_line(result) == (
        "reactor-chat: cannot log in as ALICE: the username Alice is already taken"
    )
    assert result.stdout == b""


@pytest.mark.slow
def test_a_full_server_gives_its_reason(backend: str) -> None:
    with running_server(backend, max_clients=1) as server:
        clients = Clients(server.port)
        try:
            clients.login("Bob")
            result = run_cli(cli_args(server.port, "Alice"))
        finally:
            clients.close_all()
    assert result.returncode == 1
    assert _one_error_line(result) == "reactor-chat: cannot log in as Alice: the server is full"


@pytest.fixture
def killable_server(backend: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real server in its own process, so that a test can kill it outright."""
    process = subprocess.Popen(
        [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0",
         "--backend", backend, "--keepalive-idle", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(ROOT),
    )
    try:
        assert process.stdout is not None
        first = without_log_time(process.stdout.readline().decode())
        assert first.startswith("[Server] Listening on port "), first
        yield process, int(first.rsplit(" ", 1)[1].rstrip(".\n"))
    finally:
        process.kill()
        process.wait(timeout=TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.slow
def test_a_server_killed_mid_session_is_reported(
        killable_server: tuple[subprocess.Popen[bytes], int]) -> None:
    process, port = killable_server
    with piped_client(port, "Alice", "--raw") as alice:
        alice.expect("<User Alice is online.>")
        process.send_signal(signal.SIGKILL)
        assert alice.wait() == 1
        assert alice.rest("stderr") == ["Disconnected from server."]
        assert alice.rest("stdout") == []


@pytest.mark.parametrize("args", [["127.0.0.1", "1", "-x"], ["127.0.0.1", "1", "--", "-x"],
                                  ["127.0.0.1", "1", "_x"]])
def test_a_name_that_looks_like_an_option_gets_the_username_rule(args: list[str]) -> None:
    result = run_cli([sys.executable, "-m", "cli", *args])
    assert result.returncode == 2
    assert _one_error_line(result) == (
        "reactor-chat: invalid username: a username is 1-32 ASCII letters, digits, '_', '-' "
        "or '.', starting with a letter or digit")


@pytest.mark.slow
def test_any_valid_name_works_as_the_argument() -> None:
    with running_server(DEFAULT_BACKEND) as server:
        for name in ("0.-_", "X" * 32):
            result = run_cli(cli_args(server.port, name, "--raw"), b"")
            assert result.returncode == 0, result.stderr
            assert result.stdout.decode().splitlines()[0] == f"<User {name} is online.>"


def test_history_in_a_pipe_reads_as_lines_with_time_and_id(backend: str) -> None:
    with running_server(backend, history=HistoryConfig()) as server:
        script = (b"broadcast one\nbroadcast two\n/history everyone 1\nhistory everyone\n"
                  b"/history Bob\nbye\n")
        result = run_cli(cli_args(server.port, "Alice"), script)
    lines = result.stdout.decode().splitlines()
    stamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d #(\d+)\] "
    assert lines[:3] == ["-- logged in as Alice", "✓ you → everyone: one",
                         "✓ you → everyone: two"]
    assert re.fullmatch(stamp + "you → everyone: two", lines[3])
    assert lines[4] == "-- end of history with everyone: 1 shown"
    assert re.fullmatch(stamp + "you → everyone: one", lines[5])
    assert re.fullmatch(stamp + "you → everyone: two", lines[6])
    assert lines[7:] == ["-- end of history with everyone: 2 shown", "-- logged out"]
    # A refusal names its own line (the history replies answered theirs).
    assert result.returncode == 3
    assert result.stderr.decode().splitlines() == [
        'reactor-chat: line 5 refused: the server refused it: history with one user is kept'
        ' only for registered names; register yours with register "<password>"']
