"""Turn raw per-round results into capacities, medians, verdicts and a table.

The report leads with capacity (bench/capacity.py): per workload, the highest
offered rate each system carried within the latency objective with nothing
lost, as the median over rounds with the rounds' range, and its ratio to
Redis and to select; then the goals, each MET, MISSED or UNSURE (the rounds
disagree).  Below come the figures measured at one load (the first step of
the broadcast ladder, light for every system): latency, presence, login
storm, memory, and CPU per delivery at each system's capacity.  Every figure
is a median over rounds (counts of lost and duplicated deliveries are sums:
one loss anywhere is a loss).  Latency is kernel-stamped (when the delivery
reached the client socket, ``SO_TIMESTAMPNS``) unless labelled otherwise.

The harness row is the check that the harness is not what is measured: the
CPU the harness (receivers and sender) spent per delivery, divided by the CPU
Redis, the cheapest server, spent per delivery, both at capacity.  Below 1
the harness is cheaper than every server it drives; at or above 1 the figures
of that N are partly the harness's own, and the report says so.

The default table fits 80 columns (``wide=False``); ``wide=True`` adds every
other row (percentiles, harness-stamped latency, sender lag, foreign load).
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import capacity, systems
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
    Metric(
        "DM server CPU us/msg",
        ("direct_curve", "cpu_step", "server_cpu_per_1k"),
        narrow=False,
        scale=1000.0,
    ),
    Metric("server RSS KB/conn", ("memory", "kb_per_conn"), missing="n/a"),
    Metric("sender lag p99 ms", (*AT_CAP, "sender_lag_ms", "p99"), ratio=False, narrow=False),
    Metric("foreign load, cores", (*AT_CAP, "foreign_cores"), ratio=False, narrow=False),
]
#: Computed after the medians: harness CPU per delivery / Redis server CPU per delivery.
HARNESS_RATIO = "harness/Redis CPU"
#: /proc counts CPU in 10 ms ticks: with less than this much Redis CPU in a
#: broadcast phase, the ratio is too coarse to pass or fail (--quick, tiny N).
MIN_CPU_S = 0.2
#: Below this N the goals are not judged: a few clients on loopback say
#: little about capacity (the --quick run).
GOAL_MIN_N = 100
#: Goals of earlier rounds that still hold: every client served at these N
#: with nothing lost, and the login storm against the asyncio yardstick.
GOAL_STORM_N = 5000
GOAL_SERVED_N = (500, 5000, 10_000)
#: Other processes busy on more than this many cores: the run says so.
FOREIGN_WARN = 0.25


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
    """The goals this run can judge: capacity ratios (bench.capacity.GOALS)
    from N = GOAL_MIN_N, and the served-without-loss and login-storm goals at
    their own N.  Each has ``verdict``: MET, MISSED, UNSURE or None."""
    s = run["summary"]
    out = capacity.goals(run, GOAL_MIN_N)

    def add(text: str, ok: bool | None, detail: str) -> None:
        mark = {True: "MET", False: "MISSED", None: None}[ok]
        out.append({"goal": text, "verdict": mark, "met": ok, "detail": detail})

    ours, peer = s.get(systems.PRIMARY), s.get(systems.PEER)
    me, n = systems.PRIMARY, run["n"]
    if ours and peer and n == GOAL_STORM_N:
        r = ratio(peer["login storm s"], ours["login storm s"])
        met = None if r is None else r >= 3.0
        add(f"{me} login storm >= 3x faster than {systems.PEER}", met, f"{_fmt(r)}x")
    if ours and n in GOAL_SERVED_N:
        lost = [ours[k] for k in ("broadcast lost", "presence lost", "login storm lost")]
        met = not ours["errors"] and all(v == 0 for v in lost if v is not None)
        add(f"{me} served N={n} with zero lost", met, f"lost {lost}, errors {len(ours['errors'])}")
    return out


def _fmt(v: Any, missing: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if abs(v) >= 10_000:
        return f"{v / 1000:.1f}k" if abs(v) < 100_000 else f"{v / 1000:,.0f}k"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_ratio(r: float) -> str:
    return f"({r:.2f}x)" if r < 10 else f"({r:.0f}x)"


LABEL_WIDTH = 22
CELL_WIDTH = 14
COLUMNS = 80


def _blocks(names: list[str], wide: bool) -> list[list[str]]:
    """Systems in groups that fit the width (one group when wide)."""
    if wide:
        return [names]
    per = max(2, (COLUMNS - LABEL_WIDTH) // CELL_WIDTH)
    if len(names) <= per:
        return [names]
    if systems.REDIS in names:  # the anchor of every ratio: in each block, last
        others = [n for n in names if n != systems.REDIS]
        return [[*others[i : i + per - 1], systems.REDIS] for i in range(0, len(others), per - 1)]
    return [names[i : i + per] for i in range(0, len(names), per)]


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, COLUMNS, subsequent_indent=indent or "  ", break_on_hyphens=False)


def table(doc: dict[str, Any], wide: bool = False) -> str:
    """The report: per N the capacities, the goals, the figures at one load,
    the harness check and the noise; for a sweep, the figures against N."""
    lines = _wrap(f"Command: {doc['command']}")
    lines += _wrap(_machine_line(doc["machine"]))
    lines += _wrap(f"Receive path: {doc.get('receiver', 'Python')}")
    lines += _wrap("Log levels: " + ", ".join(f"{k} {v}" for k, v in doc["log_level"].items()))
    for note in doc["notes"]:
        lines += _wrap(f"Note: {note}")
    width = CELL_WIDTH if not wide else 20
    for run in doc["runs"]:
        cfg = run["config"]
        names = run["systems"]
        s = run["summary"]
        anchor = s.get(systems.REDIS)
        rounds = len(run["rounds"])
        lines.append("")
        lines += _wrap(
            f"N = {run['n']} clients, {rounds} round{'s' if rounds != 1 else ''}, systems "
            "interleaved; medians over rounds"
        )
        objective = {"broadcast_curve": cfg["objective_ms"], "direct_curve": cfg["dm_objective_ms"]}
        unit = {"broadcast_curve": "deliveries/s", "direct_curve": "messages/s"}
        lines += capacity.table_lines(run, objective, unit)
        lines += _goal_lines(run)
        lines.append("")
        lines += _wrap(
            f"At the first step ({_fmt(cfg['ladder'][0])} broadcast deliveries/s, "
            f"{_fmt(cfg['dm_ladder'][0])} DMs/s); CPU at capacity; medians"
            + (", (ratio to Redis)" if anchor else "")
        )
        metrics = [m for m in METRICS if wide or m.narrow]
        for block in _blocks(names, wide):
            lines.append(f"{'':{LABEL_WIDTH}}" + "".join(f"{n:>{width}}" for n in block))
            for m in metrics:
                cells = []
                for name in block:
                    v = s[name][m.label]
                    show = anchor and m.ratio and name != systems.REDIS
                    r = ratio(v, anchor[m.label]) if show else None
                    cell = _fmt(v, m.missing) + (" " + _fmt_ratio(r) if r is not None else "")
                    cells.append(f"{cell:>{width}}")
                lines.append(f"{m.label:{LABEL_WIDTH}}" + "".join(cells))
            if anchor:
                cells = [f"{_fmt(s[name][HARNESS_RATIO]):>{width}}" for name in block]
                lines.append(f"{HARNESS_RATIO:{LABEL_WIDTH}}" + "".join(cells))
        lines += _harness_lines(doc, run)
        if rounds > 1:
            lines.append("Round to round, capacity (broadcast deliveries/s; DMs/s): the noise")
            for name in names:
                sp = run["spread"][name]
                lines += _wrap(
                    f"  {name:14} "
                    + " / ".join(capacity.rate_text(v) for v in sp["broadcast_curve"])
                    + ";  "
                    + " / ".join(capacity.rate_text(v) for v in sp["direct_curve"]),
                    "      ",
                )
        lines += _floor_lines(run)
        lines += _foreign_lines(doc, run)
        for name in names:
            for err in s[name]["errors"]:
                lines += _wrap(f"  ERROR {name}: {err[:300]}", "    ")
            for note in _search_notes(run, name):
                lines += _wrap(f"  Note {name}: {note}", "    ")
    if doc["runs"] and (doc.get("sweep") or len(doc["runs"]) > 1):
        lines += ["", *_sweep_lines(doc), *_sweep_harness_lines(doc)]
    return "\n".join(lines)


_MARKS = {"MET": "MET   ", "MISSED": "MISSED", "UNSURE": "UNSURE", None: "n/a   "}


def _goal_lines(run: dict[str, Any]) -> list[str]:
    if run["n"] < GOAL_MIN_N:
        return ["", *_wrap(f"Goals: not judged below N = {GOAL_MIN_N} (a smoke run).")]
    if not run["goals"]:
        return []
    lines = ["", "Goals (ratios of capacities measured in the same round):"]
    for g in run["goals"]:
        lines += _wrap(f"  [{_MARKS[g['verdict']]}] {g['goal']}: {g['detail']}", " " * 11)
    return lines


def _foreign_lines(doc: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """The CPU-contention warning: other processes' load during broadcast steps."""
    foreign = [
        v
        for r in run["rounds"]
        for res in r.values()
        for step in (dig(res, ("broadcast_curve", "steps")) or [res.get("broadcast") or {}])
        if _num(v := step.get("foreign_cores"))
    ]
    if not foreign or max(foreign) <= FOREIGN_WARN:
        return []
    return _wrap(
        f"  WARNING: other processes kept up to {max(foreign):.2f} of "
        f"{doc['machine']['cores']} cores busy during broadcast steps (median "
        f"{statistics.median(foreign):.2f}): expect noise, and UNSURE verdicts.",
        "    ",
    )


def _floor_lines(run: dict[str, Any]) -> list[str]:
    """Redis, the floor, missing the objective at every rate: the machine is the limit."""
    lines = []
    for key, what in capacity.WORKLOADS:
        red = run.get("capacity", {}).get(key, {}).get(systems.REDIS)
        if red and red["capacity"] <= 0 and red["below"]:
            lines += _wrap(
                f"  NOTE: Redis, the floor, missed the {what} objective even at "
                f"{_fmt(red['below'])}/s: on this machine now nothing meets it, so "
                "those capacities say more about the machine than about the servers "
                "(a quieter machine, or a looser objective).",
                "    ",
            )
    return lines


def _search_notes(run: dict[str, Any], name: str) -> list[str]:
    """Why a search stopped early (clients dropped, server gone), once per reason,
    and where the harness's limit, not the server's, ended it."""
    seen: list[str] = []
    for i, r in enumerate(run["rounds"], 1):
        for key, what in capacity.WORKLOADS:
            for step in dig(r, (name, key, "steps")) or []:
                if step.get("broken"):
                    text = f"{what} search stopped at {_fmt(step['offered'])}/s: {step['broken']}"
                    if text not in seen:
                        seen.append(text)
            limit = dig(r, (name, key, "harness_limit"))
            if limit:
                seen.append(
                    f"round {i}: {what} capacity at least {_fmt(dig(r, (name, key, 'capacity')))}"
                    f"/s; at {_fmt(limit['rate'])}/s the harness was the limit ({limit['why']})"
                )
    return seen


def _sweep_lines(doc: dict[str, Any]) -> list[str]:
    """Login storm, broadcast capacity and memory against N, per system."""
    objectives = ", ".join(f"{run['config']['objective_ms']:g} ms at {run['n']}"
                           for run in doc["runs"])  # fmt: skip
    lines = _wrap(
        f"Against N: capacity in deliveries/s at a broadcast p99 of at most {objectives} "
        "(the objective grows with N above 500: one broadcast is N sends), 0 lost"
    )
    lines.append(f"{'N':>6}  {'system':16}{'storm s':>9}{'capacity':>10}{'x Redis':>9}"
                 f"{'RSS KB/conn':>13}{'CPU us/del.':>13}")  # fmt: skip
    for run in doc["runs"]:
        caps = run["capacity"].get("broadcast_curve", {})
        red = caps.get(systems.REDIS)
        for name in run["systems"]:
            row = run["summary"][name]
            cap = caps.get(name)
            x = capacity.ratio_text(cap, red) if cap and name != systems.REDIS else ""
            cap_text = capacity.capacity_text(cap) if cap else "-"
            lines.append(
                f"{run['n']:>6}  {name:16}{_fmt(row['login storm s']):>9}{cap_text:>10}"
                f"{x:>9}{_fmt(row['server RSS KB/conn'], 'n/a'):>13}"
                f"{_fmt(row['server CPU us/deliv.']):>13}"
            )
    return lines


def _harness_lines(doc: dict[str, Any], run: dict[str, Any]) -> list[str]:
    return _harness_cost_lines(doc, run) + _harness_limit_lines(run)


def _harness_limit_lines(run: dict[str, Any]) -> list[str]:
    """The lowest rate at which the harness, not a server, failed a step."""
    limits = [
        limit["rate"]
        for r in run["rounds"]
        for res in r.values()
        if (limit := dig(res, ("broadcast_curve", "harness_limit")))
    ]
    if not limits:
        return []
    return _wrap(
        f"  Harness limit: from {_fmt(min(limits))} broadcast deliveries/s the harness, "
        "not the server, failed a step (notes below); capacities stopped there are "
        "lower bounds, and the goal lines say which rounds they bound.",
        "    ",
    )


def _harness_cost_lines(doc: dict[str, Any], run: dict[str, Any]) -> list[str]:
    worst = run["harness"]["worst_ratio_to_redis"]
    if systems.REDIS not in run["systems"]:
        return _wrap("  Harness check: no Redis in this run, so no floor to compare with.")
    if run["harness"]["redis_cpu_s"] is None:
        return _wrap("  Harness check: none; no CPU per delivery for Redis in this run.")
    if worst is None or _coarse(run):
        return _wrap(
            f"  Harness check: none; Redis used {run['harness']['redis_cpu_s']:.2f} s of CPU "
            "here, too few 10 ms ticks for a per-delivery ratio (more N or --step).",
            "    ",
        )
    if worst < 1.0:
        text = (
            f"  Harness check: at most {worst:.2f}x Redis's CPU per delivery, so it is "
            "cheaper than every server measured; the figures are the servers'."
        )
    else:
        h = run["harness"]
        own = h["worst_ratio_to_own_server"]
        text = (
            f"  Harness check: FAILED, {worst:.2f}x Redis's CPU per delivery at N="
            f"{run['n']} (in the {h['worst_system']} run"
            + (f", {own:.2f}x that server's own" if own is not None else "")
            + "): from this N the figures are partly the harness's own."
        )
    return _wrap(text, "    ")


def _coarse(run: dict[str, Any]) -> bool:
    cpu = run["harness"].get("redis_cpu_s")
    return cpu is None or cpu < MIN_CPU_S


def _sweep_harness_lines(doc: dict[str, Any]) -> list[str]:
    checked = [
        (run["n"], run["harness"]["worst_ratio_to_redis"])
        for run in doc["runs"]
        if run["harness"]["worst_ratio_to_redis"] is not None and not _coarse(run)
    ]
    if not checked:
        return []
    pairs = ", ".join(f"N={n}: {r:.2f}x" for n, r in checked)
    failed = [n for n, r in checked if r >= 1.0]
    if not failed:
        return _wrap(f"Harness CPU per delivery / Redis's: {pairs}; below Redis at every N.")
    return _wrap(
        f"Harness CPU per delivery / Redis's: {pairs}. From N={min(failed)} the figures "
        "are partly the harness's own.",
    )


def _machine_line(m: dict[str, Any]) -> str:
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}, Redis {m['redis'] or 'absent'}, "
        f"load avg at start {m['loadavg_at_start'][0]:.2f}"
    )


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=_json_default, allow_nan=True) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, frozenset | set):
        return sorted(obj)
    return str(obj)
