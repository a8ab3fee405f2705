"""One progress bar for the whole run (``rich``), redrawn in place, gone when done.

The bar shows the whole run: how far it is and how long is left, estimated
from the parts planned (``plan``: one part per system and round, plus the
cluster's own phases) and corrected by how long the finished parts took.
Its text is what is being measured now, said once (``N=500 2/3 select:
broadcast 40k deliveries/s``).

Drawn on stderr, and only when stdout and stderr are both terminals and
``rich`` is installed; otherwise there is no bar at all (logs and pipes stay
clean).  The bar never refreshes on its own thread: ``update`` redraws at most
five times a second from the caller, so the harness's CPU figure (which counts
this process) does not pay for a repaint thread.  ``close`` removes it from
the screen; a later update draws it again (the run goes on after a table was
printed).  Notes (warnings, errors) go to stderr above the bar, unless disabled.
"""

from __future__ import annotations

import sys
import time
from typing import Any

#: Inside a part, progress by elapsed time stops short of the part's end, so
#: a part that overruns its estimate does not show the run as further on.
_PART_CAP = 0.95


class Progress:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.stage = ""
        self.label = ""
        self.drawn = 0.0
        self._bar: Any = None
        self._task: Any = None
        self._usable = enabled and sys.stdout.isatty() and sys.stderr.isatty()
        self._parts: list[float] = []  # estimated seconds of each planned part
        self._done = 0  # parts finished
        self._took = 0.0  # seconds the finished parts took
        self._part_start = time.monotonic()

    # -- the whole run ------------------------------------------------------
    def plan(self, estimates: list[float]) -> None:
        """The run's parts, in order, by estimated seconds."""
        self._parts = [max(0.1, e) for e in estimates]
        self._done, self._took = 0, 0.0
        self._part_start = time.monotonic()

    def next_part(self) -> None:
        """The current part is over; the next begins."""
        if self._done < len(self._parts):
            self._took += time.monotonic() - self._part_start
            self._done += 1
        self._part_start = time.monotonic()
        self._draw(force=True)

    def fraction_and_left(self) -> tuple[float, float | None]:
        """Share of the run done (0 to 1) and seconds left (None before any estimate)."""
        if not self._parts:
            return 0.0, None
        total = sum(self._parts)
        finished = sum(self._parts[: self._done])
        speed = self._took / finished if finished > 0 else 1.0  # actual / estimated
        current = self._parts[self._done] if self._done < len(self._parts) else 0.0
        elapsed = (time.monotonic() - self._part_start) / speed if speed > 0 else 0.0
        inside = min(elapsed, current * _PART_CAP)
        fraction = min(1.0, (finished + inside) / total)
        left = max(0.0, (total - finished - inside) * speed)
        return fraction, left

    # -- the current phase ----------------------------------------------------
    def set_stage(self, text: str) -> None:
        """Where the whole run is (``N=500 2/3``), shown before each phase."""
        self.stage = text

    def start(self, label: str, total: int) -> None:
        """A phase begins: ``label`` says what it measures."""
        self.label = label
        self._draw(force=True)

    def update(self, value: int) -> None:
        self._draw()

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

    # -- drawing ----------------------------------------------------------------
    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._usable or (not force and now - self.drawn < 0.2):
            return
        if self._bar is None and not self._open():
            return
        self.drawn = now
        fraction, left = self.fraction_and_left()
        desc = f"{self.stage} {self.label}".strip()
        desc = desc if len(desc) <= 46 else desc[:45] + "…"
        when = "" if left is None else f"{_clock(left)} left"
        self._bar.update(self._task, description=desc, completed=fraction, left=when)
        self._bar.refresh()

    def _open(self) -> bool:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, TaskProgressColumn, TextColumn
            from rich.progress import Progress as RichProgress
        except ImportError:
            self._usable = False
            return False
        self._bar = RichProgress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(bar_width=20),
            TaskProgressColumn(),
            TextColumn("{task.fields[left]}"),
            console=Console(stderr=True),
            transient=True,
            auto_refresh=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("", total=1.0, left="")
        return True


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"
