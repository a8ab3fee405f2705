"""Scriptable mode: commands from stdin line by line, server lines to stdout.

``printf 'chat Bob "hi"\\nbye\\n' | python -m cli 127.0.0.1 1234 Alice``

Two threads feed the main thread -- one reads stdin, one reads the socket --
and a third sends our commands, all through one bounded hand-off
(:mod:`cli.handoff`): the main thread is its only consumer, so the order of
events is decided in one place and a server that goes away is noticed even
while stdin is idle; and while stdout is behind, the socket is not read, so
memory stays bounded however much the server sends.  Stdin is read with
``os.read`` rather than through ``sys.stdin``: a daemon thread blocked inside
a buffered file object can deadlock interpreter shutdown, a raw read cannot.

stdout carries the server's lines as they arrive -- all that has arrived is
written and flushed before the client waits for more: for people
(``✓ you → Bob: hi``, see :mod:`cli.present`, no colour), or with ``--raw``
exactly the wire lines in their safe display form (see :mod:`cli.display`).
The client's own remarks go to stderr, one line each, naming the input line.
At ``bye`` or end of input the client logs out and waits for the server's
confirmation.  Every message is matched with the server's answer
(:mod:`cli.outbox`); if any line was refused -- here or by the server -- or not
delivered, the exit status is 3.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from cli.connection import PROG, Connection, ConnectionLost
from cli.display import MAX_SERVER_LINE, ServerLine
from cli.handoff import Closed, Handoff
from cli.outbox import Outbox, Resolution
from cli.present import Line, Presenter
from cli.typed import (
    HELP_TEXT,
    AskPasswords,
    Quit,
    Refused,
    Send,
    SetQuery,
    ShowHelp,
    interpret,
)
from protocol import Bye, LineBuffer, LineTooLong, format_command

EXIT_UNDELIVERED = 3

# A script may queue many commands before bye; give the server time to work
# through them.
LOGOUT_TIMEOUT = 10.0
# Characters of server lines gathered before they are written out at once.
OUTPUT_BATCH = 64 * 1024


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


def _read_stdin(fd: int, handoff: Handoff[_Item]) -> None:
    buffer = LineBuffer(MAX_SERVER_LINE)
    try:
        while data := os.read(fd, 65536):
            handoff.put_input([_Input(line) for line in buffer.feed(data)], len(data))
        if buffer.pending:
            handoff.put_input([_Input(line) for line in buffer.feed(b"\n")], 0)
    except OSError:
        pass
    handoff.put_input([_InputEnded()], 0)


def _send_commands(conn: Connection, handoff: Handoff[_Item]) -> None:
    try:
        while True:
            conn.send_bytes(handoff.outgoing())
    except Closed:
        pass
    except ConnectionLost:
        conn.abort()  # the reader sees the end and reports it, as for any close


class _Output:
    """stdout and stderr.  Server lines are written out a batch at a time --
    all that has arrived, before waiting for more -- rather than one system
    call each; a remark on stderr first writes out what came before it."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out = out
        self._err = err
        self._lines: list[str] = []
        self._size = 0

    def line(self, text: str) -> None:
        self._lines.append(text)
        self._size += len(text)
        if self._size >= OUTPUT_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self._size = 0
        # If whoever reads our output has gone (``| head -1``), the session
        # still runs to its end; there is just nobody left to show lines to.
        with contextlib.suppress(OSError):
            self._out.write(text)
            self._out.flush()

    def complain(self, text: str) -> None:
        self.flush()
        self._err.write(f"{PROG}: {text}\n")
        self._err.flush()


def run_piped(conn: Connection, stdin_fd: int, out: TextIO, err: TextIO, name: str,
              raw: bool = False, timestamps: str | None = None,
              logout_timeout: float = LOGOUT_TIMEOUT) -> int:
    """Run until ``bye``, end of input or the server going away; return the exit status."""
    handoff: Handoff[_Item] = Handoff()
    try:
        return _run(conn, handoff, stdin_fd, _Output(out, err), name, raw, timestamps,
                    logout_timeout)
    finally:
        handoff.close()


def _run(conn: Connection, handoff: Handoff[_Item], stdin_fd: int, output: _Output,
         name: str, raw: bool, timestamps: str | None, logout_timeout: float) -> int:
    presenter = Presenter(name, timestamps)
    outbox = Outbox(name)
    failures = 0
    query: str | None = None
    write = output.line
    complain = output.complain

    def resolved(resolution: Resolution) -> None:
        nonlocal failures
        entry = resolution.outgoing
        if resolution.delivered is True or not resolution.reason:
            return
        failures += 1
        what = (f"not delivered to {entry.recipient}" if entry.is_message
                else "refused")
        complain(f"line {entry.tag} {what}: {resolution.reason}")
        if entry.is_message and not raw:
            write(presenter.text(Line("", f"✗ not delivered to {entry.recipient}: ",
                                      f"{resolution.reason}. You wrote: {entry.text}")))

    def show(line: ServerLine) -> None:
        resolutions, was_reply = outbox.on_event(line.event)
        for resolution in resolutions:
            resolved(resolution)
        if raw:
            write(line.text)
        elif not was_reply or any(r.delivered or not r.reason for r in resolutions):
            write(presenter.text(presenter.event(line.event, line.text)))

    def take(timeout: float | None = None, with_input: bool = True) -> _Item | None:
        item = handoff.take(0, with_input)
        if item is None:
            output.flush()  # nothing more has arrived: show what has, before waiting
            item = handoff.take(timeout, with_input)
        return item

    conn.start(handoff.put_server, lambda confirmed: handoff.put_server([_Closed(confirmed)], 0))
    threading.Thread(target=_read_stdin, args=(stdin_fd, handoff), name="stdin-reader",
                     daemon=True).start()
    threading.Thread(target=_send_commands, args=(conn, handoff), name="sender",
                     daemon=True).start()
    line_number = 0
    try:
        while True:
            item = take()
            if isinstance(item, ServerLine):
                show(item)
            elif isinstance(item, _Closed):
                output.flush()
                raise ConnectionLost
            elif isinstance(item, _InputEnded):
                break
            elif isinstance(item, _Input):
                line_number += 1
                action = _action(item.line, query)
                match action:
                    case None:
                        pass
                    case Quit():
                        break
                    case Refused(reason):
                        failures += 1
                        complain(f"line {line_number} not sent: {reason}")
                    case ShowHelp():
                        write(HELP_TEXT)
                    case AskPasswords():
                        failures += 1
                        complain(f"line {line_number} not sent: /register and /password ask "
                                 "on a terminal; a script sends register \"<password>\" or "
                                 "password \"<old>\" \"<new>\"")
                    case SetQuery(target):
                        query = target
                    case Send(command):
                        outbox.sent(command, time.monotonic(), tag=line_number)
                        handoff.send(format_command(command))
    except KeyboardInterrupt:
        pass  # Ctrl-C, SIGTERM, SIGHUP: log out as at the end of input
    outbox.sent(Bye(), time.monotonic())
    handoff.send(conn.logging_out())
    deadline = time.monotonic() + logout_timeout
    while True:
        item = take(max(deadline - time.monotonic(), 0), with_input=False)
        if item is None:
            complain(f"the server did not confirm the logout within {logout_timeout:g} s")
            return 1
        if isinstance(item, ServerLine):
            show(item)
        elif isinstance(item, _Closed):
            if not item.logout_confirmed:
                output.flush()
                raise ConnectionLost
            for entry in outbox.drop_all():
                if entry.is_message:
                    resolved(Resolution(entry, None, "the server never answered"))
            output.flush()
            return EXIT_UNDELIVERED if failures else 0


def _action(raw: bytes | LineTooLong, query: str | None) -> object:
    """Interpret one input line; an undecodable or overlong one is refused."""
    if isinstance(raw, LineTooLong):
        return Refused(f"longer than {raw.limit} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Refused("not valid UTF-8")
    return interpret(text, query)
