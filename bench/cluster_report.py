"""The cluster benchmark's summary, goals and 80-column table.

``summarize`` takes medians over rounds, counts lost, duplicated and falsely
echoed messages over every phase, and judges the goals; ``table`` prints
what was measured, phase by phase, then the goals.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench import systems
from bench.cluster_nodes import SPREAD

GOAL_P50_RATIO = 1.3
GOAL_KILL_S = 5.0


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def _f(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if abs(x) < 0.0005:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 100 else f"{x:.0f}"


def dig(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds and the goals, into ``doc['summary']``."""
    s: dict[str, Any] = {}
    goals: list[tuple[str, bool | None, str]] = []
    fo = doc.get("fanout")
    integrity = {"lost": 0, "duplicated": 0, "false_echoes": 0}
    if fo:
        for name in fo["systems"]:
            rs = [r.get(name, {}) for r in fo["rounds"]]
            s[name] = {
                "p50": med([dig(r, "broadcast", "kernel_ms", "p50") for r in rs]),
                "p99": med([dig(r, "broadcast", "kernel_ms", "p99") for r in rs]),
                "to_last_p50": med([dig(r, "broadcast", "to_last_ms", "p50") for r in rs]),
                "to_last_p99": med([dig(r, "broadcast", "to_last_ms", "p99") for r in rs]),
                "storm_s": med([dig(r, "storm", "seconds") for r in rs]),
                "storm_lost": sum(dig(r, "storm", "lost") or 0 for r in rs),
                "lost": sum(dig(r, "broadcast", "lost") or 0 for r in rs),
                "duplicated": sum(dig(r, "broadcast", "duplicated") or 0 for r in rs),
                "cpu_us": med(
                    [(dig(r, "broadcast", "server_cpu_per_1k") or math.nan) * 1000 for r in rs]
                ),
                "errors": [r["error"] for r in rs if "error" in r],
            }
            integrity["lost"] += s[name]["lost"]
            integrity["duplicated"] += s[name]["duplicated"]
        rs = [r.get(SPREAD, {}) for r in fo["rounds"]]
        for half in ("local", "cross"):
            s[SPREAD][f"{half}_p50"] = med([dig(r, "broadcast", f"{half}_kernel_p50_ms")
                                            for r in rs])  # fmt: skip
        s[SPREAD]["commands_per_bc"] = med([dig(r, "broadcast", "redis", "commands")
                                             for r in rs])  # fmt: skip
        for part in ("sender_node", "other_node"):
            s[SPREAD][f"{part}_us"] = med([dig(r, "broadcast", "cpu_us_per_local_delivery", part)
                                           for r in rs])  # fmt: skip
        s[SPREAD]["redis_us_per_bc"] = med([(dig(r, "broadcast", "redis", "cpu_s") or math.nan)
                                             * 1e6 for r in rs])  # fmt: skip
        sel, cross = s[systems.PRIMARY]["p50"], s[SPREAD]["cross_p50"]
        ratio = cross / sel if cross and sel else None
        goals.append((f"cross-node broadcast p50 <= {GOAL_P50_RATIO}x single-node select",
                      ratio is not None and ratio <= GOAL_P50_RATIO, f"{_f(ratio)}x"))  # fmt: skip
    elif doc.get("load_fanout"):
        lf = doc["load_fanout"]
        ratio = lf["cluster_p50"] / lf["select_p50"] if lf["cluster_p50"] and lf["select_p50"] \
            else None  # fmt: skip
        goals.append((f"cluster broadcast p50 <= {GOAL_P50_RATIO}x select (load.py's table)",
                      ratio is not None and ratio <= GOAL_P50_RATIO, f"{_f(ratio)}x"))  # fmt: skip
    co = doc.get("costs")
    if co:
        small = dig(co, "broadcast", "redis", "commands")
        large = s.get(SPREAD, {}).get("commands_per_bc") or dig(
            doc, "costs_large", "broadcast", "redis", "commands"
        )
        if small and large:
            same = abs(large / small - 1) <= 0.15
            goals.append((f"Redis commands per broadcast same at N={co['n']} and N={doc['n']}",
                          same, f"{_f(small)} vs {_f(large)}"))  # fmt: skip
        for key in ("dm_local", "dm_cross"):
            for what in ("lost", "duplicated", "false_echoes"):
                integrity[what] += co.get(key, {}).get(what, 0)
        integrity["lost"] += dig(co, "broadcast", "lost") or 0
        integrity["duplicated"] += dig(co, "broadcast", "duplicated") or 0
    lat = doc.get("dm_latency")
    if lat:
        for what in ("lost", "duplicated", "false_echoes"):
            integrity[what] += lat[what]
    tp = doc.get("throughput")
    if tp:
        s["throughput"] = {}
        for cfg in ("single", "1w", "2w"):
            rs = [r.get(cfg, {}) for r in tp["rounds"]]
            s["throughput"][cfg] = {
                k: med([r.get(k) for r in rs])
                for k in ("rate", "per_cpu_s", "workers_us_per_msg", "redis_us_per_msg",
                          "redis_commands_per_msg", "redis_us_per_command", "cross_share",
                          "kernel_p50_ms")
            }  # fmt: skip
            for r in rs:
                for what in ("lost", "duplicated", "false_echoes"):
                    integrity[what] += r.get(what, 0)
    nd = doc.get("node_death")
    if nd:
        last = nd["last_max_s"]
        goals.append((f"SIGKILL to last offline notice <= {GOAL_KILL_S:g} s (worst of "
                      f"{len(nd['trials'])})", last is not None and last <= GOAL_KILL_S,
                      f"{_f(last)} s"))  # fmt: skip
    st = doc.get("stall")
    if st:
        goals.append((f"no offline notice during {st['stall_s']:g} s Redis stalls",
                      st["offline_notices"] == 0, str(st["offline_notices"])))  # fmt: skip
        integrity["false_echoes"] += st["false_echoes"]
    bad = integrity["lost"] + integrity["duplicated"] + integrity["false_echoes"]
    goals.append(("0 lost, 0 duplicated, 0 false echoes", bad == 0,
                  "{lost}/{duplicated}/{false_echoes}".format(**integrity)))  # fmt: skip
    s["integrity"] = integrity
    s["goals"] = [{"goal": g, "met": m, "measured": v} for g, m, v in goals]
    doc["summary"] = s
    return s


def _stall_lines(i: int, of: int, trial: dict[str, Any]) -> list[str]:
    """One stall: which (its number, how long Redis was stopped), the DM
    answers counted, then which DM got which answer (when the trial has it)."""
    took = f" ({trial['stalled_s']:.2f} s)" if trial.get("stalled_s") is not None else ""
    ans = ", ".join(f"{k} {v}" for k, v in sorted(trial["answers"].items()))
    lines = [f"  stall {i} of {of}{took}: DM answers {ans}; disconnected {trial['disconnected']}"]
    for when in ("during", "after"):
        to = [f"{k.split(', ')[1]} {v}" for k, v in trial.get("dms", {}).items()
              if k.startswith(when)]  # fmt: skip
        if to:
            lines.append(f"    sent {when} it: {', '.join(to)}")
    return lines


def table(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    out: list[str] = []
    add = out.append
    m = doc["machine"]
    add(f"Cluster benchmark: {m['cores']} cores, {m['cpu'][:40]}, Redis {m['redis']}")
    add(f"N = {doc['n']}, {doc['rounds']} round(s); medians over rounds; latency kernel-stamped")
    fo = doc.get("fanout")
    if fo:
        names = fo["systems"]
        add("")
        add(f"Broadcast fan-out, {doc['rate']:g}/s for {doc['duration']:g} s "
            f"({SPREAD}: N/2 on each node)")  # fmt: skip
        add(f"{'':24}" + "".join(f"{n:>14}" for n in names))

        def row(label: str, key: str, digits: int = 3) -> None:
            add(f"{label:24}" + "".join(f"{_f(s[n].get(key), digits):>14}" for n in names))

        row("broadcast p50 ms", "p50")
        row("broadcast p99 ms", "p99")
        row("to last p50 ms", "to_last_p50")
        row("to last p99 ms", "to_last_p99")
        row("login storm s", "storm_s")
        row("server CPU us/deliv.", "cpu_us")
        row("lost / duplicated", "lost")
        c = s[SPREAD]
        add(f"  {SPREAD}: p50 sender's node {_f(c['local_p50'])} ms, other node "
            f"{_f(c['cross_p50'])} ms; Redis per broadcast")  # fmt: skip
        add(f"  {_f(c['commands_per_bc'])} commands, {_f(c['redis_us_per_bc'])} us CPU; "
            f"CPU us per delivery: sender's node {_f(c['sender_node_us'])}, "
            f"other {_f(c['other_node_us'])}")  # fmt: skip
        if c.get("commands_per_bc") is not None and doc.get("n", 0) > 1:
            # Each broadcast reaches every client but its sender.
            per_1k = c["commands_per_bc"] / (doc["n"] - 1) * 1000
            add(f"  Redis commands per 1,000 deliveries: {_f(per_1k)}")
        for n in names:
            for err in s[n]["errors"]:
                add(f"  {n}: {err[:70]}")
    lf = doc.get("load_fanout")
    if lf:
        add("")
        add(f"Broadcast fan-out (load.py's table, cluster = {systems.CLUSTER_WORKERS} workers "
            "on one port):")  # fmt: skip
        add(f"  p50 cluster {_f(lf['cluster_p50'])} ms vs select {_f(lf['select_p50'])} ms")
    co = doc.get("costs")
    if co:
        add("")
        add(f"Redis per operation (2 nodes, N = {co['n']}; idle cluster "
            f"{_f(co['idle_commands_per_s'])} commands/s taken off)")  # fmt: skip
        add(f"{'':20}{'commands':>10}{'scripts':>9}{'reads':>8}{'Redis us':>10}{'msg/s':>10}")
        for label, key in (("local DM", "dm_local"), ("cross-node DM", "dm_cross"),
                           (f"broadcast (N={co['n']})", "broadcast")):  # fmt: skip
            r = co.get(key, {}).get("redis", {})
            rate = co.get(key, {}).get("rate")
            add(f"{label:20}{_f(r.get('commands')):>10}{_f(r.get('scripts')):>9}"
                f"{_f(r.get('reads')):>8}{_f((r.get('cpu_s') or 0) * 1e6):>10}"
                f"{_f(rate) if rate else '':>10}")  # fmt: skip
        big = doc.get("costs_large", {}).get("broadcast", {}).get("redis")
        big_label = f"broadcast (N={doc['n']})"
        if s.get(SPREAD):
            add(f"{big_label:20}{_f(s[SPREAD]['commands_per_bc']):>10}"
                f"{'':17}{_f(s[SPREAD]['redis_us_per_bc']):>10}")  # fmt: skip
        elif big:
            add(f"{big_label:20}{_f(big['commands']):>10}{_f(big['scripts']):>9}"
                f"{_f(big['reads']):>8}{_f(big['cpu_s'] * 1e6):>10}")  # fmt: skip
        ops = co.get("dm_cross", {}).get("redis", {})
        if ops.get("calls"):
            top = ", ".join(f"{k} {v:.2g}" for k, v in list(ops["calls"].items())[:6])
            add(f"  cross-node DM calls: {top}"[:80])
        per = ops.get("redis_us_per_command")
        add(f"  Redis CPU per command (cross-node DMs): {_f(per)} us")
    lat = doc.get("dm_latency")
    if lat:
        add("")
        add(f"DM latency, closed loop, {lat['count']} each, interleaved (ms)")
        add(f"{'':24}{'deliver p50':>12}{'p99':>9}{'echo p50':>10}{'p99':>9}")
        for label, text in (("local", "cluster, same node"), ("cross", "cluster, two nodes"),
                            ("single", "single server")):  # fmt: skip
            r = lat[label]
            add(f"{text:24}{_f(r['deliver_p50_ms']):>12}{_f(r['deliver_p99_ms']):>9}"
                f"{_f(r['echo_p50_ms']):>10}{_f(r['echo_p99_ms']):>9}")  # fmt: skip
        loc, cro = lat["local"]["deliver_p50_ms"], lat["cross"]["deliver_p50_ms"]
        if loc and cro:
            add(f"  cross-node / same-node p50: {cro / loc:.2f}x")
    tp = s.get("throughput")
    if tp:
        add("")
        add(f"DM throughput: {doc['tp_senders']} senders x {doc['tp_window']} in flight, "
            f"{doc['tp_clients']} recipients, {doc['tp_seconds']:g} s")  # fmt: skip
        add(f"{'':16}{'msg/s':>9}{'msg/CPU-s':>10}{'workers us':>11}{'Redis us':>9}"
            f"{'cmds/msg':>9}{'cross':>7}{'p50 ms':>8}")  # fmt: skip
        for cfg, text in (("single", "no --cluster"), ("1w", "--workers 1"),
                          ("2w", "--workers 2")):  # fmt: skip
            r = tp[cfg]
            share = f"{r['cross_share']:.0%}" if r.get("cross_share") is not None else "-"
            add(f"{text:16}{_f(r['rate']):>9}{_f(r['per_cpu_s']):>10}"
                f"{_f(r['workers_us_per_msg']):>11}{_f(r['redis_us_per_msg']):>9}"
                f"{_f(r['redis_commands_per_msg']):>9}{share:>7}"
                f"{_f(r['kernel_p50_ms']):>8}")  # fmt: skip
        if tp["1w"]["rate"] and tp["2w"]["rate"]:
            add(f"  2 workers / 1 worker: {tp['2w']['rate'] / tp['1w']['rate']:.2f}x msg/s "
                f"({m['cores']} cores, shared with Redis and the harness)")  # fmt: skip
    nd = doc.get("node_death")
    if nd:
        add("")
        lasts = ", ".join(_f(t["last_s"]) for t in nd["trials"])
        add(f"SIGKILL of a node with {nd['users']} users (lease {nd['lease_s']:g} s): last "
            f"offline notice at {nd['observers']}")  # fmt: skip
        add(f"  observers after {lasts} s (median {_f(nd['last_median_s'])}); "
            f"names reusable: {all(t['names_reusable'] for t in nd['trials'])}")  # fmt: skip
    st = doc.get("stall")
    if st:
        add("")
        add(f"Redis SIGSTOPped {len(st['trials'])} x {st['stall_s']:g} s, {st['users']} users "
            f"on 2 nodes: {st['offline_notices']} offline notices")  # fmt: skip
        for i, t in enumerate(st["trials"], 1):
            for line in _stall_lines(i, len(st["trials"]), t):
                add(line[:80])
    add("")
    add("Goals:")
    for g in s["goals"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
        add(f"  {verdict:7} {g['goal'][:56]:56} {g['measured']}"[:80])
    return "\n".join(out)

