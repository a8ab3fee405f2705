"""Scriptable mode: commands from stdin line by line, server lines to stdout.

``printf 'chat Bob "hi"\\nbye\\n' | python -m cli 127.0.0.1 1234 Alice``

Two threads feed one queue -- one reads stdin, one reads the socket -- and
the main thread is its only consumer, so the order of events is decided in
one place and a server that goes away is noticed even while stdin is idle.
Stdin is read with ``os.read`` rather than through ``sys.stdin``: a daemon
thread blocked inside a buffered file object can deadlock interpreter
shutdown, a raw read cannot.

stdout carries exactly the server's lines (in their safe display form, see
:mod:`cli.display`), each flushed as it arrives; the client's own remarks go
to stderr.  At ``bye`` or end of input the client logs out and waits for the
server's confirmation.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from cli.connection import PROG, Connection, ConnectionLost
from cli.display import MAX_SERVER_LINE, ServerLine
from protocol import Bye, Command, LineBuffer, LineTooLong, ProtocolError, parse_command

# A script may queue many commands before bye; give the server time to work
# through them.
LOGOUT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class _Input:
    line: bytes | LineTooLong


@dataclass(frozen=True, slots=True)
class _InputEnded:
    pass


@dataclass(frozen=True, slots=True)
class _Closed:
    logout_confirmed: bool


_Item = _Input | _InputEnded | ServerLine | _Closed


def _read_stdin(fd: int, items: queue.Queue[_Item]) -> None:
    buffer = LineBuffer(MAX_SERVER_LINE)
    try:
        while data := os.read(fd, 65536):
            for line in buffer.feed(data):
                items.put(_Input(line))
        if buffer.pending:
            for line in buffer.feed(b"\n"):
                items.put(_Input(line))
    except OSError:
        pass
    items.put(_InputEnded())


def run_piped(conn: Connection, stdin_fd: int, out: TextIO, err: TextIO,
              logout_timeout: float = LOGOUT_TIMEOUT) -> int:
    """Run until ``bye``, end of input or the server going away; return the exit status."""
    items: queue.Queue[_Item] = queue.Queue()

    def show(line: ServerLine) -> None:
        # If whoever reads our output has gone (``| head -1``), the session
        # still runs to its end; there is just nobody left to show lines to.
        with contextlib.suppress(OSError):
            out.write(line.text + "\n")
            out.flush()

    conn.start(items.put, lambda confirmed: items.put(_Closed(confirmed)))
    threading.Thread(target=_read_stdin, args=(stdin_fd, items), name="stdin-reader",
                     daemon=True).start()
    line_number = 0
    try:
        while True:
            item = items.get()
            if isinstance(item, ServerLine):
                show(item)
            elif isinstance(item, _Closed):
                raise ConnectionLost
            elif isinstance(item, _InputEnded):
                break
            else:
                line_number += 1
                command = _command(item.line, line_number, err)
                if isinstance(command, Bye):
                    break
                if command is not None:
                    conn.send(command)
    except KeyboardInterrupt:
        pass  # Ctrl-C, SIGTERM, SIGHUP: log out as at the end of input
    conn.log_out()
    deadline = time.monotonic() + logout_timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            item = items.get(timeout=max(remaining, 0))
        except queue.Empty:
            err.write(f"{PROG}: the server did not confirm the logout within "
                      f"{logout_timeout:g} s\n")
            return 1
        if isinstance(item, ServerLine):
            show(item)
        elif isinstance(item, _Closed):
            if not item.logout_confirmed:
                raise ConnectionLost
            return 0


def _command(raw: bytes | LineTooLong, line_number: int, err: TextIO) -> Command | None:
    """Parse one input line; report a bad one on stderr and return None."""
    try:
        if isinstance(raw, LineTooLong):
            raise ProtocolError(f"longer than {raw.limit} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("not valid UTF-8") from None
        if not text.strip(" "):
            return None
        return parse_command(text)
    except ProtocolError as error:
        err.write(f"{PROG}: line {line_number} not sent: {error.reason}\n")
        err.flush()
        return None
