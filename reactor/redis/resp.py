"""What a server says to Redis and how it reads the answers, without sockets.

Redis's wire format (RESP) is written by ``hiredis.pack_command`` and read by
``hiredis.Reader``, a parser that is fed bytes and hands back whole replies:
sans-IO, as :mod:`protocol` is for the chat.  This module adds what a link
does with them, so that every driver shares it -- the cluster's threads
(:mod:`reactor.cluster.link`) and the select loop's own non-blocking sockets
(:mod:`reactor.cluster.loop_link`):

* :class:`Scripts`: a set of Lua scripts, by name, called by their SHA;
* :class:`Batch`: the script calls queued since the last write, as one write,
  and the matching of its replies to the calls (a ``MULTI``/``EXEC`` when
  there are several; the calls that Redis did not know the script for are
  sent again after loading the scripts, once);
* :class:`Refusals`: the log of Redis refusing calls, a line per episode;
* :func:`read_inbox` and :func:`inbox_entries`: one blocking read of the
  node's inbox stream, and its reply as ``(id, fields)`` entries.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis

log = logging.getLogger("reactor")

# A reply that never came: Redis was unreachable, or the call timed out, or
# Redis refused it (logged).
UNAVAILABLE = object()

Reply = Any  # a script's reply (a list), or UNAVAILABLE
Entry = tuple[bytes, dict[bytes, bytes]]  # an inbox entry: its id and its fields

BATCH = 512  # script calls per write

# One command's bytes, from str/bytes/int/float arguments.  (Cast: hiredis's
# stub types its argument as a tuple of one.)
pack = cast(Callable[[tuple[object, ...]], bytes], hiredis.pack_command)

_MULTI = pack(("MULTI",))
_EXEC = pack(("EXEC",))


@dataclass(frozen=True)
class Scripts:
    """Lua scripts by name, each called with one key, ``key``."""

    texts: dict[str, str]
    key: str
    #: What EVALSHA names each script by: loaded on every (re)connection,
    #: then each call is a plain EVALSHA (no SCRIPT EXISTS round trip first).
    shas: dict[str, str] = field(init=False)
    #: The commands that load them all (one reply each).
    load: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shas", {name: hashlib.sha1(text.encode()).hexdigest()
                                          for name, text in self.texts.items()})
        object.__setattr__(self, "load", b"".join(pack(("SCRIPT", "LOAD", text))
                                                  for text in self.texts.values()))


class ProtocolError(Exception):
    """Redis sent something this link did not ask for: the connection is
    dropped, as for an outage (it cannot be trusted to match replies)."""


@dataclass(slots=True)
class Call:
    """One script call: its reply goes to ``on_reply``, on the chat thread."""

    script: str
    argv: Sequence[object]
    on_reply: Callable[[Reply], None]


class Replies:
    """Replies parsed from what a connection received, in order."""

    __slots__ = ("_reader",)

    def __init__(self) -> None:
        # Error replies come back as hiredis.ReplyError objects, not raised:
        # one refused call is that call's alone.
        self._reader = hiredis.Reader()

    def feed(self, data: bytes) -> Iterator[Reply]:
        """Take ``data`` and yield every reply now complete."""
        reader = self._reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                yield reply
        except hiredis.ProtocolError as error:
            raise ProtocolError(f"unreadable reply from Redis: {error}") from None


def is_error(reply: Reply) -> bool:
    return isinstance(reply, hiredis.ReplyError)


class Batch:
    """The script calls sent in one write, and their replies as they come.

    Several go as one ``MULTI``/``EXEC``: Redis answers a blocked ``XREAD``
    after each command, so a plain pipeline of broadcasts would wake the
    other nodes' inbox readers with the first entry alone and leave the rest
    for their next read (two sends per recipient there instead of one).
    After ``EXEC`` they read the whole batch at once.  (Nothing is rolled
    back: each script answers for itself, as in a plain pipeline.)

    A call whose script Redis does not have (``NOSCRIPT``: after ``SCRIPT
    FLUSH``, or a Redis that restarted under a connection that survived) did
    not run, so it is sent again, once, after loading the scripts: ``add``
    returns the bytes to send for that.  The replies are handed over only
    when every call has its own, in the order of the calls.
    """

    __slots__ = ("calls", "data", "scripts", "_expected", "_received", "_replies", "_missing",
                 "_skip")

    def __init__(self, calls: list[Call], scripts: Scripts) -> None:
        self.calls = calls
        self.scripts = scripts
        self._missing: list[int] | None = None  # the calls being retried
        self._replies: list[Reply] = []
        self._skip = 0  # replies to the scripts' loading, before the retry's
        self.data = self._request(calls)

    def _request(self, calls: list[Call]) -> bytes:
        shas, key = self.scripts.shas, self.scripts.key
        commands = [pack(("EVALSHA", shas[call.script], 1, key, *call.argv)) for call in calls]
        if len(commands) > 1:
            commands = [_MULTI, *commands, _EXEC]
        self._expected = len(commands)
        self._received: list[Reply] = []
        return b"".join(commands)

    @property
    def done(self) -> bool:
        return len(self._replies) == len(self.calls) and not self._missing

    def add(self, reply: Reply) -> bytes | None:
        """Take the next reply of this batch; returns what to send next, if
        the batch needs a second round (scripts to load, calls to retry)."""
        if self._skip:
            self._skip -= 1
            if is_error(reply):
                log.error("Loading scripts into Redis failed: %s", reply)
            return None
        received = self._received
        received.append(reply)
        if len(received) < self._expected:
            return None
        replies = self._unwrap(received)
        if self._missing is not None:  # the retry's replies, into their places
            for index, retried in zip(self._missing, replies, strict=True):
                self._replies[index] = retried
            self._missing = []
            return None
        self._replies = replies
        missing = [index for index, one in enumerate(replies)
                   if is_error(one) and str(one).startswith("NOSCRIPT")]
        if not missing:
            return None
        self._missing = missing
        self._skip = len(self.scripts.texts)
        return self.scripts.load + self._request([self.calls[index] for index in missing])

    def _unwrap(self, received: list[Reply]) -> list[Reply]:
        if len(received) == 1:
            return received
        answer = received[-1]
        if isinstance(answer, list) and len(answer) == self._expected - 2:
            return answer
        # EXECABORT (a call refused when queued) or no EXEC: none of them ran.
        refused = next((one for one in received[1:-1] if is_error(one)), answer)
        return [refused] * (self._expected - 2)

    def outcomes(self, refusals: Refusals) -> list[Reply]:
        """The calls' replies, once done; an error reply (told to
        ``refusals``) is UNAVAILABLE."""
        replies = list(self._replies)
        for index, reply in enumerate(replies):
            if is_error(reply):
                refusals.refused(self.calls[index].script, reply)
                replies[index] = UNAVAILABLE
            else:
                refusals.ran()
        return replies


class Refusals:
    """Redis refusing script calls (out of memory under ``noeviction``, a
    replica, a script error) is logged as an episode: a line when it starts
    (or the refusal changes), a line when calls run again.  A line per
    refused call would be several a second per node: every lease renewal.

    One per connection, used by the thread that reads its replies."""

    __slots__ = ("where", "_refusal", "_count")

    def __init__(self, where: str) -> None:
        self.where = where  # for log lines
        self._refusal = ""  # the first word of the error ("OOM"), or ""
        self._count = 0

    def refused(self, script: str, error: Reply) -> None:
        self._count += 1
        refusal = str(error).split(" ", 1)[0]
        if refusal != self._refusal:
            self._refusal = refusal
            log.error("Redis at %s refuses script calls (%s: %s); what needs them is refused"
                      " until it runs them again", self.where, script, error)

    def ran(self) -> None:
        if self._refusal:
            log.warning("Redis at %s runs script calls again (%d were refused)", self.where,
                        self._count)
            self._refusal = ""
            self._count = 0


def read_inbox(inbox: str, after_id: bytes, count: int, block_ms: int) -> bytes:
    """One read of an inbox from just after ``after_id``: at most ``count``
    entries, waiting up to ``block_ms`` for the first."""
    return pack(("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", inbox, after_id))


def inbox_entries(reply: Reply) -> list[Entry]:
    """The entries of a ``read_inbox`` reply (none if it timed out)."""
    if not reply:
        return []
    if is_error(reply) or not isinstance(reply, list):
        raise ProtocolError(f"reading the inbox: {reply}")
    entries = []
    for entry_id, fields in reply[0][1]:
        fields = fields or []
        entries.append((entry_id, dict(zip(fields[::2], fields[1::2], strict=True))))
    return entries
