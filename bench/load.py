#!/usr/bin/env python3
"""Load benchmark: our backends, an asyncio yardstick and Redis, side by side.

    python bench/load.py -n 500                  # the standard run (a few minutes)
    python bench/load.py --sweep 100,500,1000,2000,5000 --rounds 1
    python bench/load.py --target 127.0.0.1:4000 # a server already running (floods it!)
    python bench/load.py --quick                 # the smoke run (~20 s)

Our backends are every name in the registry ``reactor.BACKENDS``, each run as
``python -m reactor --backend NAME``, and ``select-tls``, the select backend
with TLS on its port (a throwaway certificate; every client speaks TLS);
beside them run ``asyncio-peer`` (the plain asyncio server of
bench/peers/asyncio_server.py) and Redis pub/sub.
Each round starts every system afresh on a free 127.0.0.1 port, in rotated
order (round-robin interleaving, so a noisy minute on a shared machine spreads
over all systems instead of one), connects N clients through the same lean
harness, and measures: login storm, memory per connection, presence fan-out,
open-loop broadcast fan-out, and direct messages at rising rates.  The report
gives medians over rounds, ratios to Redis, and checks that the harness spent
less CPU per delivery than Redis did (otherwise it would be measuring itself).

Output: an 80-column table on stdout (``--wide`` for every row), and in
``--out`` (default bench/results/, untracked) the table, JSON and PNG plots,
named after the systems and N.  Committed reference results live in
bench/reference/ and are replaced only on purpose (``--out bench/reference``).

Every child (servers, receivers, redis-server) is stopped on exit, on
exceptions, on SIGINT/SIGTERM/SIGHUP, and killed by the kernel if this process
is SIGKILLed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report, systems
from bench.harness.creceiver import build as build_receiver
from bench.harness.fleet import FleetError
from bench.harness.procstat import machine_facts, raise_nofile_limit
from bench.progress import Progress
from bench.workloads import Config, run_system

RESULTS = Path(__file__).resolve().parent / "results"  # untracked (.gitignore)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: stop like Ctrl-C (children stopped, partial report)."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Terminated(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "-n", "--clients", type=int, default=500, help="clients per system (default 500)"
    )
    p.add_argument(
        "--systems",
        help=f"comma list from {','.join(systems.KNOWN)} "
        "(default: all; with --target: target,redis)",
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
    p.add_argument(
        "--skip",
        default="",
        help="phases to leave out: presence,broadcast,direct,cluster-extras "
        "(the cluster's own phases, bench/cluster.py, run after the table when "
        "the systems include cluster)",
    )
    p.add_argument("--sweep", help="comma list of N; runs every N (rate scaled, see --budget)")
    p.add_argument(
        "--budget",
        type=float,
        default=75_000.0,
        help="sweep: broadcast rate = min(--rate, budget / N) deliveries/s",
    )
    p.add_argument("--receivers", type=int, default=2, help="receiver processes (default 2)")
    p.add_argument(
        "--receiver",
        choices=("auto", "c", "python"),
        default="auto",
        help="receive path: C compiled at run time, or Python (default: C if a compiler exists)",
    )
    p.add_argument("--login-window", type=int, default=32, help="logins in flight per receiver")
    p.add_argument("--target", metavar="HOST:PORT", help="measure a server already running")
    p.add_argument("--target-pid", type=int, help="its pid, for CPU and memory figures")
    p.add_argument("--target-dialect", choices=("chat", "redis"), default="chat")
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="directory for the table, JSON and plots (default bench/results/, untracked)",
    )
    p.add_argument("--json", type=Path, help="JSON path (default: in --out, named by run)")
    p.add_argument("--plots", type=Path, help="PNG directory (default: --out)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--wide", action="store_true", help="every row, wider than 80 columns")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: n=20, one short round, two direct rates"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, no notes")
    p.add_argument(
        "--report", type=Path, metavar="JSON",
        help="run nothing: print the table of an earlier run's JSON again, "
        "its goals judged by this code",
    )
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
        wanted = [systems.TARGET, systems.REDIS] if args.target else list(systems.KNOWN)
    notes = []
    chosen = []
    for name in wanted:
        if name == systems.TARGET and not args.target:
            raise SystemExit("system 'target' needs --target HOST:PORT")
        if name not in (*systems.KNOWN, systems.TARGET):
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
        progress.set_stage(f"N={cfg.n} {r + 1}/{args.rounds}")
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


def file_tag(args: argparse.Namespace, names: list[str], ns: list[int]) -> str:
    """Output file stem: the system set, N, and quick; a --target names its address."""
    parts = []
    for name in names:
        if name == systems.TARGET and args.target:
            name = "target-" + args.target.replace(":", "_").replace("/", "_")
        parts.append(name)
    n = f"sweep-{'-'.join(map(str, ns))}" if args.sweep else f"n{ns[0]}"
    return "+".join(parts) + f"-{n}" + ("-quick" if args.quick else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        try:
            doc = json.loads(args.report.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot read {args.report}: {error}") from None
        report.summarize(doc)
        print(report.table(doc, wide=args.wide))
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(systems.stop_all)
    progress = Progress(enabled=not args.quiet)
    try:
        return run(args, argv, progress)
    finally:
        progress.close()
        systems.stop_all()


def run(args: argparse.Namespace, argv: list[str] | None, progress: Progress) -> int:
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
    exe, how = None, "Python (--receiver python)"
    if args.receiver != "python":
        exe, how = build_receiver()
        if exe is None:
            if args.receiver == "c":
                raise SystemExit(how)
            progress.note(f"note: {how}; using the Python receiver")
            how = f"Python ({how})"
    tls_exe, tls_note = None, ""
    if systems.TLS in names:
        tls_how = "Python with the ssl module (--receiver python)"
        if args.receiver != "python":
            tls_exe, tls_how = build_receiver(tls=True)
            if tls_exe is None:
                progress.note(f"note: {tls_how}; {systems.TLS} gets the Python receiver")
                tls_how = f"Python with the ssl module ({tls_how})"
        tls_note = f"; {systems.TLS}: {tls_how}, {systems.CERT_KEY} certificate, not verified"
    base_cfg = replace(base_cfg, receiver_exe=exe, receiver_tls_exe=tls_exe)
    started = time.time()
    doc: dict[str, Any] = {
        "command": "python bench/load.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_facts(),
        "receiver": f"{how}, {args.receivers} process(es){tls_note}",
        "started_unix": started,
        "log_level": {name: systems.log_level(name) for name in names},
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
    except KeyboardInterrupt as exc:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)  # a second signal ends the report too
        systems.stop_all()
        progress.note(f"interrupted ({exc or 'SIGINT'}): reporting what was measured")
        doc["interrupted"] = str(exc) or "SIGINT"
    finally:
        progress.close()
    doc["seconds"] = time.time() - started
    report.summarize(doc)
    text = report.table(doc, wide=args.wide)
    print(text, flush=True)
    tag = file_tag(args, names, ns)
    written = []
    json_path = args.json or args.out / f"{tag}.json"
    report.write_json(doc, json_path)
    written.append(json_path)
    if not args.json:  # the table beside its JSON, always the wide one
        txt = args.out / f"{tag}.txt"
        txt.write_text(report.table(doc, wide=True) + "\n")
        written.append(txt)
    if not args.no_plots:
        pngs = report.plots(doc, args.plots or args.out, tag)
        if pngs is None:
            progress.note("note: matplotlib not installed; plots skipped (pip install matplotlib)")
        written += pngs or []
    if systems.CLUSTER in names and not doc.get("interrupted") and "cluster-extras" not in skip:
        from bench import cluster  # the cluster's own phases: DM costs, node death, Redis stall

        written += cluster.after_load(args, doc, Progress(enabled=not args.quiet))
    for path in written:
        print(f"wrote {path}")
    return 1 if doc.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
