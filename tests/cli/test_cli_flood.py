"""The piped client flooded with well-formed lines: bounded memory, and people's lines cheap.

A stand-in server on a real socket sends line after line as fast as the
client takes them.  The client must hold the server back (stop reading the
socket) while its stdout is behind, so its memory stays bounded whatever the
server sends, whether stdout is not read at all or read as fast as it comes;
and nothing is lost on the way.  How fast is compared with a baseline taken
in the same test, in CPU time rather than wall-clock time: writing the lines
for people (the default) must cost about what passing them through raw does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

from tests.cli_support import (
    FLOOD_LINE,
    ROOT,
    TIMEOUT,
    FakeServer,
    FloodServer,
    cli_args,
    client_env,
    cpu_seconds,
    piped_client,
    rss_bytes,
    run_cli,
)

MiB = 1 << 20
# Far more than the socket buffers and the client's budgets hold together,
# and than the memory bound below.
FLOOD_LINES = 100_000
# What the client may grow by while flooded: its budgets and Python's own
# slack, but nothing that grows with the amount sent.
MEMORY_BOUND = 16 * MiB
POLL = 0.05
# The server is held back once its sends make no progress over this many
# looks at the client's memory.
STALLED_AFTER = 20


@contextlib.contextmanager
def _client(port: int, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """The client with its stdout on a pipe that nobody reads until the test does."""
    process = subprocess.Popen(
        cli_args(port, "Alice", "--timestamps", "off", *options), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=client_env(), cwd=str(ROOT))
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _watch_memory(pid: int, done: Callable[[], bool], what: str,
                  timeout: float = TIMEOUT * 6) -> int:
    """Look at the client's memory until ``done()``; return the most seen."""
    peak = rss_bytes(pid)
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL)  # a poll interval, not a synchronisation
        peak = max(peak, rss_bytes(pid))
    return peak


def test_memory_stays_bounded_with_stdout_unread_and_then_drained_and_nothing_is_lost() -> None:
    with FloodServer(FLOOD_LINES) as flood, _client(flood.port) as client:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline() == b"-- logged in as Alice\n"
        at_rest = rss_bytes(client.pid)
        flood.start()

        # stdout not read: the client holds the server back.
        progress = {"sent": -1, "same": 0}

        def held_back() -> bool:
            progress["same"] = progress["same"] + 1 if flood.sent == progress["sent"] else 0
            progress["sent"] = flood.sent
            return progress["same"] >= STALLED_AFTER or flood.finished.is_set()

        peak = _watch_memory(client.pid, held_back, "the server to be held back or done")
        assert not flood.finished.is_set(), "the client took the whole flood in"
        assert peak - at_rest < MEMORY_BOUND, (at_rest, peak)

        # stdout read as fast as it comes: every line arrives, memory stays bounded.
        counted = {"lines": 0}

        def drain() -> None:
            assert client.stdout is not None
            while data := os.read(client.stdout.fileno(), 65536):
                counted["lines"] += data.count(b"\n")

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        peak = _watch_memory(client.pid, lambda: counted["lines"] >= FLOOD_LINES,
                             "every flooded line on stdout")
        assert peak - at_rest < MEMORY_BOUND, (at_rest, peak)
        client.stdin.close()
        assert client.wait(TIMEOUT) == 0
        reader.join(TIMEOUT)
        assert counted["lines"] == FLOOD_LINES + 1  # and "-- logged out"
        assert flood.sent == flood.total


SPEED_LINES = 20_000


def _cpu_for_flood(*options: str) -> float:
    """CPU seconds the client spends taking in and writing out the flood."""
    with FloodServer(SPEED_LINES) as flood, piped_client(flood.port, "Alice", "--timestamps",
                                                         "off", *options) as client:
        client.read_line()  # logged in
        before = cpu_seconds(client.process.pid)
        flood.start()
        for _ in range(SPEED_LINES):
            client.read_line()
        used = cpu_seconds(client.process.pid) - before
        client.close_stdin()
        assert client.wait() == 0
    return used


def test_lines_for_people_cost_about_what_raw_lines_cost() -> None:
    raw = _cpu_for_flood("--raw")
    for_people = _cpu_for_flood()
    assert for_people < 3 * raw, (for_people, raw)


SCRIPT_LINES = 20_000


def test_a_script_sending_while_the_server_floods_it_finishes_and_loses_nothing() -> None:
    # The stand-in server sends its whole flood before it reads a command (the
    # real one, too, reads no more commands from a client while output to it
    # is queued): the client must take the flood in while its commands wait.
    text = "x" * 150

    def echo(line: str) -> bytes:
        quoted = line.removeprefix("broadcast ")
        return b"<To everyone> " + quoted[1:-1].encode() + b"\n"

    script = f"broadcast {text}\n".encode() * SCRIPT_LINES
    with FakeServer(FLOOD_LINE * SCRIPT_LINES, answer=echo) as fake:
        result = run_cli(cli_args(fake.port, "Alice", "--raw"), script, timeout=TIMEOUT * 6)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    flooded = FLOOD_LINE.decode().rstrip("\n")
    assert lines[0] == "<User Alice is online.>"
    assert lines[1:SCRIPT_LINES + 1] == [flooded] * SCRIPT_LINES
    assert lines[SCRIPT_LINES + 1:-1] == [f"<To everyone> {text}"] * SCRIPT_LINES
    assert lines[-1] == "<User Alice is offline.>"
