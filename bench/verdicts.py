"""The goals: one system's capacity against another's, and their verdict lines.

Goals compare two systems measured in the same round, so a noisy minute on
a shared machine hits both sides of the ratio.  A goal is **MET** when every
round meets it, **MISSED** when every round misses it and **UNSURE** when the
rounds disagree; the line shows the median ratio, then every round's ratio in
round order: ``<=0.54x (rounds <=0.54x, <=0.54x, 0.15x)``.

A round's ratio is an interval, not always a number: ``0.15x`` (both
capacities found), ``>=1.09x`` (the system passed the ladder's top: its
capacity is a lower bound) or ``<=0.54x`` (the anchor passed it).  The
median is taken the same way: the median of the rounds' low ends and the
median of their high ends (``median_bounds``).  That is right because a
median never falls when one of its values rises: whatever the true ratios
inside their intervals, their median lies between those two medians.  So a
median of bounds is a bound in the same direction only as far as that rule
makes it one: rounds ``<=0.54x, <=0.54x, 0.15x`` give ``<=0.54x`` (not
``0.15x``, the one round measured), rounds ``>=1.09x, >=2.38x, 1.54x`` give
``>=1.54x``, and rounds ``>=1.2x, <=0.5x, 0.8x`` give exactly ``0.80x``.

The capacities themselves, and how a search finds them, are ``bench.capacity``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import systems
from bench.capacity import WORKLOADS, is_number, rate_text


@dataclass(frozen=True)
class Goal:
    """``system``'s capacity at least ``factor`` times ``anchor``'s, per workload."""

    system: str
    anchor: str
    factor: float


#: The issue's goals; a goal whose systems are not both in the run is not shown.
GOALS: tuple[Goal, ...] = (
    Goal(systems.PRIMARY, systems.REDIS, 0.9),
    Goal("threads", systems.PRIMARY, 0.75),
    Goal("asyncio", systems.PRIMARY, 0.8),
    Goal(systems.UVLOOP, systems.PRIMARY, 0.9),
    Goal(systems.TLS, systems.PRIMARY, 0.6),
    Goal(systems.WEB, systems.PRIMARY, 0.75),
)


def round_ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> tuple[float, float] | None:
    """Bounds (low, high) on capacity a / capacity b within one round, or None.

    A capacity not reached is a lower bound, so it widens the ratio on its
    side; a zero or missing anchor says nothing.
    """
    if not a or not b or not is_number(a.get("capacity")) or not is_number(b.get("capacity")):
        return None
    ca, cb = a["capacity"], b["capacity"]
    a_exact, b_exact = a.get("reached", True), b.get("reached", True)
    if cb <= 0 or not (a_exact or b_exact):
        return None
    r = ca / cb
    if ca <= 0 and a.get("first_failed"):  # below every rate tried: at most that one
        return 0.0, a["first_failed"] / cb
    if b_exact:
        return r, (r if a_exact else math.inf)
    return 0.0, r  # the anchor's capacity is a lower bound: the ratio at most r


def verdict(bounds: Sequence[tuple[float, float] | None], factor: float) -> str | None:
    """MET, MISSED or UNSURE over rounds; None when no round could judge."""
    per_round = []
    for b in bounds:
        if b is None:
            continue
        lo, hi = b
        per_round.append(True if lo >= factor else False if hi < factor else None)
    if not per_round:
        return None
    if all(v is True for v in per_round):
        return "MET"
    if all(v is False for v in per_round):
        return "MISSED"
    return "UNSURE"


def median_bounds(
    bounds: Sequence[tuple[float, float] | None],
) -> tuple[float, float] | None:
    """(low, high) bounds on the median of the rounds' true ratios, or None.

    Each round's true ratio lies in its (low, high).  The median is monotone
    in every value, so the true median lies between the median of the lows
    and the median of the highs; a round that judged nothing (None) is left
    out.  ``math.inf`` as a high end (a lower bound only) stays infinite in
    the median when it is in the middle, and 0 as a low end (an upper bound
    only) likewise.
    """
    judged = [b for b in bounds if b is not None]
    if not judged:
        return None
    return (statistics.median(lo for lo, _hi in judged),
            statistics.median(hi for _lo, hi in judged))  # fmt: skip


def bound_text(bound: tuple[float, float] | None) -> str:
    """A ratio interval as a goal line prints it: ``0.15x``, ``>=1.09x``,
    ``<=0.54x``, ``0.45-0.70x`` (between), ``-`` (nothing judged)."""
    if bound is None:
        return "-"
    lo, hi = bound
    low, high = f"{lo:.2f}", f"{hi:.2f}"
    if hi == math.inf:
        return f">={low}x" if lo > 0 else "-"
    if lo <= 0 and hi > 0:
        return f"<={high}x"
    if low == high:
        return f"{low}x"
    return f"{low}-{high}x"


def goals(run: dict[str, Any], min_n: int) -> list[dict[str, Any]]:
    """Every goal both of whose systems ran, for each workload with a capacity."""
    out: list[dict[str, Any]] = []
    if run["n"] < min_n:
        return out
    names = run["systems"]
    for key, what in WORKLOADS:
        for goal in GOALS:
            if goal.system not in names or goal.anchor not in names:
                continue
            if not any(r.get(goal.system, {}).get(key) for r in run["rounds"]):
                continue  # that workload was skipped
            bounds = [
                round_ratio(r.get(goal.system, {}).get(key), r.get(goal.anchor, {}).get(key))
                for r in run["rounds"]
            ]
            mark = verdict(bounds, goal.factor)
            limited = _harness_rounds(run["rounds"], (goal.system, goal.anchor), key)
            out.append(
                {
                    "goal": f"{goal.system} {what} capacity >= {goal.factor:g}x {goal.anchor}",
                    "verdict": mark,
                    "met": {"MET": True, "MISSED": False}.get(mark or ""),
                    "ratios": [None if b is None else list(b) for b in bounds],
                    "median": None if (m := median_bounds(bounds)) is None else list(m),
                    "detail": rounds_text(bounds) + limited,
                }
            )
    return out


def rounds_text(bounds: Sequence[tuple[float, float] | None]) -> str:
    """The median ratio (``median_bounds``), then every round's, in round order."""
    med = median_bounds(bounds)
    if med is None:
        return "no round measured both capacities"
    if len(bounds) == 1:
        return f"{bound_text(med)} (1 round: no spread to judge by)"
    return f"{bound_text(med)} (rounds {', '.join(map(bound_text, bounds))})"


def _harness_rounds(rounds: list[dict[str, Any]], names: tuple[str, ...], key: str) -> str:
    """Which rounds the harness, not a system, bounded (for a goal line): its
    limit reached at a failing step, or both systems past the ladder's top."""
    hits = [
        (i, name, limit["rate"])
        for i, r in enumerate(rounds, 1)
        for name in names
        if (limit := (r.get(name, {}).get(key) or {}).get("harness_limit"))
    ]
    # Both past the ladder's top: the harness offered no more, so the round
    # compares nothing (the top is set near what the harness can offer).
    topped = [
        i for i, r in enumerate(rounds, 1)
        if all((c := r.get(name, {}).get(key)) and c.get("first_failed") is None
               and not c.get("reached", True) for name in names)
    ]  # fmt: skip
    text = ""
    if hits:
        which = ", ".join(f"{name} in round {i} at {rate_text(rate)}" for i, name, rate in hits)
        text += f"; the harness's limit was reached ({which}), not the system's: a bound only"
    if topped:
        text += (f"; both passed the ladder's top in round{'s' if len(topped) > 1 else ''} "
                 f"{', '.join(map(str, topped))}: the harness offered no more, so the "
                 "systems are not compared there")  # fmt: skip
    return text
