#!/usr/bin/env python3
"""Load benchmark: how much each system carries, ours beside an asyncio yardstick and Redis.

    python bench/load.py -n 500          # the standard run (about 15 minutes on 2 cores)
    python bench/load.py --quick         # the smoke run (under a minute)
    python bench/load.py --systems select,redis --sweep 500,1000,2000,5000,10000 --rounds 1
    python bench/load.py --target 127.0.0.1:4000   # a server already running (floods it!)

Our backends are every name in the registry ``reactor.BACKENDS``, each run as
``python -m reactor --backend NAME``, and ``select-tls``, the select backend
with TLS on its port (a throwaway certificate; every client speaks TLS);
beside them run ``asyncio-peer`` (the plain asyncio server of
bench/peers/asyncio_server.py), Redis pub/sub and the cluster (two workers
through Redis); ``asyncio-uvloop`` and ``select-ws`` (the select backend's
web port, every client speaking WebSocket as a browser's page does) on request.
Each round starts every system afresh on a free 127.0.0.1 port, in rotated
order (round-robin interleaving, so a noisy minute on a shared machine spreads
over all systems instead of one), connects N clients through the same lean
harness, and measures: login storm, memory per connection, presence fan-out,
then the broadcast and direct-message **capacity**: offered load stepped up,
open loop, until p99 latency passes the objective or anything is lost, then a
short bisection (bench/capacity.py; bench/METHOD.md says how to read it).
The report gives capacities (medians over rounds, their range, ratios to
Redis and to select), the goals as MET / MISSED / UNSURE, and checks that the
harness spent less CPU per delivery than Redis did.

Output: the report on stdout in 80 columns, and in ``--out`` (default
bench/results/, untracked) the same text, a wide table beside it, the JSON
and the plots (latency against offered load; the latency distribution).
Committed reference results live in bench/reference/ and are replaced only on
purpose (``--out bench/reference``).

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
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import plots, report, summary, systems
from bench.harness.creceiver import build as build_receiver
from bench.harness.fleet import FleetError
from bench.harness.procstat import code_commit, ephemeral_ports, machine_facts, raise_nofile_limit
from bench.progress import Progress
from bench.workloads import Config, broadcast_step_seconds, run_system

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"  # untracked (.gitignore)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: stop like Ctrl-C (children stopped, partial report)."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Terminated(signal.Signals(signum).name)


class _Help(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default (a flag's
    default is off, and an option without one says what happens instead)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS:
            return text
        if "default" not in text:
            text += " (default: %(default)s)" if default != "" else " (default: none)"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        # Never split a name at its hyphen ("select-" / "ws"): the names
        # are what a reader copies onto the command line.
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


#: The largest N a sweep is meant for: one server process with 10,000
#: connections, and the harness's 10,000 on the same machine.
SWEEP_MAX = 10_000

#: Above this N a broadcast's own fan-out approaches the objective (one
#: message to N sockets), so the objective grows with N: ``--objective`` per
#: this many clients.
OBJECTIVE_N = 500


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=textwrap.fill(__doc__.splitlines()[0], 78),
                                epilog=_epilog(),
                                formatter_class=_Help)  # fmt: skip
    p.add_argument("-n", "--clients", type=int, default=500, help="clients per system")
    p.add_argument(
        "--systems",
        default=",".join(systems.DEFAULT),
        help=f"comma list from {','.join(systems.KNOWN)} (with --target: target,redis)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    g = p.add_argument_group("capacity search (bench/capacity.py)")
    g.add_argument("--objective", type=float, default=20.0,
                   help=f"broadcast p99 ms a step must keep (per {OBJECTIVE_N} clients above "
                   f"N={OBJECTIVE_N})")  # fmt: skip
    g.add_argument("--dm-objective", type=float, default=20.0,
                   help="direct-message p99 ms a step must keep")  # fmt: skip
    g.add_argument("--ladder", default="10000,40000,160000,640000,1280000,2560000,5120000",
                   help="offered broadcast deliveries/s, rising (a step sends "
                   "deliveries / N broadcasts a second); a capacity that passes the top, or "
                   "that stops where the harness was the limit, is only a lower bound")  # fmt: skip
    g.add_argument("--dm-ladder", default="5000,10000,20000,40000,80000,160000,240000",
                   help="offered direct messages/s, rising")  # fmt: skip
    g.add_argument("--bisect", type=int, default=3,
                   help="bisections after the first failing step")  # fmt: skip
    g.add_argument("--step", type=float, default=1.0,
                   help="measured seconds per broadcast step")  # fmt: skip
    g.add_argument("--step-warmup", type=float, default=0.25,
                   help="unmeasured seconds before each broadcast step")  # fmt: skip
    g.add_argument("--step-max", type=float, default=8.0,
                   help="longest broadcast step, seconds: a step lasts long enough for 16 "
                   "broadcasts (at N = 10,000 and 10k deliveries/s, 16 s), but no longer "
                   "than this")  # fmt: skip
    g.add_argument("--dm-step", type=float, default=0.6, help="seconds per direct-message step")
    p.add_argument("--pad", type=int, default=0, help="extra bytes per broadcast payload")
    p.add_argument("--probes", type=int, default=5, help="presence probes per run")
    p.add_argument(
        "--skip",
        default="",
        help="phases to leave out: presence,broadcast,direct,cluster-extras "
        "(the cluster's own phases, bench/cluster.py, run after the table when "
        "the systems include cluster)",
    )
    p.add_argument("--sweep", help="comma list of N: every phase at every N, up to "
                   f"{SWEEP_MAX:,} (the descriptor limit allowing), then a table against N; "
                   "500,1000,2000,5000,10000 with --systems select,redis --rounds 1 takes "
                   "about 10 minutes on 2 cores, a third of it the login storms at large N "
                   "(default: none, -n alone)")  # fmt: skip
    p.add_argument("--receivers", type=int, default=2, help="receiver processes")
    p.add_argument(
        "--receiver",
        choices=("auto", "c", "python"),
        default="auto",
        help="receive path: C compiled at run time, or Python (auto: C if a compiler exists)",
    )
    p.add_argument("--login-window", type=int, default=32, help="logins in flight per receiver")
    p.add_argument("--target", metavar="HOST:PORT",
                   help="measure a server already running (default: none, each system "
                   "is started afresh)")  # fmt: skip
    p.add_argument("--target-pid", type=int,
                   help="its pid, for CPU and memory figures (default: none, no such figures)")
    p.add_argument(
        "--target-dialect",
        choices=("chat", "redis", "web"),
        default="chat",
        help="what --target speaks: chat (this project's line protocol), redis "
        "(RESP pub/sub: a login subscribes, a broadcast publishes) or web (the chat "
        "over a --web-port's WebSocket)",
    )
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="directory for the report, the wide table, JSON and plots "
                   "(default: bench/results/, untracked)")  # fmt: skip
    p.add_argument("--json", type=Path, help="JSON path (default: in --out, named by run)")
    p.add_argument("--plots", type=Path, help="PNG directory (default: --out)")
    p.add_argument("--no-plots", action="store_true",
                   help="write no PNG plots (matplotlib is then not needed)")  # fmt: skip
    p.add_argument("--wide", action="store_true",
                   help="print the wide table (every row, wider than 80 columns) "
                   "instead of the 80-column one; both are saved")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="smoke run, under a minute: N=20, one round, two short steps "
                   "and one bisection per workload, the cluster's costs only")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar, no notes")
    p.add_argument(
        "--report", type=Path, metavar="JSON",
        help="run nothing: print the report of an earlier run's JSON again, "
        "its goals judged by this code (default: none, run the benchmark)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.target and args.systems == p.get_default("systems"):
        args.systems = f"{systems.TARGET},{systems.REDIS}"
    if args.quick:  # its sizes, where the command line gave none
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


#: What --quick changes (an option given on the command line wins).
QUICK: dict[str, Any] = {
    "clients": 20, "rounds": 1, "probes": 2, "ladder": "2000,8000", "dm_ladder": "1000,4000",
    "bisect": 1, "step": 0.3, "step_warmup": 0.1, "dm_step": 0.3,
}  # fmt: skip


def _epilog() -> str:
    return textwrap.fill(
        "Capacity: the highest offered rate with p99 <= the objective and nothing lost. "
        "A goal is MET when every round meets it, MISSED when none does, UNSURE when "
        "the rounds disagree (bench/METHOD.md).",
        78,
    )


def choose_systems(args: argparse.Namespace, progress: Progress) -> tuple[list[str], list[str]]:
    """Systems to run and notes on the ones left out (never an error for a missing extra)."""
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
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
    runs.append({"n": cfg.n, "config": vars_of(cfg), "systems": names, "rounds": rounds})
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        # The round only when there are several: "N=10000 select: broadcast 160k
        # deliveries/s" must fit the bar's label.
        progress.set_stage(f"N={cfg.n}" + (f" {r + 1}/{args.rounds}" if args.rounds > 1 else ""))
        results: dict[str, Any] = {}
        rounds.append(results)
        for name in order:
            t0 = time.monotonic()
            results[name] = run_one(name, cfg, args, progress, base[0])
            results[name]["seconds"] = round(time.monotonic() - t0, 1)
            base[0] += cfg.n + 1
            time.sleep(0.5)  # let the last server's sockets and CPU settle
            progress.next_part()


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


#: The systems a sweep compares (issue: 10,000 users on one process); a sweep
#: of just these is named ``sweep`` alone.
SWEEP_SYSTEMS = (systems.PRIMARY, systems.REDIS)


def file_tag(args: argparse.Namespace, ns: list[int]) -> str:
    """Output file stem, short: ``load-n500``, ``sweep``, ``-quick``; a
    system set other than the default (for a sweep: other than select and
    Redis) is named when that stays short.  The set is the one asked for: a
    default run stays ``load-n500`` when a system is skipped for a missing
    extra (the report's notes say so)."""
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    tag = "sweep" if args.sweep else f"load-n{ns[0]}"
    usual = SWEEP_SYSTEMS if args.sweep else systems.DEFAULT
    if args.target:
        tag += "-target-" + args.target.replace(":", "_").replace("/", "_")
    elif tuple(names) != usual:
        joined = "+".join(names)
        tag += "-" + (joined if len(joined) <= 24 else f"{len(names)}systems")
    return tag + ("-quick" if args.quick else "")


def objective_at(n: int, objective: float) -> float:
    """The broadcast objective at N clients (see ``OBJECTIVE_N``)."""
    return objective * max(1.0, n / OBJECTIVE_N)


def estimates(cfg: Config, args: argparse.Namespace, systems_per_round: int) -> list[float]:
    """Seconds each part of the run should take, for the progress bar's time left."""
    parts = []
    for n in [int(x) for x in args.sweep.split(",")] if args.sweep else [cfg.n]:
        # Starting, connecting and draining take longer with more clients, up
        # to what they take at N = 500 (a --quick run's 20 clients settle fast).
        busy = min(1.0, n / OBJECTIVE_N)
        # The login storm announces every login to everyone: N^2/2 notices.
        setup = 1.0 + busy + 0.3 * (n / 1000) ** 2 + cfg.probes * (0.1 + n / 20_000)
        # Most searches climb most of the ladder, measure the failing step
        # again, then bisect near the top.
        climbed = cfg.ladder[: max(1, round(len(cfg.ladder) * 0.7))]
        steps = [broadcast_step_seconds(replace(cfg, n=n), d) for d in climbed]
        steps += [steps[-1]] * (1 + cfg.bisections)
        broadcast = sum(s + cfg.step_warmup + 0.1 + 0.7 * busy for s in steps)
        direct = (len(cfg.dm_ladder) * 0.7 + 1 + cfg.bisections) * (cfg.dm_step + 0.1 + 0.5 * busy)
        settle = 0.5  # the pause after each system (run_n)
        parts += [setup + broadcast + direct + settle] * (args.rounds * systems_per_round)
    return parts


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is under it (shorter)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        # Printing only: piped into head, it stops quietly, as cat does.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        try:
            doc = json.loads(args.report.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot read {args.report}: {error}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
            raise SystemExit(f"{args.report} is not the JSON of a bench/load.py run "
                             "(it has no list of runs)")
        if not all("ladder" in run.get("config", {}) for run in doc.get("runs", [])):
            raise SystemExit(f"{args.report} is from before the capacity search; its own "
                             "commit's bench/load.py prints it (git keeps that)")  # fmt: skip
        summary.summarize(doc)
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


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"not a comma list of numbers: {text!r}") from None
    if not values or values != sorted(values) or values[0] <= 0:
        raise SystemExit(f"a ladder must rise from above 0: {text!r}")
    return values


def run(args: argparse.Namespace, argv: list[str] | None, progress: Progress) -> int:
    nofile = raise_nofile_limit()
    ns = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.clients]
    if max(ns) + 64 > nofile:
        raise SystemExit(f"RLIMIT_NOFILE is {nofile}; N={max(ns)} needs more (ulimit -Hn)")
    ports = ephemeral_ports()
    if ports is not None and max(ns) + 1000 > ports:  # others' connections need some too
        raise SystemExit(f"only {ports} local ports (net.ipv4.ip_local_port_range) for "
                         f"N={max(ns)} clients on 127.0.0.1; widen the range")  # fmt: skip
    names, notes = choose_systems(args, progress)
    if not names:
        raise SystemExit("no system to measure: " + "; ".join(notes))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    base_cfg = Config(
        n=args.clients,
        pad=args.pad,
        probes=args.probes,
        receivers=args.receivers,
        login_window=args.login_window,
        skip=frozenset(skip),
        capacity=True,
        ladder=_floats(args.ladder),
        dm_ladder=_floats(args.dm_ladder),
        bisections=args.bisect,
        step=args.step,
        step_warmup=args.step_warmup,
        min_broadcasts=4 if args.quick else 16,
        max_step=args.step_max,
        dm_step=args.dm_step,
        dm_objective_ms=args.dm_objective,
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
    extras = systems.CLUSTER in names and "cluster-extras" not in skip
    plan = estimates(base_cfg, args, len(names))
    progress.plan(plan + ([10.0 if args.quick else 90.0] if extras else []))
    if args.sweep:  # the long run: say up front how long (the bar corrects it as it goes)
        progress.note(f"note: a sweep of N = {args.sweep}, {len(names)} systems: expected "
                      f"about {sum(plan) / 60:.0f} minutes on an idle machine")  # fmt: skip
    started = time.time()
    doc: dict[str, Any] = {
        "command": "python bench/load.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_facts(),
        "commit": code_commit(),
        "receiver": f"{how}, {args.receivers} process(es){tls_note}",
        "started_unix": started,
        "log_level": {name: systems.log_level(name) for name in names},
        "notes": notes,
        "sweep": bool(args.sweep),
        "expected_seconds": round(sum(plan)),
        "runs": [],
    }
    # A fresh base for client names per invocation keeps --target runs from colliding.
    base = [(os.getpid() % 1000) * 100_000 if args.target else 0]
    try:
        for n in ns:
            cfg = replace(base_cfg, n=n, objective_ms=objective_at(n, args.objective))
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
    summary.summarize(doc)
    text = report.table(doc, wide=args.wide)
    print(text, flush=True)
    tag = file_tag(args, ns)
    written = []
    json_path = args.json or args.out / f"{tag}.json"
    report.write_json(doc, json_path)
    written.append(json_path)
    if not args.json:  # what was printed, and the wide table beside it
        txt, wide = args.out / f"{tag}.txt", args.out / f"{tag}-wide.txt"
        txt.write_text(report.table(doc, wide=False) + "\n")
        wide.write_text(report.table(doc, wide=True) + "\n")
        written += [txt, wide]
    if not args.no_plots:
        pngs = plots.write(doc, args.plots or args.out, tag)
        if pngs is None:
            progress.note("note: matplotlib not installed; plots skipped (pip install matplotlib)")
        written += pngs or []
    if extras and not doc.get("interrupted"):
        from bench import cluster  # the cluster's own phases: DM costs, node death, Redis stall

        written += cluster.after_load(args, doc, progress)
    for path in written:
        print(f"wrote {_shown(path)}")
    return 1 if doc.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
