"""Interactive mode: a prompt with line editing, history and completion.

prompt_toolkit does the terminal work.  ``patch_stdout`` makes every
``print`` (ours and the server's lines) appear above the prompt, after which
the prompt is redrawn with whatever the user had half typed, cursor and all --
the original C client wrote straight over the input line instead.

Threads: the socket is read in the connection's reader thread, which hands
each line to the asyncio loop with ``call_soon_threadsafe``; everything else
(printing, the roster, ending the prompt when the server goes away) happens
on the loop, so none of it needs a lock.

``bye``, Ctrl-D (on an empty line, as in a shell), Ctrl-C, SIGTERM and
SIGHUP all log out: send ``bye``, wait up to :data:`LOGOUT_TIMEOUT` for the
server to confirm and close, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from prompt_toolkit import PromptSession
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout

from cli.completion import ChatCompleter, Roster
from cli.connection import PROG, Connection, ConnectionLost
from cli.display import ServerLine
from protocol import Bye, Command, ProtocolError, Users, parse_command

PROMPT = "> "
LOGOUT_TIMEOUT = 2.0

_T = TypeVar("_T")


class _ServerGone(Exception):
    """Ends a running prompt when the connection closes under it."""


class _Chat:
    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self.roster = Roster(name)
        # In-memory history only: chat lines are private and are not written
        # to disk behind the user's back.
        self.session: PromptSession[str] = PromptSession(
            completer=ChatCompleter(self.roster),
            complete_while_typing=False,
            history=InMemoryHistory(),
        )
        self.logging_out = False
        self.logout_confirmed = False
        self.leave_requested = False

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.closed = asyncio.Event()
        # Being terminated or losing the terminal is leaving too: log out
        # rather than vanish, and let prompt_toolkit restore the terminal mode.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self.loop.add_signal_handler(signum, self._leave)
        with patch_stdout():
            self.conn.start(self._on_loop(self._show), self._on_loop(self._connection_closed))
            # Learn who is online at once, for completion, and show it.
            self.conn.send(Users())
            if not await self._chat():
                raise ConnectionLost
            status = await self._log_out()
        return status

    async def _chat(self) -> bool:
        """Read and send commands until the user leaves (True) or the server goes (False)."""
        while not self.closed.is_set() and not self.leave_requested:
            try:
                text = await self.session.prompt_async(PROMPT, pre_run=self._end_prompt_if_due)
            except (EOFError, KeyboardInterrupt):
                return True
            except _ServerGone:
                return False
            # A paste can hold several lines; each is a command of its own.
            for line in text.split("\n"):
                command = self._parse(line)
                if isinstance(command, Bye):
                    return True
                if command is not None:
                    self.conn.send(command)
        return not self.closed.is_set()

    @staticmethod
    def _parse(text: str) -> Command | None:
        """Check a line locally, so a typo gets a clear reason without a round trip."""
        if not text.strip(" "):
            return None
        try:
            return parse_command(text)
        except ProtocolError as error:
            print(f'Not sent: {error.reason}. Type "help" for commands.', file=sys.stderr)
            return None

    async def _log_out(self) -> int:
        self.logging_out = True
        if not self.closed.is_set():
            self.conn.log_out()
        try:
            await asyncio.wait_for(self.closed.wait(), LOGOUT_TIMEOUT)
        except TimeoutError:
            print(f"{PROG}: the server did not confirm the logout within "
                  f"{LOGOUT_TIMEOUT:g} s", file=sys.stderr)
            return 1
        if not self.logout_confirmed:
            raise ConnectionLost
        return 0

    # -- called on the loop, from the reader thread ---------------------------

    def _on_loop(self, callback: Callable[[_T], None]) -> Callable[[_T], None]:
        def call_soon(argument: _T) -> None:
            # RuntimeError: the loop is already closed; the session is over.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(callback, argument)

        return call_soon

    def _show(self, line: ServerLine) -> None:
        self.roster.observe(line.event)
        print(line.text)

    def _connection_closed(self, logout_confirmed: bool) -> None:
        self.logout_confirmed = logout_confirmed
        self.closed.set()
        if not self.logging_out:
            self._end_prompt_if_due()

    def _leave(self) -> None:
        self.leave_requested = True
        self._end_prompt_if_due()

    def _end_prompt_if_due(self) -> None:
        """End a running prompt if the server has gone or the user must leave.

        Also the prompt's ``pre_run`` hook: an event that came while no
        prompt was running must still end the next one as soon as it starts.
        """
        app = self.session.app
        if app.future is None or app.future.done():
            return
        if self.closed.is_set():
            app.exit(exception=_ServerGone())
        elif self.leave_requested:
            app.exit(exception=EOFError())


def run_interactive(conn: Connection, name: str) -> int:
    """Chat at the terminal until the user leaves or the server goes away."""
    try:
        return asyncio.run(_Chat(conn, name).run())
    except KeyboardInterrupt:
        # A second Ctrl-C while waiting for the logout confirmation: bye was
        # already sent, the user just does not want to wait.
        return 0
