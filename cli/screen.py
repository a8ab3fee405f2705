"""The interactive client's screen: the prompt and what is drawn around it.

The prompt line, with the messages still waiting for the server's answer
above it; the bottom toolbar (online, reconnecting, kicked); Ctrl-C; the
input history, which keeps no passwords; the printer task that writes lines
above the prompt in order; and the hand-over of the terminal to a password
prompt with no echo, and back.

:class:`Screen` is a part of :class:`cli.interactive.Client`, which keeps the
session (state, commands, the network task).  The prompt and the toolbar are
redrawn from the session's state at every refresh, so the screen reads the
attributes it declares below and writes only its own (and ``ended``, when it
ends the prompt).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.application.current import set_app
from prompt_toolkit.completion import Completer
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import ColorDepth, Output
from prompt_toolkit.renderer import print_formatted_text as render_fragments

from cli.completion import Roster
from cli.outbox import ANSWER_TIMEOUT, Outbox, Outgoing
from cli.present import STYLE, Line, Presenter

SHOWN_PENDING = 5


class Address(Protocol):
    """Where the client connects: the toolbar names it."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class _End(Exception):
    """Ends the running prompt: the session is over."""


class _PasswordWanted(Exception):
    """Ends the running prompt for a moment: a password is to be asked, no echo."""


_SECRET_WORDS = ("register", "password", "/register", "/password")


def _keep_secrets_out(history: History) -> History:
    """Lines that may carry a password (``register ...``, ``password ...``)
    are not kept in the history, nor written to the history file."""
    append = history.append_string

    def append_string(string: str) -> None:
        if string.lstrip(" ").split(" ", 1)[0].lower() not in _SECRET_WORDS:
            append(string)

    history.append_string = append_string  # type: ignore[method-assign]
    return history


class Screen:
    """The prompt, the toolbar and the printer of one client session."""

    # What the screen shows of the session (set by the session).
    options: Address
    name: str
    query: str | None
    state: str  # connecting | online | waiting | kicked | leaving
    retry_at: float
    ended: bool
    presenter: Presenter
    roster: Roster
    outbox: Outbox

    def __init__(self, history_file: Path | None, completer: Completer) -> None:
        self.output_queue: asyncio.Queue[tuple[StyleAndTextTuples, bool]] = asyncio.Queue()
        self._secret_request: tuple[asyncio.Future[str | None], str] | None = None
        self._draft = ""
        history: History = InMemoryHistory()
        if history_file is not None:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            history_file.touch(mode=0o600, exist_ok=True)
            history = FileHistory(str(history_file))
        history = _keep_secrets_out(history)
        self.session: PromptSession[str] = PromptSession(
            message=self._prompt,
            bottom_toolbar=self._toolbar,
            completer=completer,
            complete_while_typing=False,
            history=history,
            key_bindings=self._keys(),
            style=STYLE,
            refresh_interval=0.5,
            enable_history_search=False,
        )

    async def read_line(self) -> str | None:
        """The next line typed; None once the session is over, or the
        terminal has gone.  A password asked for meanwhile takes the
        prompt's place, and gives the prompt back with its draft."""
        while not self.ended:
            if self._secret_request is not None:
                await self._read_secret()
                continue
            draft, self._draft = self._draft, ""
            self.session.app.erase_when_done = False  # an accepted line stays in the scrollback
            try:
                return await self.session.prompt_async(pre_run=self._end_prompt_if_due,
                                                       default=draft)
            except _PasswordWanted:
                continue
            except (EOFError, KeyboardInterrupt, _End):
                return None
            except OSError:
                # The terminal has gone (hung up): leave, logging out first.
                return None
        return None

    # -- the prompt -------------------------------------------------------------

    def _keys(self) -> KeyBindings:
        keys = KeyBindings()

        @keys.add("c-c")
        def _(event: KeyPressEvent) -> None:
            buffer = event.app.current_buffer
            if buffer.text:
                buffer.reset()  # a half-typed line is cleared, not sent
            else:
                event.app.exit(exception=KeyboardInterrupt())

        return keys

    def _width(self) -> int:
        try:
            columns = self.session.app.output.get_size().columns
        except Exception:
            columns = 80
        return max(columns - 1, 20)

    def _prompt(self) -> StyleAndTextTuples:
        out: StyleAndTextTuples = []
        # The pending rows live only while the prompt does: not in the
        # scrollback copy of the prompt that an accepted line leaves behind.
        # Only messages: users/help/bye answers are shown when they come.
        pending = [] if self.session.app.is_done else [
            entry for entry in self.outbox.pending() if entry.is_message]
        now = time.monotonic()
        if len(pending) > SHOWN_PENDING:
            out.append(("class:pending", f"   ... and {len(pending) - SHOWN_PENDING} more\n"))
        for entry in pending[-SHOWN_PENDING:]:
            out.extend(self._pending_row(entry, now))
            out.append(("", "\n"))
        target = f"→{self.query}" if self.query else ""
        out.append(("class:prompt", f"{self.name}{target}> "))
        return out

    def _pending_row(self, entry: Outgoing, now: float) -> StyleAndTextTuples:
        late = now - entry.sent_at >= ANSWER_TIMEOUT
        if entry.is_message:
            label = f"… you → {entry.recipient}: "
            body = entry.text
        else:
            label = f"… {type(entry.command).__name__.lower()}"
            body = ""
        note = (f"  (no answer from the server after {ANSWER_TIMEOUT:g} s)" if late
                else "  (sending)")
        style = "class:late" if late else "class:pending"
        rows = self.presenter.rows(Line(style, label, body, style),
                                   self._width() - len(note))
        row = rows[0] + ([(style, " …")] if len(rows) > 1 else [])
        return [*row, (style, note)]

    def _toolbar(self) -> StyleAndTextTuples:
        where = f"{self.options.host}:{self.options.port}"
        if self.state == "online":
            others = self.roster.names()
            who = ", ".join(others) if others else "nobody else"
            return [("class:toolbar.online", f" online at {where}"), ("", f" | with: {who}")]
        if self.state == "waiting":
            seconds = max(0.0, self.retry_at - time.monotonic())
            return [("class:toolbar.offline",
                     f" disconnected from {where}; retrying in {seconds:.0f} s")]
        if self.state == "kicked":
            return [("class:toolbar.offline",
                     f" kicked out of {where}; /reconnect to come back, /quit to leave")]
        if self.state == "leaving":
            return [("", " logging out...")]
        return [("class:toolbar.offline", f" connecting to {where}...")]

    def _end_prompt(self) -> None:
        self.ended = True
        self._end_prompt_if_due()

    def _end_prompt_if_due(self) -> None:
        """End a running prompt if the session is over.

        Also the prompt's ``pre_run`` hook: an end that came while the prompt
        was starting must still end it as soon as it runs.
        """
        app = self.session.app
        if app.future is None or app.future.done():
            return
        if self.ended:
            app.exit(exception=_End())
        elif self._secret_request is not None:
            self._draft = app.current_buffer.text  # given back when the prompt returns
            # The prompt makes way for the password's: no copy of it stays behind.
            app.erase_when_done = True
            app.exit(exception=_PasswordWanted())

    async def ask_secret(self, prompt: str) -> str | None:
        """Ask for a password with no echo (and no history); None if not given."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._secret_request = (future, prompt)
        self._end_prompt_if_due()
        return await future

    async def _read_secret(self) -> None:
        request = self._secret_request
        assert request is not None
        future, prompt = request
        secret: str | None = None
        try:
            secret = await PromptSession[str](is_password=True).prompt_async(prompt)
        except (EOFError, KeyboardInterrupt, OSError):
            secret = None
        finally:
            self._secret_request = None
            if not future.done():
                future.set_result(secret or None)

    def _refresh(self) -> None:
        self.session.app.invalidate()

    # -- output, in order, above the prompt --------------------------------------

    def show(self, line: Line, bell: bool = False) -> None:
        self.output_queue.put_nowait((self.presenter.formatted(line, self._width()), bell))

    async def _printer(self) -> None:
        while True:
            batch = [await self.output_queue.get()]
            while not self.output_queue.empty():
                batch.append(self.output_queue.get_nowait())
            try:
                # This task was started outside the prompt's context: name the
                # application, or run_in_terminal would not erase the prompt first.
                with set_app(self.session.app):
                    await run_in_terminal(lambda batch=batch: self._write(batch))
            except OSError:
                pass  # the terminal has gone (hung up): nobody to show it to
            finally:
                for _ in batch:
                    self.output_queue.task_done()

    def _write(self, batch: list[tuple[StyleAndTextTuples, bool]]) -> None:
        output: Output = self.session.app.output
        depth = ColorDepth.from_env() or output.get_default_color_depth()
        with contextlib.suppress(OSError):  # the terminal has gone
            for fragments, bell in batch:
                if bell:
                    output.bell()
                render_fragments(output, fragments, STYLE, color_depth=depth)
            output.flush()
