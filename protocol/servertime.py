"""Server time on the wire: when a stored message was sent, as the stored-message lines carry it.

The server hands a time (milliseconds since the Unix epoch, UTC) and gets the
text; this module never reads a clock.  The form is IRCv3's ``server-time``
(``2026-12-07T06:17:43.123Z``): fixed width, UTC, so that lines sort as text
and no reader has to guess a zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from protocol.errors import LocalProtocolError, RemoteProtocolError

SERVER_TIME_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
_SERVER_TIME = re.compile(SERVER_TIME_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Four-digit years only, so the width stays fixed.
MAX_SERVER_TIME_MS = int((datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH)
                         / timedelta(milliseconds=1))


def format_server_time(milliseconds: int) -> str:
    """``milliseconds`` since the epoch as ``YYYY-MM-DDThh:mm:ss.sssZ``."""
    if not 0 <= milliseconds <= MAX_SERVER_TIME_MS:
        raise LocalProtocolError(f"a time out of range: {milliseconds} ms")
    moment = _EPOCH + timedelta(milliseconds=milliseconds)
    # strftime's %Y does not pad years below 1000 on every platform.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


def parse_server_time(text: str) -> int:
    """The milliseconds since the epoch that ``text`` writes."""
    if _SERVER_TIME.fullmatch(text) is None:
        raise RemoteProtocolError("not a server time")
    try:
        moment = datetime(
            int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
            int(text[14:16]), int(text[17:19]), int(text[20:23]) * 1000, tzinfo=UTC,
        )
    except ValueError:
        raise RemoteProtocolError("not a server time") from None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def check_server_time(text: str) -> str:
    """``text`` if it is a server time a parser reads back (for the formatters)."""
    try:
        parse_server_time(text)
    except RemoteProtocolError:
        raise LocalProtocolError(f"not a server time: {text!r}") from None
    return text
