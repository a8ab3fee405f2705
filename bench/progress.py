"""A one-line progress bar on stderr (no tqdm): cheap, throttled, and quiet when piped.

When stderr is not a terminal (CI, pytest) it prints one line per finished
phase instead of redrawing, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.label = ""
        self.total = 0
        self.value = 0
        self.started = 0.0
        self.drawn = 0.0

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.value = label, max(1, total), 0
        self.started = time.monotonic()
        self.drawn = 0.0

    def update(self, value: int) -> None:
        self.value = value
        now = time.monotonic()
        if self.enabled and self.tty and now - self.drawn >= 0.1:
            self.drawn = now
            self._draw(end="")

    def done(self) -> None:
        if self.enabled:
            self._draw(end="\n")

    def note(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def _draw(self, end: str) -> None:
        width = 30
        filled = min(width, int(width * self.value / self.total))
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"{self.label:<34} [{bar}] {self.value}/{self.total} "
            f"{time.monotonic() - self.started:6.1f}s"
        )
        prefix = "\r" if self.tty else ""
        print(prefix + line, end=end, file=self.stream, flush=True)
