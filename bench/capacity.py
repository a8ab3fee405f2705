"""Capacity at a latency objective: the search, the verdicts, and their table.

A system's **capacity** for a workload is the highest offered delivery rate
it carries with p99 latency at or under the objective and nothing lost.
Offered load is open loop (``bench.harness.driver.open_loop``), so a server
that falls behind shows it as latency instead of slowing the sender down.

The search (``search``) offers the rates of a ladder in rising order until
one fails, then bisects between the last rate that passed and the first that
failed (geometric midpoints: the ladder is geometric, and a ratio is what the
goals compare).  Three bisections of a ladder of doublings bracket the
capacity within 2^(1/8), about 9 %.  A ladder step that fails on latency
alone is measured once more before the climb ends.  A ladder whose top rate
passes gives a lower bound only (``reached`` false), as does a failing step
that measured the harness rather than the server (``harness_limit``); a
failing first rate bisects downward.

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
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench import systems

Step = dict[str, Any]

#: Workloads with a capacity: (key in a system's results, what one delivery is).
WORKLOADS = (("broadcast_curve", "broadcast"), ("direct_curve", "direct message"))


def search(
    measure: Callable[[float], Step],
    ladder: Sequence[float],
    bisections: int,
) -> dict[str, Any]:
    """Offer the ``ladder`` rates, then bisect; return the steps and the capacity.

    ``measure(rate)`` runs one step at ``rate`` offered per second and returns
    a dict with at least ``ok`` (objective kept, nothing lost), optionally
    ``retry`` (a failure worth measuring again: latency only, nothing lost)
    and ``broken`` (the system can no longer be measured: clients dropped,
    server gone), which ends the search where it is.

    On the ladder, a step that failed on latency alone is measured once more
    and the rate fails only if that fails too: one stall of a shared machine
    would otherwise end the climb for good.  Bisection steps are measured once.
    A step may carry ``harness_limit`` (``harness_limit`` below says when): if
    the step that decided the lowest failing rate does, the capacity found is
    a lower bound, as when the ladder's top passes.
    """
    steps: list[Step] = []
    passed, failed = 0.0, math.inf

    def run(rate: float, again: bool) -> Step:
        nonlocal passed, failed
        step = measure(rate)
        step["offered"] = rate
        steps.append(step)
        if not step["ok"] and again and step.get("retry") and not step.get("broken"):
            step["retried"] = True
            return run(rate, again=False)
        if step["ok"]:
            passed = max(passed, rate)
        else:
            failed = min(failed, rate)
        return step

    for rate in ladder:
        step = run(rate, again=True)
        if not step["ok"] or step.get("broken"):
            break
    for _ in range(bisections if failed < math.inf else 0):
        if steps[-1].get("broken"):
            break
        mid = _round3(math.sqrt(passed * failed) if passed > 0 else failed / 2)
        if not passed < mid < failed:
            break
        run(mid, again=False)
    # The step that decided the lowest failing rate (a retry's, if retried):
    # if it measured the harness, not the server, the capacity is a lower bound.
    decided = [s for s in steps if s["offered"] == failed]
    harness = decided[-1].get("harness_limit") if decided else None
    return {
        "steps": steps,
        "capacity": passed,
        # False: the ladder's top rate passed, or the rate that failed was the
        # harness's limit; either way ``capacity`` is a lower bound.
        "reached": failed < math.inf and not harness,
        "first_failed": failed if failed < math.inf else None,
        "harness_limit": {"rate": failed, "why": harness} if harness else None,
    }


#: A step's machine was full when at least this share of its cores was busy.
FULL_MACHINE = 0.9
#: Cores other people's processes may keep busy for a step to be judged at
#: all: with more, their load, not the harness, may be what crowded the server.
QUIET_OTHERS = 0.25
#: Cores under which a server was crowded out.  Over a step's whole span
#: (warm-up and drain included) a server whose thread was saturated reads
#: 0.89-0.91 on the idle 2-core machine, and never under 0.8.
SERVER_STARVED = 0.8


def harness_limit(step: dict[str, Any], objective_ms: float, cores: int) -> str | None:
    """Why a failing step measured the harness rather than the server, or None.

    Either the sender fell behind its own schedule by more than the objective
    while the server took everything sent (its queue never full: the lag is
    the sender's own), or, with other people's processes quiet, the machine
    was full and the server had clearly less than a core: the harness
    (receivers and sender) took the rest, or read too slowly for the server
    to send.  A capacity whose failing step is the harness's is only a lower
    bound on the server's.
    """
    if step["ok"] or step.get("lost"):
        return None
    lag = _float((step.get("sender_lag_ms") or {}).get("p99"))
    if lag is not None and lag > objective_ms and not step.get("sender_held_back"):
        return f"the sender fell behind its schedule (p99 {lag:.0f} ms late)"
    figures = [_float(step.get(k)) for k in ("machine_cores", "server_cores", "harness_cores",
                                             "foreign_cores")]  # fmt: skip
    machine, server, harness, others = (v if v is not None else math.nan for v in figures)
    if None in figures:
        return None
    if machine >= FULL_MACHINE * cores and others <= QUIET_OTHERS and server < SERVER_STARVED:
        return (f"{machine:.2f} of {cores} cores busy: the server had {server:.2f}, "
                f"the harness {harness:.2f}, other processes {others:.2f}")  # fmt: skip
    return None


def _round3(x: float) -> float:
    """Three significant digits: rates a reader can compare at a glance."""
    if x <= 0:
        return x
    digits = 2 - math.floor(math.log10(x))
    return float(round(x, digits))


# -- verdicts ----------------------------------------------------------------


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
    if not a or not b or not _num(a.get("capacity")) or not _num(b.get("capacity")):
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


# -- per-run summary and table ------------------------------------------------


def summarize(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per workload and system: median capacity over rounds, its range, and
    whether every round reached it."""
    out: dict[str, dict[str, Any]] = {}
    for key, _what in WORKLOADS:
        rows: dict[str, Any] = {}
        for name in run["systems"]:
            found = [r[name][key] for r in run["rounds"] if _num(_get(r, name, key, "capacity"))]
            if not found:
                continue
            caps = [f["capacity"] for f in found]
            fails = [f["first_failed"] for f in found if f.get("first_failed")]
            rows[name] = {
                "capacity": statistics.median(caps),
                # When no rate passed: the capacity is below this one.
                "below": min(fails) if fails else None,
                "min": min(caps),
                "max": max(caps),
                "rounds": len(caps),
                "reached": all(f.get("reached", True) for f in found),
            }
        if rows:
            out[key] = rows
    return out


def table_lines(
    run: dict[str, Any], objective: dict[str, float], unit: dict[str, str]
) -> list[str]:
    """The 80-column capacity tables of one run (one per workload measured)."""
    lines: list[str] = []
    for key, what in WORKLOADS:
        rows = run.get("capacity", {}).get(key)
        if not rows:
            continue
        lines.append("")
        lines.append(
            f"{what.capitalize()} capacity: highest offered {unit[key]} with p99 <= "
            f"{objective[key]:g} ms, 0 lost"
        )
        # A ratio column only for an anchor that ran.
        anchors = [(a, f"x {label}") for a, label in ((systems.REDIS, "Redis"),
                   (systems.PRIMARY, systems.PRIMARY)) if a in rows]  # fmt: skip
        lines.append(
            f"{'':16}{'capacity':>10}{'rounds: min-max':>20}"
            + "".join(f"{label:>11}" for _a, label in anchors)
        )
        for name, row in rows.items():
            cap = capacity_text(row)
            span = f"{rate_text(row['min'])}-{rate_text(row['max'])}" if row["rounds"] > 1 else "-"
            ratios = [ratio_text(row, rows[a]) if name != a else "" for a, _label in anchors]
            line = f"{name:16}{cap:>10}{span:>20}" + "".join(f"{r:>11}" for r in ratios)
            lines.append(line.rstrip())
    return lines


def capacity_text(row: dict[str, Any]) -> str:
    """A summarized capacity as printed: ``61.2k``, ``>=5120k`` (the ladder's
    top passed, or the harness was the limit), ``<1,250`` (no rate tried passed)."""
    if row["capacity"] <= 0 and row["below"]:
        return "<" + rate_text(row["below"])
    return (">=" if not row["reached"] else "") + rate_text(row["capacity"])


def ratio_text(row: dict[str, Any], anchor: dict[str, Any] | None) -> str:
    """``row``'s capacity over ``anchor``'s as printed: ``>=`` or ``<=`` where one is a bound."""
    if not anchor or not anchor["capacity"] or not row["capacity"]:
        return "-"
    text = f"{row['capacity'] / anchor['capacity']:.2f}x"
    if not row["reached"] and anchor["reached"]:
        return ">=" + text
    if row["reached"] and not anchor["reached"]:
        return "<=" + text
    return text if row["reached"] else "-"


def rate_text(v: float) -> str:
    """A rate as the tables print it: 61.2k, 160k, 4,210, 0."""
    if v >= 10_000:
        return f"{v / 1000:.0f}k" if v >= 100_000 else f"{v / 1000:.1f}k"
    return f"{v:,.0f}"


def _get(r: dict[str, Any], *keys: str) -> Any:
    obj: Any = r
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _float(v: Any) -> float | None:
    return float(v) if _num(v) else None


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))
