"""Turn raw per-round results into medians, ratios to Redis, a table, JSON and plots.

Every figure in the table is a median over rounds (counts of lost and
duplicated deliveries are sums: one loss anywhere is a loss).  Ratios are to
Redis measured through the same harness in the same run, which is also the
floor: Redis spends microseconds per delivery, so most of what it shows is the
harness and the machine.  The round-to-round spread printed under the table
says how big a difference has to be before it is the server's and not noise.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import cdf_ranks, median

# (label, path into one system's round result, aggregate, show ratio to Redis)
Path_ = tuple[str | int, ...]
METRICS: list[tuple[str, Path_, str, bool]] = [
    ("broadcast p50 ms", ("broadcast", "per_recipient_ms", "p50"), "median", True),
    ("broadcast p90 ms", ("broadcast", "per_recipient_ms", "p90"), "median", True),
    ("broadcast p99 ms", ("broadcast", "per_recipient_ms", "p99"), "median", True),
    ("broadcast p99.9 ms", ("broadcast", "per_recipient_ms", "p99.9"), "median", True),
    ("broadcast max ms", ("broadcast", "per_recipient_ms", "max"), "median", True),
    ("  kernel-stamped p50 ms", ("broadcast", "kernel_ms", "p50"), "median", True),
    ("  kernel-stamped p99 ms", ("broadcast", "kernel_ms", "p99"), "median", True),
    ("to last recipient p50 ms", ("broadcast", "to_last_ms", "p50"), "median", True),
    ("to last recipient p99 ms", ("broadcast", "to_last_ms", "p99"), "median", True),
    ("broadcast lost", ("broadcast", "lost"), "sum", False),
    ("broadcast duplicated", ("broadcast", "duplicated"), "sum", False),
    ("presence p50 ms", ("presence", "per_recipient_ms", "p50"), "median", True),
    ("presence p99 ms", ("presence", "per_recipient_ms", "p99"), "median", True),
    ("presence to last p50 ms", ("presence", "to_last_ms", "p50"), "median", True),
    ("presence lost", ("presence", "lost"), "sum", False),
    ("login storm s", ("storm", "seconds"), "median", True),
    ("login storm lost notices", ("storm", "lost"), "sum", False),
    ("DM saturation msg/s", ("direct", "saturation_rate"), "median", True),
    ("DM CPU-bound capacity msg/s", ("direct", "cpu_capacity"), "median", True),
    ("DM p50 ms @ first rate", ("direct", "steps", 0, "p50_ms"), "median", True),
    ("DM p99 ms @ first rate", ("direct", "steps", 0, "p99_ms"), "median", True),
    ("DM lost (sustained)", ("direct", "lost"), "sum", False),
    ("server CPU s / 1k deliv.", ("broadcast", "server_cpu_per_1k"), "median", True),
    ("harness CPU s / 1k deliv.", ("broadcast", "harness_cpu_per_1k"), "median", False),
    ("server RSS KB / conn", ("memory", "kb_per_conn"), "median", True),
    ("sender lag p50 ms", ("broadcast", "sender_lag_ms", "p50"), "median", False),
    ("sender lag p99 ms", ("broadcast", "sender_lag_ms", "p99"), "median", False),
    ("foreign load, cores", ("broadcast", "foreign_cores"), "median", False),
]


def dig(obj: Any, path: Path_) -> Any:
    for key in path:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


def summarize(doc: dict[str, Any]) -> None:
    """Add ``summary``, ``spread`` and ``goals`` to every run in ``doc`` (in place)."""
    for run in doc["runs"]:
        summary: dict[str, dict[str, Any]] = {}
        spread: dict[str, dict[str, list[float]]] = {}
        for name in run["systems"]:
            rounds = [r[name] for r in run["rounds"] if name in r]
            row: dict[str, Any] = {}
            for label, path, agg, _ in METRICS:
                values = [dig(r, path) for r in rounds]
                if agg == "sum":
                    present = [v for v in values if v is not None]
                    row[label] = sum(present) if present else None
                else:
                    row[label] = median(values)
            row["errors"] = [r["error"] for r in rounds if "error" in r]
            summary[name] = row
            spread[name] = {
                key: [
                    v
                    for v in (dig(r, ("broadcast", "per_recipient_ms", key)) for r in rounds)
                    if v is not None
                ]
                for key in ("p50", "p99")
            }
        run["summary"], run["spread"] = summary, spread
        run["goals"] = goals(run)


def ratio(value: Any, anchor: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(anchor, int | float):
        return None
    if math.isnan(value) or math.isnan(anchor) or anchor <= 0:
        return None
    return value / anchor


def goals(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's performance goals, checked where this run can check them."""
    s = run["summary"]
    out: list[dict[str, Any]] = []

    def add(text: str, ok: bool | None, detail: str) -> None:
        out.append({"goal": text, "met": ok, "detail": detail})

    sel, red, aio = s.get("select"), s.get("redis"), s.get("asyncio")
    where = f"N={run['n']}, {run['rate']:g} broadcasts/s"
    if sel and red:
        for key, limit in (("broadcast p50 ms", 1.1), ("broadcast p99 ms", 1.3)):
            r = ratio(sel[key], red[key])
            add(
                f"select {key[10:13]} <= {limit}x Redis ({where})",
                None if r is None else r <= limit,
                f"{_fmt(r)}x",
            )
    if sel and aio:
        for key in ("broadcast p50 ms", "broadcast p99 ms"):
            a, b = sel[key], aio[key]
            ok = None if math.isnan(a) or math.isnan(b) else a < b
            add(
                f"select ahead of asyncio on {key[10:13]} ({where})",
                ok,
                f"{_fmt(a)} vs {_fmt(b)} ms",
            )
        r = ratio(aio["login storm s"], sel["login storm s"])
        add(
            f"login storm several (>=3x) faster than asyncio (N={run['n']})",
            None if r is None else r >= 3.0,
            f"{_fmt(r)}x faster",
        )
    if sel:
        lost = [sel[k] for k in ("broadcast lost", "presence lost", "login storm lost notices")]
        served = not sel["errors"] and all(v == 0 for v in lost if v is not None)
        add(
            f"select served N={run['n']} with zero lost",
            served,
            f"lost {lost}, errors {len(sel['errors'])}",
        )
    return out


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(doc: dict[str, Any]) -> str:
    """The stdout report: one table per N, the floor, the goals."""
    lines = [
        f"Command: {doc['command']}",
        _machine_line(doc["machine"]),
        "Log levels: " + ", ".join(f"{k} {v}" for k, v in doc["log_level"].items()),
    ]
    lines += [f"Note: {n}" for n in doc["notes"]]
    for run in doc["runs"]:
        names = run["systems"]
        s = run["summary"]
        anchor = s.get("redis")
        lines.append("")
        lines.append(
            f"N = {run['n']} clients, broadcast {run['rate']:g}/s for "
            f"{run['config']['duration']:g} s, {len(run['rounds'])} round(s); "
            "medians over rounds, (ratio to Redis)"
        )
        width = 20
        lines.append(f"{'':27}" + "".join(f"{n:>{width}}" for n in names))
        for label, _path, _agg, show_ratio in METRICS:
            cells = []
            for name in names:
                v = s[name][label]
                r = ratio(v, anchor[label]) if anchor and show_ratio and name != "redis" else None
                cell = _fmt(v) + (f" ({r:.2f}x)" if r is not None else "")
                cells.append(f"{cell:>{width}}")
            lines.append(f"{label:27}" + "".join(cells))
        lines.append("Round-to-round broadcast latency (ms), the noise floor:")
        for name in names:
            sp = run["spread"][name]
            lines.append(
                f"  {name:8} p50 "
                + " / ".join(_fmt(v) for v in sp["p50"])
                + "   p99 "
                + " / ".join(_fmt(v) for v in sp["p99"])
            )
        foreign = [
            v
            for r in run["rounds"]
            for res in r.values()
            if (v := dig(res, ("broadcast", "foreign_cores"))) is not None
        ]
        if foreign and max(foreign) > 0.25:
            lines.append(
                f"  WARNING: other processes kept up to {max(foreign):.2f} of "
                f"{doc['machine']['cores']} cores busy during broadcast phases (median "
                f"{statistics.median(foreign):.2f}): expect noise beyond the spread above."
            )
        if anchor:
            lines.append(
                "  Redis goes through the same harness: its latency is mostly the harness's "
                "own wake-up and\n  parse cost plus loopback. Differences smaller than the "
                "spread between rounds are noise."
            )
        for name in names:
            for err in s[name]["errors"]:
                lines.append(f"  ERROR {name}: {err[:300]}")
        for g in run["goals"]:
            mark = {True: "MET ", False: "MISS", None: "n/a "}[g["met"]]
            lines.append(f"  [{mark}] {g['goal']}: {g['detail']}")
    return "\n".join(lines)


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


def plots(doc: dict[str, Any], outdir: Path, tag: str) -> list[str]:
    """Write PNGs; return one line per file (or one note if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["note: matplotlib not installed; plots skipped (pip install matplotlib)"]
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for run in doc["runs"]:
        path = outdir / (
            f"cdf-{tag}-n{run['n']}.png" if len(doc["runs"]) > 1 else f"cdf-n{run['n']}.png"
        )
        _cdf_plot(plt, run, path)
        written.append(f"plot: {path}")
    if len(doc["runs"]) > 1:
        path = outdir / f"fanout-vs-n-{tag}.png"
        _sweep_plot(plt, doc["runs"], path)
        written.append(f"plot: {path}")
    return written


def _median_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    curves = [c for c in curves if c]
    if not curves:
        return []
    return [statistics.median(c[i] for c in curves) for i in range(min(map(len, curves)))]


def _cdf_plot(plt: Any, run: dict[str, Any], path: Path) -> None:
    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 4.5))
    ranks = cdf_ranks()
    for i, name in enumerate(run["systems"]):
        for key, style, label in (("cdf_ms", "-", name), ("cdf_kernel_ms", ":", None)):
            curves = [dig(r.get(name), ("broadcast", key)) or [] for r in run["rounds"]]
            xs = [max(x, 1e-3) for x in _median_curve(curves)]
            if not xs:
                continue
            kw = {"color": f"C{i}", "linestyle": style, "label": label}
            ax.plot(xs, [r / 100 for r in ranks[: len(xs)]], **kw)
            tail.plot(xs, [max(1 - r / 100, 1e-4) for r in ranks[: len(xs)]], **kw)
    for a in (ax, tail):
        a.set_xscale("log")
        a.set_xlim(left=0.05)
        a.set_xlabel("per-recipient broadcast latency (ms, log)")
        a.grid(True, which="both", alpha=0.3)
        a.legend()
    ax.set_ylabel("fraction of deliveries")
    tail.set_yscale("log")
    tail.set_ylabel("fraction slower (log): the tail")
    fig.suptitle(
        f"Broadcast latency CDF, N={run['n']}, {run['rate']:g}/s, median over "
        f"{len(run['rounds'])} round(s); dotted: kernel arrival stamp (no harness queueing)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_plot(plt: Any, runs: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    names = list(dict.fromkeys(n for run in runs for n in run["systems"]))
    for i, name in enumerate(names):
        color = f"C{i}"
        pts = [(run["n"], run["summary"][name]) for run in runs if name in run["summary"]]
        ns = [n for n, _ in pts]
        ax.plot(ns, [s["broadcast p50 ms"] for _, s in pts], "o-", color=color, label=f"{name} p50")
        ax.plot(
            ns, [s["broadcast p99 ms"] for _, s in pts], "s--", color=color, label=f"{name} p99"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("connected clients N (log)")
    ax.set_ylabel("per-recipient broadcast latency (ms, log)")
    rates = ", ".join(f"{run['n']}: {run['rate']:g}/s" for run in runs)
    ax.set_title(f"Broadcast fan-out vs N (rates {rates})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
