"""The one exception type of the protocol package."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Raised for any input that does not follow the wire protocol.

    ``reason`` is a short lower-case phrase meant for the peer, e.g.
    ``"unterminated quote"``; the server puts it into an ``<Invalid input: ...>``
    line.  Like h11's ``ProtocolError`` this is the only exception the parsers
    raise on arbitrary input, which the hypothesis tests check.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
