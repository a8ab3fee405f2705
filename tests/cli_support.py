"""Helpers for the terminal client's tests: the client in a pty or a pipe, and a fake server.

* :class:`Terminal` runs ``python -m cli`` in a real pseudo-terminal (pexpect)
  and feeds everything it writes to a pyte screen, so a test reads the screen
  as a person would see it.  pyte also answers the terminal queries
  prompt_toolkit makes (cursor position reports), as a real terminal does.
* :class:`PipedClient` runs the client with pipes and reads its output lines
  with deadlines.
* :class:`FakeServer` is a one-connection server that speaks just enough of
  the protocol to log a client in, then sends whatever bytes the test wants --
  the hostile server of the terminal-safety tests.

Nothing here sleeps to synchronise; every wait is for a condition with a
deadline, and a missed deadline fails with what was seen so far.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pexpect
import pyte

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
ROWS, COLS = 24, 80


def cli_args(port: int, name: str, *options: str, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "cli", *options, host, str(port), name]


def client_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TERM="xterm", PYTHONUNBUFFERED="1", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    for variable in ("COLUMNS", "LINES", "PROMPT_TOOLKIT_NO_CPR", "TMUX"):
        env.pop(variable, None)
    return env


class Terminal:
    """The client in a 24x80 pseudo-terminal, seen through a pyte screen."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self.exited = False
        self.child = pexpect.spawn(args[0], args[1:], dimensions=(ROWS, COLS),
                                   env={**client_env(), **(env or {})}, cwd=str(ROOT))
        # Replies to device status reports (prompt_toolkit asks where the
        # cursor is) go back to the program, as a terminal's would.
        self.screen.write_process_input = self.child.send

    # -- reading the screen ----------------------------------------------------

    @property
    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    @property
    def cursor_line(self) -> str:
        """The line the cursor is on: the input line while the prompt is up."""
        return self.lines[self.screen.cursor.y]

    def dump(self) -> str:
        return "\n".join(f"{n:2}|{line}" for n, line in enumerate(self.lines))

    def _pump(self, timeout: float) -> None:
        try:
            data = self.child.read_nonblocking(65536, timeout=timeout)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            self.exited = True
            return
        self.raw += data
        self.stream.feed(data)

    def wait_for(self, condition: Callable[[], bool], what: str,
                 timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.exited:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{self.dump()}")
            self._pump(min(remaining, 0.1))

    def wait_for_text(self, text: str, timeout: float = TIMEOUT) -> None:
        self.wait_for(lambda: any(text in line for line in self.lines), repr(text), timeout)

    def wait_for_input_line(self, expected: str, timeout: float = TIMEOUT) -> None:
        self.wait_for(lambda: self.cursor_line == expected, f"input line {expected!r}", timeout)

    def count(self, text: str) -> int:
        """How many screen lines contain ``text``."""
        return sum(text in line for line in self.lines)

    def has_line(self, line: str) -> bool:
        return line in self.lines

    def styles_of(self, text: str) -> list[pyte.screens.Char]:
        """The pyte characters (with their colours and attributes) of the first ``text`` on screen."""
        for y, line in enumerate(self.lines):
            x = line.find(text)
            if x >= 0:
                row = self.screen.buffer[y]
                return [row[x + i] for i in range(len(text))]
        raise AssertionError(f"{text!r} not on screen:\n{self.dump()}")

    # -- typing ----------------------------------------------------------------

    def type(self, text: str) -> None:
        self.child.send(text)

    def enter(self, line: str) -> None:
        self.child.send(line + "\r")

    # -- ending ----------------------------------------------------------------

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """Read until the program exits; return its exit status."""
        self.wait_for(lambda: self.exited, "the client to exit", timeout)
        self.child.wait()
        status = self.child.exitstatus
        assert status is not None, f"killed by signal {self.child.signalstatus}"
        return status

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close(force=True)


@contextlib.contextmanager
def terminal(port: int, name: str = "Alice", *options: str, logged_in: bool = True,
             env: dict[str, str] | None = None) -> Iterator[Terminal]:
    """A client in a pty (timestamps off unless ``options`` say otherwise).

    By default wait until it is logged in, its prompt up and the reply to
    its first ``users`` shown.
    """
    if not any(option.startswith("--timestamps") for option in options):
        options = ("--timestamps", "off", *options)
    term = Terminal(cli_args(port, name, *options), env)
    try:
        if logged_in:
            term.wait_for_text(f"-- logged in as {name}")
            term.wait_for_text("-- online (")
            term.wait_for_input_line(f"{name}>")
        yield term
    finally:
        term.close()


class PipedClient:
    """The client with stdin/stdout/stderr on pipes; output read line by line."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=client_env(), cwd=str(ROOT),
        )
        self.stdout: queue.Queue[bytes | None] = queue.Queue()
        self.stderr: queue.Queue[bytes | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._drain, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.stdout),
                                  (self.process.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
        for line in iter(stream.readline, b""):
            lines.put(line)
        lines.put(None)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode("utf-8") + b"\n")
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()

    def read_line(self, timeout: float = TIMEOUT, stream: str = "stdout") -> str:
        lines = self.stdout if stream == "stdout" else self.stderr
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {stream} line within {timeout}s") from None
        if line is None:
            lines.put(None)  # stay at end of file for later reads
            raise AssertionError(f"{stream} ended")
        return line.decode("utf-8").rstrip("\n")

    def expect(self, *expected: str, timeout: float = TIMEOUT) -> None:
        for line in expected:
            assert self.read_line(timeout) == line

    def rest(self, stream: str = "stdout", timeout: float = TIMEOUT) -> list[str]:
        """All remaining lines of a stream, up to its end."""
        lines = self.stdout if stream == "stdout" else self.stderr
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"{stream} did not end; have {out}") from None
            if line is None:
                lines.put(None)
                return out
            out.append(line.decode("utf-8").rstrip("\n"))

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        for reader in self._readers:
            reader.join(timeout=5)


@contextlib.contextmanager
def piped_client(port: int, name: str = "Alice", *options: str) -> Iterator[PipedClient]:
    client = PipedClient(cli_args(port, name, *options))
    try:
        yield client
    finally:
        client.close()


def run_cli(args: list[str], stdin: bytes = b"",
            timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run the client to completion with ``stdin`` as its input."""
    return subprocess.run(args, input=stdin, capture_output=True, timeout=timeout,
                          env=client_env(), cwd=str(ROOT), check=False)


class FakeServer:
    """A one-client stand-in server: logs the client in, then sends ``script`` raw.

    With ``password`` the name is registered: the server asks for it, says
    it was wrong until it is given, and only then logs the client in.

    It records every line the client sends (``received``), answers each with
    ``answer(line)`` if given (bytes, or None for no answer), and the test can
    send more at any time with :meth:`send`.  On ``bye`` it confirms the way
    the real server does (``<User NAME is offline.>``) and closes.
    """

    def __init__(self, script: bytes = b"",
                 answer: Callable[[str], bytes | None] | None = None,
                 password: str | None = None) -> None:
        self.script = script
        self.answer = answer
        self.password = password
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.received: list[str] = []
        self._conn: socket.socket | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn, contextlib.suppress(OSError):
            conn.settimeout(TIMEOUT * 3)
            reader = conn.makefile("rb")
            name = reader.readline().decode().strip()
            self.received.append(name)
            if self.password is not None and not self._password_given(conn, reader, name):
                return
            conn.sendall(f"<User {name} is online.>\n".encode() + self.script)
            self._conn = conn
            self._ready.set()
            for raw in reader:
                line = raw.decode().rstrip("\n")
                self.received.append(line)
                if line == "bye":
                    conn.sendall(f"<User {name} is offline.>\n".encode())
                    break
                if self.answer is not None:
                    reply = self.answer(line)
                    if reply:
                        conn.sendall(reply)

    def _password_given(self, conn: socket.socket, reader: IO[bytes], name: str) -> bool:
        """Ask for the password until it comes (True) or the client goes (False)."""
        conn.sendall(f"<Password required for {name}.>\n".encode())
        for raw in reader:
            self.received.append(raw.decode().rstrip("\n"))
            if raw.decode().rstrip("\n") == f'"{self.password}"':
                return True
            conn.sendall(f"<Wrong password for {name}.>\n".encode())
        return False

    def send(self, data: bytes) -> None:
        assert self._ready.wait(TIMEOUT), "the client never logged in"
        assert self._conn is not None
        self._conn.sendall(data)

    def wait_received(self, line: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.received:
            if time.monotonic() > deadline:
                raise AssertionError(f"the client never sent {line!r}; got {self.received}")
            time.sleep(0.01)  # a poll interval, not a synchronisation

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        self._thread.join(timeout=TIMEOUT)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
        self.close()


# -- a server that floods the client, and the client's process as /proc sees it --

FLOOD_LINE = b'<Broadcast from Bob: "' + b"hello world " * 8 + b'">\n'


class FloodServer:
    """Logs one client in, then, once :meth:`start` is called, sends ``lines``
    copies of :data:`FLOOD_LINE` as fast as the client takes them; ``sent``
    counts the bytes the client's side has accepted so far."""

    def __init__(self, lines: int) -> None:
        self.total = lines * len(FLOOD_LINE)
        self.sent = 0
        self.finished = threading.Event()
        self._go = threading.Event()
        self._lines = lines
        self.server = FakeServer()
        self.port = self.server.port
        self._thread = threading.Thread(target=self._flood, name="flood", daemon=True)
        self._thread.start()

    def _flood(self) -> None:
        if not self._go.wait(TIMEOUT * 6):
            return
        per_send = 512
        with contextlib.suppress(OSError, AssertionError):
            left = self._lines
            while left:
                count = min(per_send, left)
                self.server.send(FLOOD_LINE * count)
                self.sent += count * len(FLOOD_LINE)
                left -= count
            self.finished.set()

    def start(self) -> None:
        self._go.set()

    def close(self) -> None:
        self._go.set()
        with contextlib.suppress(OSError):
            if self.server._conn is not None:
                self.server._conn.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self._thread.join(TIMEOUT)

    def __enter__(self) -> FloodServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rss_bytes(pid: int) -> int:
    """The resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
