"""The text report of a summarized run (bench/summary.py): 80 columns or wide.

The report leads with capacity (bench/capacity.py): per workload, the highest
offered rate each system carried within the latency objective with nothing
lost, as the median over rounds with the rounds' range, and its ratio to
Redis and to select; then the goals, each MET, MISSED or UNSURE (the rounds
disagree).  Below come the figures measured at one load (the first step of
the broadcast ladder, light for every system): latency, presence, login
storm, memory, and CPU per delivery at each system's capacity, each a median
over rounds.  Latency is kernel-stamped (when the delivery reached the
client socket, ``SO_TIMESTAMPNS``) unless labelled otherwise.  Then the
harness check (bench/summary.py), the round-to-round noise, and warnings.

The default table fits 80 columns (``wide=False``); ``wide=True`` adds every
other row (percentiles, harness-stamped latency, sender lag, foreign load).
"""

from __future__ import annotations

import json
import statistics
import textwrap
from pathlib import Path
from typing import Any

from bench import capacity, systems
from bench.summary import GOAL_MIN_N, HARNESS_RATIO, METRICS, _num, dig, fmt, ratio

#: /proc counts CPU in 10 ms ticks: with less than this much Redis CPU in a
#: broadcast phase, the ratio is too coarse to pass or fail (--quick, tiny N).
MIN_CPU_S = 0.2
#: Other processes busy on more than this many cores: the run says so.
FOREIGN_WARN = 0.25


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


def _header(block: list[str], width: int) -> list[str]:
    """The systems' names over their columns; a name as wide as a column is
    split after its last hyphen onto a line above (``asyncio-`` over
    ``uvloop``), so that neighbouring names never run together."""
    if all(len(name) < width for name in block):
        return [f"{'':{LABEL_WIDTH}}" + "".join(f"{name:>{width}}" for name in block)]
    top, bottom = [], []
    for name in block:
        head, hyphen, tail = name.rpartition("-")
        if len(name) < width:
            head, tail = "", name
        elif not hyphen:
            head, tail = name[: width - 1], name[width - 1 :]
        else:
            head += hyphen
        top.append(head)
        bottom.append(tail)
    return [f"{'':{LABEL_WIDTH}}" + "".join(f"{part:>{width}}" for part in parts)
            for parts in (top, bottom)]


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, COLUMNS, subsequent_indent=indent or "  ", break_on_hyphens=False)


def table(doc: dict[str, Any], wide: bool = False) -> str:
    """The report: per N the capacities, the goals, the figures at one load,
    the harness check and the noise; for a sweep, the figures against N."""
    lines = _wrap(f"Command: {doc['command']}")
    if doc.get("commit"):  # older runs did not record it
        lines += _wrap(f"Commit: {doc['commit']}")
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
            f"At the first step ({fmt(cfg['ladder'][0])} broadcast deliveries/s, "
            f"{fmt(cfg['dm_ladder'][0])} DMs/s); CPU at capacity; medians"
            + (", (ratio to Redis)" if anchor else "")
        )
        metrics = [m for m in METRICS if wide or m.narrow]
        for block in _blocks(names, wide):
            lines += _header(block, width)
            for m in metrics:
                cells = []
                for name in block:
                    v = s[name][m.label]
                    show = anchor and m.ratio and name != systems.REDIS
                    r = ratio(v, anchor[m.label]) if show else None
                    cell = fmt(v, m.missing) + (" " + _fmt_ratio(r) if r is not None else "")
                    cells.append(f"{cell:>{width}}")
                lines.append(f"{m.label:{LABEL_WIDTH}}" + "".join(cells))
            if anchor:
                cells = [f"{fmt(s[name][HARNESS_RATIO]):>{width}}" for name in block]
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
                f"{fmt(red['below'])}/s: on this machine now nothing meets it, so "
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
                    text = f"{what} search stopped at {fmt(step['offered'])}/s: {step['broken']}"
                    if text not in seen:
                        seen.append(text)
            limit = dig(r, (name, key, "harness_limit"))
            if limit:
                seen.append(
                    f"round {i}: {what} capacity at least {fmt(dig(r, (name, key, 'capacity')))}"
                    f"/s; at {fmt(limit['rate'])}/s the harness was the limit ({limit['why']})"
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
                f"{run['n']:>6}  {name:16}{fmt(row['login storm s']):>9}{cap_text:>10}"
                f"{x:>9}{fmt(row['server RSS KB/conn'], 'n/a'):>13}"
                f"{fmt(row['server CPU us/deliv.']):>13}"
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
        f"  Harness limit: from {fmt(min(limits))} broadcast deliveries/s the harness, "
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
