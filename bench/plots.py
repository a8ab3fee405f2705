"""The benchmark's plots: latency against offered load, the latency
distribution, and figures against N (a sweep).

One colour per system in every plot; latency axes are logarithmic and
labelled with plain numbers.  matplotlib is optional: ``write`` returns None
without it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import systems
from bench.stats import cdf_ranks
from bench.summary import _num, dig

#: The workloads with a capacity search, as stored in a system's results:
#: key -> (panel title, unit of the x axis).
CURVES = {
    "broadcast_curve": ("broadcast", "offered deliveries/s"),
    "direct_curve": ("direct messages", "offered messages/s"),
}

_PALETTE = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
_FIXED = {
    systems.REDIS: "#d62728",
    systems.PEER: "#7f7f7f",
    systems.TARGET: "#7f7f00",
    systems.TLS: "#17becf",  # cyan: kept out of the palette, so no backend shares it
    systems.CLUSTER: "#000000",
    systems.UVLOOP: "#e377c2",
    systems.WEB: "#bcbd22",
}


def color(name: str) -> str:
    """One colour per system, the same in every plot: backends by registry order."""
    if name in _FIXED:
        return _FIXED[name]
    if name in systems.BACKENDS:
        return _PALETTE[systems.BACKENDS.index(name) % len(_PALETTE)]
    return "#000000"


def write(doc: dict[str, Any], outdir: Path, tag: str) -> list[Path] | None:
    """Write the PNGs of a run; return their paths (None if matplotlib is missing).

    ``<tag>-curves.png`` (latency against offered load) and ``<tag>-cdf.png``
    (the latency distribution at the first step); for a sweep, the curves per
    N (``<tag>-curves-n<N>.png``) and ``<tag>-vs-n.png``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    sweep = bool(doc.get("sweep")) or len(doc["runs"]) > 1
    for run in doc["runs"]:
        suffix = f"-n{run['n']}" if sweep else ""
        if any(dig(r, (n, key, "steps")) for r in run["rounds"] for n in r for key in CURVES):
            path = outdir / f"{tag}-curves{suffix}.png"
            _curves_plot(plt, run, path)
            written.append(path)
        # A sweep's figures are against N (the distribution is the standard run's plot).
        if not sweep and any(
            dig(r, (n, "broadcast", "cdf_kernel_ms")) for r in run["rounds"] for n in r
        ):
            path = outdir / f"{tag}-cdf.png"
            _cdf_plot(plt, run, path)
            written.append(path)
    if sweep:
        path = outdir / f"{tag}-vs-n.png"
        _sweep_plot(plt, doc["runs"], path)
        written.append(path)
    return written


def _plain_log(axis: Any, lo: float = 0.0, hi: float = 0.0) -> None:
    """Log scale ticks printed as plain numbers (0.5, 20, 1,000): at 1, 2, 5 per
    decade, or denser when the data (``lo`` to ``hi``) spans less than a decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo) if 0 < lo < hi else 2.0
    if decades < 1:
        subs: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    elif decades <= 2.5:
        subs = (1.0, 2.0, 5.0)
    else:  # wide: labels at 1, 2, 5 would run into each other
        subs = (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _plain(v)))
    axis.set_minor_formatter(NullFormatter())


def _plain(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:g}"
    return f"{v:.4f}".rstrip("0").rstrip(".")


def _percent(v: float) -> str:
    """A fraction as a plain percentage: 1 -> 100%, 0.001 -> 0.1%."""
    return f"{v * 100:.4f}".rstrip("0").rstrip(".") + "%"


def _median_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    curves = [c for c in curves if c]
    if not curves:
        return []
    return [statistics.median(c[i] for c in curves) for i in range(min(map(len, curves)))]


def _style_legend(ax: Any, names: list[str], styles: list[tuple[str, str]], **kw: Any) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color(n), lw=2.5, label=n) for n in names]
    handles += [Line2D([], [], color="black", ls=ls, label=text) for ls, text in styles]
    ax.legend(handles=handles, **kw)


def _cdf_plot(plt: Any, run: dict[str, Any], path: Path) -> None:
    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 4.8))
    ranks = cdf_ranks()
    names = list(run["systems"])
    lo, hi = math.inf, 0.0
    for name in names:
        for key, style in (("cdf_kernel_ms", "-"), ("cdf_ms", ":")):
            curves = [dig(r.get(name), ("broadcast", key)) or [] for r in run["rounds"]]
            xs = [max(x, 1e-3) for x in _median_curve(curves)]
            if not xs:
                continue
            lo, hi = min(lo, xs[0]), max(hi, xs[-1])
            kw = {"color": color(name), "linestyle": style, "lw": 1.8 if style == "-" else 1.2}
            ax.plot(xs, [r / 100 for r in ranks[: len(xs)]], **kw)
            tail.plot(xs, [max(1 - r / 100, 1e-4) for r in ranks[: len(xs)]], **kw)
    for a in (ax, tail):
        a.set_xscale("log")
        if lo < math.inf:
            a.set_xlim(left=max(lo * 0.8, 1e-3))
        _plain_log(a.xaxis, lo, hi)
        a.set_xlabel("per-recipient broadcast latency, ms (log scale)")
        a.grid(True, which="major", alpha=0.35)
    ax.set_ylabel("fraction of deliveries at or below")
    tail.set_yscale("log")
    tail.set_ylim(1e-4, 1.0)
    tail.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _p: _percent(v)))
    tail.set_ylabel("fraction slower (log): the tail")
    styles = [("-", "kernel arrival stamp"), (":", "harness read stamp")]
    _style_legend(ax, names, styles, loc="lower right", fontsize=8)
    _style_legend(tail, names, styles, loc="lower left", fontsize=8)
    rounds = len(run["rounds"])
    fig.suptitle(
        f"Broadcast latency at the first step, N={run['n']} clients, "
        f"{run['config']['ladder'][0]:,.0f} deliveries/s, "
        f"median curve of {rounds} round{'s' if rounds != 1 else ''}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_plot(plt: Any, runs: list[dict[str, Any]], path: Path) -> None:
    names = list(dict.fromkeys(n for run in runs for n in run["systems"]))
    ns = [run["n"] for run in runs]
    panels = [
        ("broadcast capacity/s", "broadcast capacity, deliveries/s"),
        ("login storm s", "login storm: all N logged in, s"),
        ("server RSS KB/conn", "server memory per connection, KB"),
        ("server CPU us/deliv.", "CPU per delivery at capacity, us"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    markers = "osD^v<>p"
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for i, name in enumerate(names):
            # Small multiplicative offsets keep overlapping points apart on the log axis.
            shift = 1 + 0.035 * (i - (len(names) - 1) / 2)
            # A capacity of 0 (no rate tried passed: "<" in the table) has no place on it.
            pts = [
                (run["n"] * shift, v)
                for run in runs
                if name in run["summary"] and _num(v := run["summary"][name][key]) and v > 0
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                marker = markers[i % len(markers)]
                ax.plot(xs, ys, marker=marker, ms=5, lw=1.4, color=color(name), label=name)
        if key == "server CPU us/deliv.":
            pts = []
            for run in runs:
                rows = run["summary"].values()
                costs = [v for row in rows if _num(v := row["harness CPU us/deliv."])]
                if costs:
                    pts.append((run["n"], max(costs)))
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, "k--", marker="x", lw=1.4, label="harness (worst run)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ns)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _p: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        _plain_log(ax.yaxis, *_span(ax, "y"))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("connected clients N (log scale)")
        ax.grid(True, which="major", alpha=0.35)
    axes.flat[0].legend(fontsize=8)
    axes.flat[3].legend(fontsize=8, title="solid: server, dashed: harness", title_fontsize=8)
    objectives = ", ".join(f"{r['config']['objective_ms']:g} ms at N={r['n']:,}" for r in runs)
    fig.suptitle(f"Against N; broadcast capacity at p99 <= {objectives}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves_plot(plt: Any, run: dict[str, Any], path: Path) -> None:
    """p50 (dashed) and p99 (solid) against offered load, one colour per
    system, medians over rounds at each offered rate, the p99 range of the
    rounds as error bars; the objective as a horizontal line, each system's
    capacity as a marker on it."""
    panels = [key for key in CURVES if any(dig(r, (n, key)) for r in run["rounds"] for n in r)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.0), squeeze=False)
    names = list(run["systems"])
    for ax, key in zip(axes[0], panels, strict=True):
        title, unit = CURVES[key]
        objective = None
        rates: set[float] = set()
        for name in names:
            by_rate: dict[float, list[dict[str, Any]]] = {}
            for r in run["rounds"]:
                curve = dig(r, (name, key))
                if not curve:
                    continue
                objective = curve.get("objective_ms", objective)
                for step in curve["steps"]:
                    by_rate.setdefault(step["offered"], []).append(step)
            if not by_rate:
                continue
            xs = sorted(by_rate)
            rates.update(xs)
            p50 = [_med(by_rate[x], "p50") for x in xs]
            p99 = [_med(by_rate[x], "p99") for x in xs]
            lo = [max(0.0, m - min(_vals(by_rate[x], "p99"))) for x, m in zip(xs, p99, strict=True)]
            hi = [max(_vals(by_rate[x], "p99")) - m for x, m in zip(xs, p99, strict=True)]
            c = color(name)
            ax.errorbar(xs, p99, yerr=[lo, hi], color=c, marker="o", ms=3.5, lw=1.8,
                        capsize=2, label=name)  # fmt: skip
            ax.plot(xs, p50, color=c, linestyle="--", lw=1.2, marker=".", ms=3)
            lost = [(x, y) for x, y in zip(xs, p99, strict=True)
                    if any(s["lost"] for s in by_rate[x])]  # fmt: skip
            if lost:
                ax.plot(*zip(*lost, strict=True), "x", color=c, ms=8, mew=2)
            caps = [dig(r, (name, key, "capacity")) for r in run["rounds"]]
            caps = [v for v in caps if _num(v) and v > 0]
            if caps and objective:
                ax.plot([statistics.median(caps)], [objective], marker="v", ms=9, color=c,
                        mec="black", linestyle="none")  # fmt: skip
        if objective:
            ax.axhline(objective, color="black", lw=1.0, linestyle=":")
            ax.annotate(f"objective: p99 {objective:g} ms", (0.01, objective),
                        xycoords=("axes fraction", "data"), textcoords="offset points",
                        xytext=(2, -11), fontsize=8)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Ticks at the ladder's rates (a bisection's rates would crowd them),
        # and at the lowest rate offered when a search went below the ladder.
        ladder = run["config"]["ladder" if key == "broadcast_curve" else "dm_ladder"]
        ticks = [r for r in ladder if rates and min(rates) <= r <= max(rates)]
        if rates and min(rates) < ladder[0]:
            ticks.insert(0, min(rates))
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _p: _plain(v)))
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.tick_params(axis="x", labelsize=8, labelrotation=30)
        _plain_log(ax.yaxis, *_span(ax, "y"))
        ax.set_xlabel(f"{unit} (log scale)")
        ax.set_ylabel("latency, ms (kernel stamp, log scale)")
        ax.set_title(f"{title}: p99 solid, p50 dashed; x lost; v capacity", fontsize=10)
        ax.grid(True, which="major", alpha=0.35)
        ax.legend(fontsize=8, loc="best")
    rounds = len(run["rounds"])
    fig.suptitle(
        f"Latency against offered load, N={run['n']} clients, medians of {rounds} "
        f"round{'s' if rounds != 1 else ''} (bars: the rounds' p99 range)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _vals(steps: list[dict[str, Any]], key: str) -> list[float]:
    return [v for s in steps if _num(v := dig(s, ("kernel_ms", key)))] or [math.nan]


def _med(steps: list[dict[str, Any]], key: str) -> float:
    vals = [v for v in _vals(steps, key) if _num(v)]
    return statistics.median(vals) if vals else math.nan


def _span(ax: Any, axis: str) -> tuple[float, float]:
    values = [
        v
        for line in ax.get_lines()
        for v in (line.get_xdata() if axis == "x" else line.get_ydata())
        if _num(v) and v > 0
    ]
    return (min(values), max(values)) if values else (0.0, 0.0)
