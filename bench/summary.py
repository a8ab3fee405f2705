"""Turn raw per-round results into medians, capacities, the harness check and goals.

``summarize`` adds to every run of a benchmark document: per system, each
figure of ``METRICS`` as the median over rounds (counts of lost and
duplicated deliveries are sums: one loss anywhere is a loss); the
capacities (bench/capacity.py); the harness check; and the goals
(bench/verdicts.py), each MET, MISSED or UNSURE (the rounds disagree).
bench/report.py prints the result.

The harness check is that the harness is not what is measured: the CPU the
harness (receivers and sender) spent per delivery, divided by the CPU Redis,
the cheapest server, spent per delivery, both at capacity.  Below 1 the
harness is cheaper than every server it drives; at or above 1 the figures of
that N are partly the harness's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench import capacity, systems, verdicts
from bench.stats import median

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Metric:
    label: str
    path: Path_
    agg: str = "median"  # or "sum"
    ratio: bool = True  # show the ratio to Redis
    narrow: bool = True  # in the default 80-column table
    scale: float = 1.0
    missing: str = "-"  # how an absent value prints


def _lat(kind: str, key: str) -> Path_:
    return ("broadcast", kind, key)


#: The step of each system's broadcast search that CPU figures are read at:
#: its capacity (the busiest passing step), or the first if none passed.
AT_CAP: Path_ = ("broadcast_curve", "cpu_step")
#: The same step of the direct-message search.
DM_CAP: Path_ = ("direct_curve", "cpu_step")

METRICS: list[Metric] = [
    Metric("broadcast capacity/s", ("broadcast_curve", "capacity"), narrow=False),
    Metric("DM capacity msg/s", ("direct_curve", "capacity"), narrow=False),
    Metric("broadcast p50 ms", _lat("kernel_ms", "p50")),
    Metric("broadcast p90 ms", _lat("kernel_ms", "p90"), narrow=False),
    Metric("broadcast p99 ms", _lat("kernel_ms", "p99")),
    Metric("broadcast p99.9 ms", _lat("kernel_ms", "p99.9"), narrow=False),
    Metric("broadcast max ms", _lat("kernel_ms", "max"), narrow=False),
    Metric("  harness-stamped p50", _lat("per_recipient_ms", "p50"), narrow=False),
    Metric("  harness-stamped p99", _lat("per_recipient_ms", "p99"), narrow=False),
    Metric("to last recipient p50", ("broadcast", "to_last_ms", "p50"), narrow=False),
    Metric("to last recipient p99", ("broadcast", "to_last_ms", "p99")),
    Metric("broadcast lost", ("broadcast", "lost"), "sum", False),
    Metric("broadcast duplicated", ("broadcast", "duplicated"), "sum", False),
    Metric("DM p50 ms", ("direct_curve", "steps", 0, "kernel_ms", "p50")),
    Metric("DM p99 ms", ("direct_curve", "steps", 0, "kernel_ms", "p99")),
    Metric("DM lost", ("direct_curve", "steps", 0, "lost"), "sum", False, narrow=False),
    Metric("presence p50 ms", ("presence", "kernel_ms", "p50")),
    Metric("presence p99 ms", ("presence", "kernel_ms", "p99")),
    Metric("presence to last p50", ("presence", "to_last_ms", "p50"), narrow=False),
    Metric("presence lost", ("presence", "lost"), "sum", False, narrow=False),
    Metric("login storm s", ("storm", "seconds")),
    Metric("login storm lost", ("storm", "lost"), "sum", False, narrow=False),
    Metric("server CPU us/deliv.", (*AT_CAP, "server_cpu_per_1k"), scale=1000.0),
    # The server's CPU split: user mode (its own code, the Python interpreter
    # or Redis's C) and system mode (the kernel's sends, receives and epoll).
    Metric("  user us/deliv.", (*AT_CAP, "server_user_cpu_per_1k"), narrow=False, scale=1000.0),
    Metric("  system us/deliv.", (*AT_CAP, "server_system_cpu_per_1k"), narrow=False, scale=1000.0),
    Metric("harness CPU us/deliv.", (*AT_CAP, "harness_cpu_per_1k"), ratio=False, scale=1000.0),
    Metric(
        "  receivers us/deliv.",
        (*AT_CAP, "receivers_cpu_per_1k"),
        ratio=False,
        narrow=False,
        scale=1000.0,
    ),
    Metric(
        "  sender us/deliv.",
        (*AT_CAP, "sender_cpu_per_1k"),
        ratio=False,
        narrow=False,
        scale=1000.0,
    ),
    Metric("DM server CPU us/msg", (*DM_CAP, "server_cpu_per_1k"), narrow=False, scale=1000.0),
    Metric("DM user CPU us/msg", (*DM_CAP, "server_user_cpu_per_1k"), scale=1000.0),
    Metric("DM system CPU us/msg", (*DM_CAP, "server_system_cpu_per_1k"), scale=1000.0),
    Metric("server RSS KB/conn", ("memory", "kb_per_conn"), missing="n/a"),
    Metric("sender lag p99 ms", (*AT_CAP, "sender_lag_ms", "p99"), ratio=False, narrow=False),
    Metric("foreign load, cores", (*AT_CAP, "foreign_cores"), ratio=False, narrow=False),
]
#: Computed after the medians: harness CPU per delivery / Redis server CPU per delivery.
HARNESS_RATIO = "harness/Redis CPU"
#: Below this N the goals are not judged: a few clients on loopback say
#: little about capacity (the --quick run).
GOAL_MIN_N = 100
#: Goals of earlier rounds that still hold: every client served at these N
#: with nothing lost, and the login storm against the asyncio yardstick.
GOAL_STORM_N = 5000
GOAL_SERVED_N = (500, 5000, 10_000)


def dig(obj: Any, path: Path_) -> Any:
    for key in path:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))


def summarize(doc: dict[str, Any]) -> None:
    """Add ``summary``, ``spread``, ``capacity``, ``harness`` and ``goals`` to
    every run (in place)."""
    for run in doc["runs"]:
        summary: dict[str, dict[str, Any]] = {}
        spread: dict[str, dict[str, list[float]]] = {}
        for name in run["systems"]:
            rounds = [r[name] for r in run["rounds"] if name in r]
            row: dict[str, Any] = {}
            for m in METRICS:
                values = [dig(r, m.path) for r in rounds]
                if m.scale != 1.0:
                    values = [v * m.scale if _num(v) else v for v in values]
                if m.agg == "sum":
                    present = [v for v in values if v is not None]
                    row[m.label] = sum(present) if present else None
                else:
                    row[m.label] = median(values)
            row["errors"] = [r["error"] for r in rounds if "error" in r]
            summary[name] = row
            spread[name] = {
                key: [v for r in rounds if _num(v := dig(r, (key, "capacity")))]
                for key in ("broadcast_curve", "direct_curve")
            }
        red = summary.get(systems.REDIS)
        for row in summary.values():
            anchor = red["server CPU us/deliv."] if red else None
            row[HARNESS_RATIO] = ratio(row["harness CPU us/deliv."], anchor)
        run["summary"], run["spread"] = summary, spread
        run["capacity"] = capacity.summarize(run)
        ratios = {n: r for n, row in summary.items() if (r := row[HARNESS_RATIO]) is not None}
        worst = max(ratios, key=ratios.__getitem__) if ratios else None
        redis_cpu = [
            cost * r["delivered"] / 1000
            for r in (dig(x, (systems.REDIS, *AT_CAP)) for x in run["rounds"])
            if r and _num(cost := r.get("server_cpu_per_1k")) and _num(r.get("delivered"))
        ]
        run["harness"] = {
            # Redis's CPU in its broadcast phase: below MIN_CPU_S the ratio is tick noise.
            "redis_cpu_s": min(redis_cpu) if redis_cpu else None,
            "worst_ratio_to_redis": ratios[worst] if worst else None,
            "worst_system": worst,
            # In that system's own run: harness CPU / that server's CPU, per delivery.
            "worst_ratio_to_own_server": ratio(
                summary[worst]["harness CPU us/deliv."], summary[worst]["server CPU us/deliv."]
            )
            if worst
            else None,
            "below_redis": (ratios[worst] < 1.0) if worst else None,
        }
        run["goals"] = goals(run)


def ratio(value: Any, anchor: Any) -> float | None:
    if not _num(value) or not _num(anchor) or anchor <= 0:
        return None
    return value / anchor


def goals(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals this run can judge: capacity ratios (bench.verdicts.GOALS)
    from N = GOAL_MIN_N, and the served-without-loss and login-storm goals at
    their own N.  Each has ``verdict``: MET, MISSED, UNSURE or None."""
    s = run["summary"]
    out = verdicts.goals(run, GOAL_MIN_N)

    def add(text: str, ok: bool | None, detail: str) -> None:
        mark = {True: "MET", False: "MISSED", None: None}[ok]
        out.append({"goal": text, "verdict": mark, "met": ok, "detail": detail})

    ours, peer = s.get(systems.PRIMARY), s.get(systems.PEER)
    me, n = systems.PRIMARY, run["n"]
    if ours and peer and n == GOAL_STORM_N:
        r = ratio(peer["login storm s"], ours["login storm s"])
        met = None if r is None else r >= 3.0
        add(f"{me} login storm >= 3x faster than {systems.PEER}", met, f"{fmt(r)}x")
    if ours and n in GOAL_SERVED_N:
        lost = [ours[k] for k in ("broadcast lost", "presence lost", "login storm lost")]
        met = not ours["errors"] and all(v == 0 for v in lost if v is not None)
        add(f"{me} served N={n} with zero lost", met, f"lost {lost}, errors {len(ours['errors'])}")
    return out


def fmt(v: Any, missing: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if abs(v) >= 10_000:
        return f"{v / 1000:.1f}k" if abs(v) < 100_000 else f"{v / 1000:,.0f}k"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    v = float(f"{v:.3g}")  # three figures first: 9.9999 is 10.0, not 10.00
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"
