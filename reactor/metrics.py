"""What the server counts, and the Prometheus text format it is read in.

Goals:

* Counting costs the hot paths one integer addition: :class:`ChatStats` is
  plain attributes, bumped where the thing happens, on the chat thread.
  Everything else (gauges: connections, queued bytes, the hash queue) is read
  from the server's own state when scraped, and costs nothing in between.
* The exposition is the Prometheus text format, version 0.0.4, written here
  with the standard library (the single-node server has no third-party
  dependency): one ``# HELP`` and one ``# TYPE`` line per family, then its
  samples; counters end in ``_total``; label values escaped (``\\``, ``"``,
  newline).  Label sets are fixed and small, so a scrape is bounded in size
  whatever clients do.

This module sits at the bottom of the server, beside :mod:`reactor.contracts`:
it imports nothing of the server.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: ``kind`` is "counter", "gauge" or "histogram";
    ``samples`` map label pairs (in order) to values (a histogram's: see
    :meth:`Histogram.metric`)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)


def counter(name: str, help: str, value: float | None = None, *,
            label: str = "", values: dict[str, int] | None = None,
            known: Iterable[str] = ()) -> Metric:
    """A counter (``name`` ends in ``_total``): one value, or one per value
    of ``label`` -- the ``known`` ones always shown (0 until it happens, so
    that a rate works from the first scrape), then any others counted."""
    return _family(name, "counter", help, value, label, values, known)


def gauge(name: str, help: str, value: float | None = None, *,
          label: str = "", values: dict[str, int] | None = None,
          known: Iterable[str] = ()) -> Metric:
    """A gauge: as :func:`counter`."""
    return _family(name, "gauge", help, value, label, values, known)


def _family(name: str, kind: str, help: str, value: float | None, label: str,
            values: dict[str, int] | None, known: Iterable[str]) -> Metric:
    if values is None:
        return Metric(name, kind, help, [((), 0.0 if value is None else value)])
    keys = list(known) + sorted(key for key in values if key not in known)
    return Metric(name, kind, help, [(((label, key),), values.get(key, 0)) for key in keys])


class Histogram:
    """A histogram counted in plain integers: ``observe`` is a bisection into
    the fixed bucket bounds and two additions, cheap enough for a hot path;
    the cumulative buckets of the text format are summed when scraped."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # upper bounds, increasing; +Inf is implied
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative
        self.total = 0.0  # the sum of the values observed

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def metric(self, name: str, help: str) -> Metric:
        """The family (``name_bucket`` by ``le``, ``name_sum``, ``name_count``)."""
        samples: list[tuple[Labels, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            samples.append(((("le", _number(float(bound))),), running))
        samples.append(((SUM,), self.total))
        samples.append(((COUNT,), running))
        return Metric(name, "histogram", help, samples)


# The pseudo-labels of a histogram's _sum and _count samples (see exposition).
SUM = ("", "_sum")
COUNT = ("", "_count")


def exposition(metrics: Iterable[Metric]) -> bytes:
    """The families in the text format, in the order given."""
    lines: list[str] = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        if metric.kind == "histogram":
            lines += _histogram_lines(metric)
            continue
        for labels, value in metric.samples:
            if labels:
                pairs = ",".join(f'{key}="{_escape_label(text)}"' for key, text in labels)
                lines.append(f"{metric.name}{{{pairs}}} {_number(value)}")
            else:
                lines.append(f"{metric.name} {_number(value)}")
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def _histogram_lines(metric: Metric) -> list[str]:
    lines = []
    for labels, value in metric.samples:
        (key, text), = labels
        if key:
            lines.append(f'{metric.name}_bucket{{{key}="{text}"}} {_number(value)}')
        else:
            lines.append(f"{metric.name}{text} {_number(value)}")
    return lines


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class ChatStats:
    """The chat's counters: plain integers, bumped on the chat thread, read
    when scraped.  Reasons are a few fixed words (the label values)."""

    __slots__ = ("accepted", "bytes_in", "bytes_out", "chat_lines", "closed", "commands",
                 "delivered_broadcast", "delivered_direct", "direct_handoff", "flood_delays",
                 "invalid_lines", "logins", "login_refusals", "not_delivered",
                 "received_broadcast", "received_direct", "refused")

    def __init__(self) -> None:
        self.accepted = 0  # connections admitted to the login
        self.refused: Counter[str] = Counter()  # connections refused at once, by reason
        self.logins = 0
        self.login_refusals: Counter[str] = Counter()
        self.received_direct = 0
        self.received_broadcast = 0
        self.delivered_direct = 0  # taken by the recipient's connection (or server)
        self.delivered_broadcast = 0  # copies handed to this server's users
        self.not_delivered = 0
        self.bytes_in = 0
        self.bytes_out = 0  # handed to the clients' connections (queued or sent)
        self.closed: Counter[str] = Counter()  # connections ended, by reason
        self.flood_delays = 0  # lines held back by flood control
        # Lines in by command: the hot one (chat) a plain integer, the others
        # by their class (named from protocol's table when scraped), and the
        # lines the parser refused.
        self.chat_lines = 0
        self.commands: Counter[type] = Counter()
        self.invalid_lines = 0
        # Seconds from taking a direct message to its handoff (the
        # recipient's connection took it, or the recipient's node answered).
        self.direct_handoff = Histogram(HANDOFF_BUCKETS)


# Upper bounds (seconds) of the direct message handoff histogram's buckets.
HANDOFF_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# Why a connection ended, from its close reason's first words: a fixed set,
# so that the label never takes a value a client chose.
CLOSE_REASONS = {
    "bye": "bye",
    "connection closed by peer": "peer_closed",
    "connection lost": "peer_closed",
    "connection error": "connection_error",
    "login timed out": "login_timeout",
    "slow consumer: cut to keep": "output_budget",
    "slow consumer": "slow_consumer",
    "kicked": "kicked",
    "banned": "banned",
    "too many wrong passwords": "wrong_passwords",
    "server full": "server_full",
    "too many connections": "too_many_from_address",
    "server shutting down": "shutdown",
    "did not close in time": "linger_expired",
    "internal error": "internal_error",
}
CLOSE_LABELS = tuple(dict.fromkeys(CLOSE_REASONS.values()))


def close_label(reason: str | None) -> str:
    """The label of a close reason: one of :data:`CLOSE_LABELS`, or "other"."""
    if reason is None:
        return "peer_closed"
    for start, label in CLOSE_REASONS.items():
        if reason.startswith(start):
            return label
    return "other"
