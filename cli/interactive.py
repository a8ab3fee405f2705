"""Interactive mode: a prompt_toolkit prompt that owns the terminal from the start.

Order of things: the prompt is drawn first, then the client connects and logs
in, so a key typed at any moment lands in the input line (``cli.__main__``
also turns terminal echo off before the slow imports, so nothing typed even
earlier is echoed raw).  Everything runs on one asyncio loop: the prompt, the
network task (connect, log in, read, reconnect) and the printer task that
writes lines above the prompt in order.  The prompt, the toolbar and the
printer are :mod:`cli.screen`; here is the session they show: its state,
what typed lines do, the network task and what arrives from the server.

Every line of output is a :class:`cli.present.Line`, wrapped to the terminal
width with a hanging indent and styled through prompt_toolkit (``NO_COLOR``
turns colours off).  Messages we send are shown as pending above the prompt
until the server answers; the answer (matched by :class:`cli.outbox.Outbox`)
then goes into the scrollback as delivered or not delivered.

When the connection drops without our ``bye`` the client says so, keeps the
prompt, draft and history, and reconnects with exponential backoff and
jitter, logging in again under the same name.  Leaving (``/quit``, ``bye``,
Ctrl-D, Ctrl-C on an empty line, SIGTERM, SIGHUP) logs out when connected and
simply exits when not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cli.completion import ChatCompleter, Roster
from cli.connection import (
    ANSWERED_IN_TLS,
    CONNECT_TIMEOUT,
    LOGIN_TIMEOUT,
    PASSWORD_VARIABLE,
    PROG,
    closed_before_verdict,
    connect_error,
    connect_reason,
    no_password,
    password_needed,
    refusal,
    speaks_tls,
)
from cli.display import MAX_SERVER_LINE, ServerLine, render
from cli.outbox import Outbox, Resolution
from cli.present import Line, Presenter, plain
from cli.screen import Screen
from cli.typed import (
    HELP_TEXT,
    AskPasswords,
    Quit,
    Reconnect,
    Refused,
    Send,
    SetQuery,
    ShowHelp,
    interpret,
)
from protocol import (
    Banned,
    Bye,
    ChangePassword,
    Command,
    Kicked,
    LineBuffer,
    Login,
    MessageFrom,
    PasswordChanged,
    Register,
    Registered,
    UsernameTaken,
    UserOffline,
    UserOnline,
    Users,
    format_command,
    format_password,
    password_problem,
    username_key,
)

LOGOUT_TIMEOUT = 2.0
FIRST_RETRY = 0.5
MAX_RETRY = 30.0


@dataclass(frozen=True, slots=True)
class Options:
    host: str
    port: int
    name: str
    raw: bool = False
    bell: bool = False
    timestamps: str | None = "%H:%M"
    history_file: Path | None = None
    tls: ssl.SSLContext | None = None  # verifying unless --insecure (cli.tls)


class _LoginFailed(Exception):
    """Could not connect or log in: ``str`` says so in full, ``brief`` in a few
    words (for a reconnect attempt's one line); ``taken`` for a ghost;
    ``final`` if trying again cannot help (a ban)."""

    def __init__(self, full: str, brief: str, taken: bool = False, final: bool = False) -> None:
        super().__init__(full)
        self.brief = brief
        self.taken = taken
        self.final = final


def backoff_delays(first: float = FIRST_RETRY, most: float = MAX_RETRY):  # type: ignore[no-untyped-def]
    """Retry delays: doubling from ``first`` to ``most``, each with jitter of up to half."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.0)
        delay = min(delay * 2, most)


class Client(Screen):
    """One chat session at the terminal: connecting, commands, what arrives."""

    options: Options

    def __init__(self, options: Options) -> None:
        self.options = options
        self.name = options.name
        self.presenter = Presenter(options.name, options.timestamps)
        self.roster = Roster(options.name)
        self.outbox = Outbox(options.name)
        self.query: str | None = None
        self.state = "connecting"  # connecting | online | waiting | kicked | leaving
        self.retry_at = 0.0
        self.writer: asyncio.StreamWriter | None = None
        self.bye_sent = False
        self.logged_out = asyncio.Event()
        self.fatal: str | None = None
        self.ended = False
        self.ever_online = False
        # An operator's kick or ban heard on this connection: the server's
        # close that follows is theirs, and is not undone by reconnecting.
        self.removed: Kicked | Banned | None = None
        self.reconnect_wanted = asyncio.Event()
        # The password of a registered name: from the environment, or as typed
        # (kept for reconnecting); a new one once the server confirms it.
        self.password: str | None = os.environ.get(PASSWORD_VARIABLE) or None
        self.password_from_environment = self.password is not None
        self._new_password: str | None = None
        self._tried_password: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        super().__init__(options.history_file,
                         ChatCompleter(self.roster, lambda: self.query is not None))

    # -- main --------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self._leave_by_signal)
        printer = asyncio.create_task(self._printer())
        network = asyncio.create_task(self._network())
        try:
            await self._chat()
            status = await self._leave(network)
        finally:
            network.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await network
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.output_queue.join(), LOGOUT_TIMEOUT)
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
            if self.writer is not None:
                self.writer.close()
        return status

    def _leave_by_signal(self) -> None:
        self._end_prompt()

    async def _chat(self) -> None:
        while (text := await self.read_line()) is not None:
            action = interpret(text, self.query)
            if action is None:
                continue
            if isinstance(action, Quit):
                return
            self._act(action)

    def _act(self, action: Send | SetQuery | ShowHelp | AskPasswords | Reconnect | Refused,
             ) -> None:
        match action:
            case AskPasswords(change):
                task = asyncio.get_running_loop().create_task(self._password_command(change))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            case Refused(reason):
                self.show(Line("class:error", "✗ not sent: ", reason, "class:error"))
            case ShowHelp():
                self.show(Line("class:info", "", HELP_TEXT))
            case Reconnect():
                if self.state == "kicked":
                    self.reconnect_wanted.set()
                else:
                    self.show(Line("class:info", "-- /reconnect is for after a kick: ",
                                   "the client reconnects by itself after a drop"))
            case SetQuery(None):
                if self.query:
                    self.show(Line("class:info", f"-- no longer talking to {self.query}"))
                self.query = None
            case SetQuery(target):
                self.query = target
                self.show(Line("class:info",
                               f"-- talking to {target}: plain lines go to {target}; "
                               "/query alone ends it"))
            case Send(command):
                self._send(command)

    async def _password_command(self, change: bool) -> None:
        """``/register`` or ``/password``: ask with no echo, twice for the new one."""
        old = None
        if change:
            old = await self.ask_secret("Current password: ")
            if old is None:
                return
        new = await self.ask_secret("New password: ")
        if new is None:
            return
        if await self.ask_secret("Again: ") != new:
            self.show(Line("class:error", "✗ not sent: ", "the two passwords differ",
                           "class:error"))
            return
        problem = password_problem(new)
        if problem is not None:
            self.show(Line("class:error", "✗ not sent: ", problem, "class:error"))
            return
        self._new_password = new
        self._send(ChangePassword(old, new) if old is not None else Register(new))

    def _send(self, command: Command) -> None:
        if self.state != "online" or self.writer is None:
            why = ("kicked out: /reconnect to come back" if self.state == "kicked"
                   else "reconnecting; see the bottom line")
            self.show(Line("class:error", "✗ not sent: ",
                           f"not connected to the server ({why})", "class:error"))
            return
        self.outbox.sent(command, time.monotonic())
        self.writer.write(format_command(command))
        self._refresh()

    async def _leave(self, network: asyncio.Task[None]) -> int:
        if self.fatal is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.output_queue.join(), LOGOUT_TIMEOUT)
            print(f"{PROG}: {self.fatal}", file=sys.stderr)
            return 1
        if self.state != "online" or self.writer is None:
            return 0
        self.state = "leaving"
        self.bye_sent = True
        self.outbox.sent(Bye(), time.monotonic())
        try:
            self.writer.write(format_command(Bye()))
            await asyncio.wait_for(self.logged_out.wait(), LOGOUT_TIMEOUT)
        except TimeoutError:
            print(f"{PROG}: the server did not confirm the logout within "
                  f"{LOGOUT_TIMEOUT:g} s", file=sys.stderr)
            return 1
        except OSError:
            return 0
        return 0

    # -- the network task --------------------------------------------------------

    async def _network(self) -> None:
        delays = backoff_delays()
        while True:
            self.state = "connecting"
            self._refresh()
            try:
                reader, writer, early = await self._log_in()
            except _LoginFailed as failure:
                if not self.ever_online or failure.final:
                    self.fatal = str(failure)
                    self._end_prompt()
                    return
                delay = next(delays)
                # One row per attempt: the address is on the bottom line already.
                why = (f"the name {self.name} is still taken (by our old connection?)"
                       if failure.taken else failure.brief)
                self.show(Line("class:failed", "-- reconnecting failed: ",
                               f"{why}; next try in {delay:.1f} s", "class:failed"))
                await self._wait(delay)
                continue
            delays = backoff_delays()
            self.writer = writer
            self.state = "online"
            if self.ever_online:
                self.show(Line("class:presence", f"-- reconnected as {self.name}"))
            self.ever_online = True
            self._refresh()
            self._send(Users())
            for line in early:
                self._on_line(line)
            reason = await self._read(reader)
            self.writer = None
            writer.close()
            if self.bye_sent:
                self.logged_out.set()
                return
            for entry in self.outbox.drop_all():
                if entry.is_message:
                    self._show_resolution(Resolution(
                        entry, None, "the connection dropped before the server answered"))
            removed, self.removed = self.removed, None
            if isinstance(removed, Banned):
                self.fatal = f"disconnected: {refusal(removed)}"
                self._end_prompt()
                return
            if isinstance(removed, Kicked):
                # The operator meant it: coming straight back would undo the
                # kick, so only the user's /reconnect does.
                self.state = "kicked"
                self.show(Line("class:failed", "-- kicked out by the server's operator: ",
                               "type /reconnect to come back, /quit to leave "
                               "(your draft is kept)", "class:failed"))
                self.reconnect_wanted.clear()
                await self.reconnect_wanted.wait()
                continue
            delay = next(delays)
            self.show(Line("class:failed", "-- disconnected from the server: ",
                           f"{reason}; reconnecting in {delay:.1f} s (your draft is kept)",
                           "class:failed"))
            await self._wait(delay)

    async def _wait(self, delay: float) -> None:
        self.state = "waiting"
        self.retry_at = time.monotonic() + delay
        self._refresh()
        await asyncio.sleep(delay)

    async def _log_in(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                     list[ServerLine]]:
        host, port = self.options.host, self.options.port
        try:
            tls = self.options.tls
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, limit=MAX_SERVER_LINE, ssl=tls,
                    server_hostname=host.strip("[]") if tls is not None else None,
                ),
                CONNECT_TIMEOUT)
        except (OSError, TimeoutError, UnicodeError, OverflowError) as error:
            raise _LoginFailed(connect_error(error, host, port, CONNECT_TIMEOUT),
                               connect_reason(error, CONNECT_TIMEOUT)) from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        who = f"cannot log in as {self.name}"

        def failed(reason: str, taken: bool = False, final: bool = False) -> _LoginFailed:
            return _LoginFailed(f"{who}: {reason}", reason, taken, final)

        attempt = 0
        heard = b""  # the server's first bytes: are they TLS?
        plain = self.options.tls is None
        try:
            writer.write(format_command(Login(self.name)))
            buffer = LineBuffer(MAX_SERVER_LINE)
            deadline = time.monotonic() + LOGIN_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise failed(f"no reply from the server within {LOGIN_TIMEOUT:g} s")
                try:
                    data = await asyncio.wait_for(reader.read(65536), remaining)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    data = b""  # closed with our name unread: a close all the same
                if not data:
                    raise failed(closed_before_verdict(heard, plain))
                if len(heard) < 3:
                    heard = (heard + data)[:3]
                    if plain and speaks_tls(heard):
                        raise failed(ANSWERED_IN_TLS)
                lines = [render(item) for item in buffer.feed(data)]
                for index, line in enumerate(lines):
                    reason = refusal(line.event)
                    if reason is not None:
                        raise failed(reason, taken=isinstance(line.event, UsernameTaken),
                                     final=isinstance(line.event, Banned))
                    if password_needed(line.event, username_key(self.name)):
                        self._on_line(line)
                        attempt += 1
                        given = await self._login_password(attempt)
                        if given is None:
                            raise failed(no_password(attempt))
                        writer.write(format_password(given))
                        deadline = time.monotonic() + LOGIN_TIMEOUT
                        continue
                    if isinstance(line.event, UserOnline) and self._is_me(line.event.name):
                        if attempt:
                            self.password = self._tried_password
                        self._buffer = buffer
                        if not self.ever_online:
                            self._on_line(line)
                        return reader, writer, lines[index + 1:]
                    self._on_line(line)
        except OSError as error:
            writer.close()
            raise failed(f"{error.strerror or error}") from None
        except _LoginFailed:
            writer.close()
            raise

    async def _login_password(self, attempt: int) -> str | None:
        """The password to send: the known one first, then asked for."""
        if attempt == 1 and self.password is not None:
            given: str | None = self.password
        elif self.password_from_environment:
            return None  # the environment's password is wrong: no one to ask
        else:
            given = await self.ask_secret(f"Password for {self.name}: ")
        self._tried_password = given
        return given

    async def _read(self, reader: asyncio.StreamReader) -> str:
        """Read until the connection ends; return why it ended."""
        buffer = self._buffer
        reason = "the server closed the connection"
        while True:
            try:
                data = await reader.read(65536)
            except OSError as error:
                reason = f"connection error ({error.strerror or error})"
                data = b""
            if not data:
                break
            for item in buffer.feed(data):
                self._on_line(render(item))
        if buffer.pending:
            for item in buffer.feed(b"\n"):
                self._on_line(render(item))
        return reason

    def _is_me(self, name: str) -> bool:
        return username_key(name) == username_key(self.name)

    # -- what arrives --------------------------------------------------------------

    def _on_line(self, line: ServerLine) -> None:
        event = line.event
        self.roster.observe(event)  # type: ignore[arg-type]
        if isinstance(event, Kicked | Banned):
            self.removed = event
        if self.bye_sent and isinstance(event, UserOffline) and self._is_me(event.name):
            self.logged_out.set()
        if isinstance(event, Registered | PasswordChanged) and self._is_me(event.name) \
                and self._new_password is not None:
            self.password, self._new_password = self._new_password, None  # for reconnecting
        resolutions, was_reply = self.outbox.on_event(event)
        bell = self.options.bell and isinstance(event, MessageFrom)
        if self.options.raw:
            self.show(Line("", "", line.text), bell)
            if resolutions:
                self._refresh()
            return
        for resolution in resolutions:
            self._show_resolution(resolution, line)
        if not was_reply:
            self.show(self.presenter.event(event, line.text), bell)
        self._refresh()

    def _show_resolution(self, resolution: Resolution, line: ServerLine | None = None) -> None:
        entry = resolution.outgoing
        if entry.is_message:
            if resolution.delivered:
                note = "✓ delivered after all: " if resolution.corrected else "✓ "
                self.show(Line("class:own", f"{note}you → {entry.recipient}: ", entry.text))
            else:
                maybe = "maybe " if resolution.delivered is None else ""
                self.show(Line("class:failed",
                               f"✗ {maybe}not delivered to {entry.recipient}: ",
                               f"{resolution.reason}. You wrote: {entry.text}"))
            return
        if line is not None and resolution.reason == "":
            self.show(self.presenter.event(line.event, line.text))
        elif resolution.reason and not isinstance(entry.command, Bye):
            name = type(entry.command).__name__.lower()
            self.show(Line("class:failed", f"✗ {name}: ", resolution.reason))
        elif line is not None:
            self.show(self.presenter.event(line.event, line.text))


def run_interactive(options: Options) -> int:
    """Chat at the terminal until the user leaves; return the exit status."""
    try:
        return asyncio.run(Client(options).run())
    except KeyboardInterrupt:
        return 0


__all__ = ["Client", "Options", "backoff_delays", "plain", "run_interactive"]
