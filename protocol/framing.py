"""The receive buffer: bytes in, complete lines out, with a hard size limit.

Goals, in the manner of h11's ``_receivebuffer.py``:

* Work is O(bytes received).  A peer that dribbles one byte at a time or sends
  ten thousand lines in one segment must not make the server do quadratic
  work, so complete lines are cut out in one ``split`` per feed, not one
  ``del buffer[:n]`` per line.
* Memory is bounded by ``max_line`` whatever the peer sends.  A line that grows
  past the limit is dropped as it arrives and reported once as
  :class:`LineTooLong`; the bytes after its eventual newline are read normally,
  so the connection stays usable.
* ``feed(b"")`` means the input ended (or paused for good, see below): an
  unterminated last line is handed back as a line, so that a client which
  writes ``bye`` with no newline and closes -- as the original C client
  does -- is heard.  The server also calls it when a first line without a
  newline is followed by a pause, which is how that client sends its name.
* Lines are split on ``b"\\n"`` at the byte level, never with
  ``str.splitlines()``, which would also split on U+2028, U+0085 and friends
  and let one wire line turn into two.  A ``\\r`` before the newline is removed
  so that ``nc`` on a CRLF terminal and telnet work.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_LINE = 4096


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line exceeded the limit; its bytes were discarded."""

    limit: int


Received = bytes | LineTooLong


class LineBuffer:
    """Accumulates bytes from one peer and hands back complete lines.

    ``max_line`` counts the bytes of a line without its terminator.
    """

    __slots__ = ("_discarding", "_partial", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._partial = bytearray()
        # True while we are throwing away the rest of an overlong line.
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished line (never more than ``max_line + 1``)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[Received]:
        """Add ``data`` and return the lines it completes, in order.

        ``feed(b"")`` ends the pending line: what is held is returned as a
        line of its own (nothing, if nothing is held or an overlong line is
        being discarded: the rest of that line is still thrown away).
        """
        if (data[-1:] == b"\n" and len(data) <= self.max_line and not self._partial
                and not self._discarding and b"\r" not in data):
            # The common case: whole lines, none too long (the data is not),
            # nothing pending, no CR to remove.
            return data[:-1].split(b"\n")  # type: ignore[return-value]
        out: list[Received] = []
        if not data:
            if self._partial and not self._discarding:
                piece = bytes(self._partial)
                out.append(piece[:-1] if piece.endswith(b"\r") else piece)
            self._partial.clear()
            return out
        last_newline = data.rfind(b"\n")
        if last_newline < 0:
            self._extend_partial(data, out)
            return out
        head = data[:last_newline]
        tail = data[last_newline + 1 :]
        pieces = head.split(b"\n")
        # The first piece ends whatever was pending from earlier feeds.
        if self._discarding:
            # It is the end of an overlong line, already reported: drop it.
            self._discarding = False
            del pieces[0]
        elif self._partial:
            self._partial += pieces[0]
            pieces[0] = bytes(self._partial)
            self._partial.clear()
        limit = self.max_line
        for piece in pieces:
            if piece.endswith(b"\r"):
                piece = piece[:-1]
            out.append(piece if len(piece) <= limit else LineTooLong(limit))
        self._extend_partial(tail, out)
        return out

    def _extend_partial(self, data: bytes, out: list[Received]) -> None:
        if self._discarding or not data:
            return
        self._partial += data
        # +1 leaves room for the '\r' of a CRLF line that is exactly max_line.
        if len(self._partial) > self.max_line + 1:
            self._partial.clear()
            self._discarding = True
            out.append(LineTooLong(self.max_line))
