#!/usr/bin/env python3
"""Load benchmark: our two backends, an asyncio yardstick and Redis, side by side.

    python bench/load.py -n 500                  # the standard run (a few minutes)
    python bench/load.py --sweep 100,500,1000,2000,5000 --rounds 1
    python bench/load.py --target 127.0.0.1:4000 # a server that is already running
    python bench/load.py --quick                 # the smoke run the test suite uses

Each round starts every system afresh on a free 127.0.0.1 port, in rotated
order (round-robin interleaving, so a noisy minute on a shared machine spreads
over all systems instead of one), connects N clients through the same lean
harness, and measures: login storm, memory per connection, presence fan-out,
open-loop broadcast fan-out, and direct messages at rising rates.  The report
gives medians over rounds and ratios to Redis, whose numbers double as the
harness floor.  Output: a table on stdout, JSON (``--json``) and PNG plots
(``--plots``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report, systems
from bench.harness.fleet import FleetError
from bench.harness.procstat import machine_facts, raise_nofile_limit
from bench.progress import Progress
from bench.workloads import Config, run_system

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "-n", "--clients", type=int, default=500, help="clients per system (default 500)"
    )
    p.add_argument(
        "--systems",
        help="comma list from select,threads,asyncio,redis "
        "(default: all four; with --target: target,redis)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--rate", type=float, default=150.0, help="broadcasts per second (default 150)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds of broadcasts")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before that")
    p.add_argument("--pad", type=int, default=0, help="extra bytes per broadcast payload")
    p.add_argument("--probes", type=int, default=5, help="presence probes per run")
    p.add_argument(
        "--dm-rates",
        default="1000,2000,5000,10000,20000,40000",
        help="offered direct-message rates, rising",
    )
    p.add_argument("--dm-step", type=float, default=1.5, help="seconds per direct-message rate")
    p.add_argument("--dm-slo", type=float, default=50.0, help="p99 ms a sustained rate stays under")
    p.add_argument("--skip", default="", help="phases to leave out: presence,broadcast,direct")
    p.add_argument("--sweep", help="comma list of N; runs every N (rate scaled, see --budget)")
    p.add_argument(
        "--budget",
        type=float,
        default=75_000.0,
        help="sweep: broadcast rate = min(--rate, budget / N) deliveries/s",
    )
    p.add_argument("--receivers", type=int, default=2, help="receiver processes (default 2)")
    p.add_argument("--login-window", type=int, default=32, help="logins in flight per receiver")
    p.add_argument("--target", metavar="HOST:PORT", help="measure a server already running")
    p.add_argument("--target-pid", type=int, help="its pid, for CPU and memory figures")
    p.add_argument("--target-dialect", choices=("chat", "redis"), default="chat")
    p.add_argument("--json", type=Path, help=f"JSON output (default {RESULTS}/load-nN.json)")
    p.add_argument("--plots", type=Path, help=f"PNG directory (default {RESULTS})")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: n=20, one short round, two direct rates"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.rounds, args.rate, args.duration, args.warmup = 20, 1, 50.0, 1.0, 0.2
        args.probes, args.dm_rates, args.dm_step = 2, "200,1000", 0.5
    return args


def choose_systems(args: argparse.Namespace, progress: Progress) -> tuple[list[str], list[str]]:
    """Systems to run and notes on the ones left out (never an error for a missing extra)."""
    if args.systems:
        wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    else:
        wanted = ["target", "redis"] if args.target else list(systems.KNOWN)
    notes = []
    chosen = []
    for name in wanted:
        if name == "target" and not args.target:
            raise SystemExit("system 'target' needs --target HOST:PORT")
        if name not in (*systems.KNOWN, "target"):
            raise SystemExit(f"unknown system {name!r}; choose from {', '.join(systems.KNOWN)}")
        reason = systems.unavailable_reason(name)
        if reason:
            notes.append(f"{name}: {reason}")
            progress.note(f"note: {name}: {reason}")
        else:
            chosen.append(name)
    return chosen, notes


def run_n(
    cfg: Config,
    names: list[str],
    args: argparse.Namespace,
    progress: Progress,
    base: list[int],
    runs: list[dict[str, Any]],
) -> None:
    """All rounds for one N, systems interleaved (rotated each round).

    The run is appended to ``runs`` first and filled in as systems finish, so
    an interrupted benchmark still reports every measurement it completed.
    """
    rounds: list[dict[str, Any]] = []
    runs.append(
        {"n": cfg.n, "rate": cfg.rate, "config": vars_of(cfg), "systems": names, "rounds": rounds}
    )
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        progress.note(f"== N={cfg.n} round {r + 1}/{args.rounds}: {', '.join(order)}")
        results: dict[str, Any] = {}
        rounds.append(results)
        for name in order:
            results[name] = run_one(name, cfg, args, progress, base[0])
            base[0] += cfg.n + 1
            time.sleep(0.5)  # let the last server's sockets and CPU settle


def run_one(
    name: str, cfg: Config, args: argparse.Namespace, progress: Progress, base: int
) -> dict[str, Any]:
    try:
        running = systems.start(
            name, cfg.n + cfg.probes + 16, args.target, args.target_pid, args.target_dialect
        )
    except (RuntimeError, OSError) as exc:
        progress.note(f"{name}: could not start: {exc}")
        return {"system": name, "error": f"could not start: {exc}"}
    try:
        return run_system(running, cfg, base, progress)
    except (FleetError, OSError, RuntimeError) as exc:
        progress.note(f"{name}: run failed: {exc!r}")
        return {"system": name, "error": f"run failed: {exc!r} {running.log_tail()}"}
    finally:
        running.stop()


def vars_of(cfg: Config) -> dict[str, Any]:
    return dict(cfg.__dict__)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress(enabled=not args.quiet)
    nofile = raise_nofile_limit()
    ns = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.clients]
    if max(ns) + 64 > nofile:
        raise SystemExit(f"RLIMIT_NOFILE is {nofile}; N={max(ns)} needs more (ulimit -Hn)")
    names, notes = choose_systems(args, progress)
    if not names:
        raise SystemExit("no system to measure: " + "; ".join(notes))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    base_cfg = Config(
        n=args.clients,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        pad=args.pad,
        probes=args.probes,
        dm_rates=[int(x) for x in args.dm_rates.split(",")],
        dm_step=args.dm_step,
        dm_slo_ms=args.dm_slo,
        receivers=args.receivers,
        login_window=args.login_window,
        skip=frozenset(skip),
    )
    started = time.time()
    doc: dict[str, Any] = {
        "command": "python bench/load.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_facts(),
        "started_unix": started,
        "log_level": {
            "select": systems.LOG_LEVEL,
            "threads": systems.LOG_LEVEL,
            "asyncio": "none (logs nothing)",
            "redis": "warning",
        },
        "notes": notes,
        "runs": [],
    }
    # A fresh base for client names per invocation keeps --target runs from colliding.
    base = [(os.getpid() % 1000) * 100_000 if args.target else 0]
    try:
        for n in ns:
            rate = min(args.rate, args.budget / n) if args.sweep else args.rate
            cfg = replace(base_cfg, n=n, rate=round(rate, 2))
            run_n(cfg, names, args, progress, base, doc["runs"])
    except KeyboardInterrupt:
        progress.note("interrupted: reporting what was measured")
        doc["interrupted"] = True
    doc["seconds"] = time.time() - started
    report.summarize(doc)
    print(report.table(doc))
    tag = "sweep" if args.sweep else f"n{args.clients}"
    json_path = args.json or RESULTS / f"load-{tag}.json"
    report.write_json(doc, json_path)
    progress.note(f"JSON: {json_path}")
    if not args.no_plots:
        for line in report.plots(doc, args.plots or RESULTS, tag):
            progress.note(line)
    return 1 if doc.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
