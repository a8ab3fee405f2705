"""The protocol's exceptions: one base class, and which side broke the rule.

As in h11, the question a caller needs answered is *whose* mistake it was:

* :class:`RemoteProtocolError` -- the peer sent something that is not the
  protocol.  Every parser (``parse_command``, ``parse_login``,
  ``parse_event``, ``decode_line``, ``unescape``) raises this and nothing
  else, whatever its input; the hypothesis tests check that.  The server
  answers it with an ``<Invalid input: ...>`` line and carries on.
* :class:`LocalProtocolError` -- our own code asked a formatter
  (``format_command``, ``format_event``) to write something the wire cannot
  carry: an empty message, an invalid username, a reason with a control
  character.  It is a bug on this side, not something to tell the peer.

Both are :class:`ProtocolError`, so ``except ProtocolError`` catches either.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Input or output that does not follow the wire protocol.

    ``reason`` is a short lower-case phrase meant for people, e.g.
    ``"unterminated quote"``; the server puts a remote error's reason into an
    ``<Invalid input: ...>`` line, so reasons are printable ASCII and never
    end in a period.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (raised by every parser)."""


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (raised by the formatters)."""
