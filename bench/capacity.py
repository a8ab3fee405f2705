"""Capacity at a latency objective: the search, and the per-run capacity table.

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

A run's rounds are summarized per workload and system (``summarize``: the
median capacity, its range) and printed as one table per workload
(``table_lines``).  The goals, which compare two systems round by round, are
``bench.verdicts``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
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


# -- per-run summary and table ------------------------------------------------


def summarize(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per workload and system: median capacity over rounds, its range, and
    whether every round reached it."""
    out: dict[str, dict[str, Any]] = {}
    for key, _what in WORKLOADS:
        rows: dict[str, Any] = {}
        for name in run["systems"]:
            found = [r[name][key] for r in run["rounds"]
                     if is_number(_get(r, name, key, "capacity"))]
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
    return float(v) if is_number(v) else None


def is_number(v: Any) -> bool:
    """A figure to compute with: an int, or a float that is not NaN."""
    return isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))
