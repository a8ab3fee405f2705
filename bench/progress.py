"""One progress bar (``rich``) that redraws in place and disappears when done.

Drawn on stderr, and only when stdout and stderr are both terminals and
``rich`` is installed; otherwise there is no bar at all (logs and pipes stay
clean).  The bar never refreshes on its own thread: ``update`` redraws at most
five times a second from the caller, so the harness's CPU figure (which counts
this process) does not pay for a repaint thread.  Notes (warnings, errors) go
to stderr above the bar, unless disabled.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.stage = ""
        self.drawn = 0.0
        self._bar: Any = None
        self._task: Any = None
        if enabled and sys.stdout.isatty() and sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )
                from rich.progress import Progress as RichProgress
            except ImportError:
                return
            self._bar = RichProgress(
                TextColumn("{task.description}", style="bold"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
                auto_refresh=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("starting", total=1)

    def set_stage(self, text: str) -> None:
        """What the whole run is at (``N=500 1/3``), shown before each phase."""
        self.stage = text

    def start(self, label: str, total: int) -> None:
        if self._bar is not None:
            desc = f"{self.stage} {label}".strip()[:40]
            self._bar.update(self._task, description=desc, total=max(1, total), completed=0)
            self._bar.refresh()
            self.drawn = time.monotonic()

    def update(self, value: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=value)
            now = time.monotonic()
            if now - self.drawn >= 0.2:
                self.drawn = now
                self._bar.refresh()

    def done(self) -> None:
        """The phase is over; the bar stays until the next phase or ``close``."""

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Remove the bar from the screen (it is transient)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
