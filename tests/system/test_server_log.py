"""The server's log as an operator reads it: timestamps, JSON lines, what is never in it.

A real server process on every backend; the log read from its stdout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.faults import ServerProcess, server_process
from tests.support import LOG_TIME, LineClient, without_log_time

# Slow: a server process per test.
pytestmark = pytest.mark.slow

THE_ORIGINALS_LOG = [
    "[Server] Listening on port {port}...",
    "[Server] Alice connected (127.0.0.1)",
    "[Server] Bob connected (127.0.0.1)",
    '[Server] Message from Alice to Bob: "Hello Bob!"',
    '[Server] Broadcast from Alice: "to everyone"',
    "[Server] Bob disconnected.",
    "[Server] Alice disconnected.",
    "[Server] Server stopped.",
]


def _converse(server: ServerProcess) -> list[str]:
    """Alice writes to Bob, who leaves; the server is stopped. Its whole log, as written."""
    with LineClient(server.port) as alice, LineClient(server.port) as bob:
        alice.send("Alice")
        alice.expect("<User Alice is online.>")
        bob.send("Bob")
        bob.expect("<User Bob is online.>")
        alice.send('chat Bob "Hello Bob!"')
        bob.expect('<Message from Alice: "Hello Bob!">')
        alice.send('broadcast "to everyone"')
        bob.expect('<Broadcast from Alice: "to everyone">')
        # One at a time, so that the log's order is known on every backend.
        for client, gone in ((bob, "Bob disconnected."), (alice, "Alice disconnected.")):
            client.send("bye")
            client.expect_closed()
            server.wait_for_log(_containing(gone))
    assert server.terminate() == 0
    server.final_log()
    return server.raw_log


def _containing(words: str) -> Callable[[str], bool]:
    return lambda line: words in line


def _now() -> datetime:
    """Now, to the millisecond below, as a log line's time may be."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _check_times(times: list[str], started: datetime, ended: datetime) -> None:
    """RFC 3339 in UTC, in order, and between the test's start and end."""
    moments = []
    for stamp in times:
        assert LOG_TIME.fullmatch(stamp + " ") and stamp.endswith("Z"), stamp
        moments.append(datetime.fromisoformat(stamp))
    assert moments == sorted(moments)
    assert started <= moments[0] and moments[-1] <= ended, (started, times, ended)


def test_every_line_begins_with_its_time_in_utc_by_default(backend: str) -> None:
    started = _now()
    with server_process(backend, log_level="INFO") as server:
        log = _converse(server)
    ended = datetime.now(UTC)
    assert all(LOG_TIME.match(line) for line in log), log
    _check_times([line.split(" ", 1)[0] for line in log], started, ended)
    # After the time, the original's line.
    assert [without_log_time(line) for line in log] == [
        line.format(port=server.port) for line in THE_ORIGINALS_LOG]


def test_with_log_time_off_the_log_reads_exactly_like_the_original(backend: str) -> None:
    # As under journald, and as scripts written for the original expect.
    with server_process(backend, "--log-time", "off", log_level="INFO") as server:
        log = _converse(server)
    assert log == [line.format(port=server.port) for line in THE_ORIGINALS_LOG]


def test_every_line_of_a_conversation_in_json_is_an_object_with_time_level_and_event(
        backend: str) -> None:
    started = _now()
    with server_process(backend, "--log-format", "json", log_level="INFO") as server:
        log = _converse(server)
    ended = datetime.now(UTC)
    entries = [json.loads(line) for line in log]
    assert all(isinstance(entry, dict) for entry in entries)
    _check_times([entry["time"] for entry in entries], started, ended)
    assert {entry["level"] for entry in entries} == {"INFO"}
    assert [entry["event"] for entry in entries] == [
        "listening", "connected", "connected", "message", "broadcast", "disconnected",
        "disconnected", "stopped"]
    listening, alice, bob, message, broadcast, gone, _, _ = entries
    assert listening["port"] == server.port
    assert (alice["user"], alice["address"], bob["user"]) == ("Alice", "127.0.0.1", "Bob")
    assert (message["from"], message["to"], message["text"]) == ("Alice", "Bob", "Hello Bob!")
    assert (broadcast["from"], broadcast["text"]) == ("Alice", "to everyone")
    assert gone["user"] == "Bob"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_with_log_text_off_no_line_holds_what_users_wrote(backend: str, log_format: str) -> None:
    # At DEBUG, the most the server ever logs.
    with server_process(backend, "--log-text", "off", "--log-format", log_format,
                        log_level="DEBUG") as server:
        log = _converse(server)
    assert not any("Hello" in line or "everyone" in line for line in log), log
    messages = [line for line in log if "Message from Alice to Bob" in line]
    assert len(messages) == 1 and "(10 characters)" in messages[0], log
