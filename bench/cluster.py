#!/usr/bin/env python3
"""Cluster benchmark: what one chat across server processes through Redis costs.

    python bench/cluster.py -n 500          # the standard run (about 5 minutes)
    python bench/cluster.py --quick         # the smoke run (about 25 s)

Also run by ``python bench/load.py`` when its systems include ``cluster``
(load.py then measures the broadcast fan-out itself, in its own table, with
the cluster's two workers sharing one port, and this module adds the rest).

Every cluster here is started afresh: a redis-server on a free port, and
nodes of our default backend (``python -m reactor --cluster redis://...``),
each either a node of its own on its own port (so that the harness chooses
who is on which node) or ``--workers N`` on one port.  Measured, in one run:

* **fan-out** (rounds interleaved with single-node select and Redis pub/sub):
  login storm and open-loop broadcasts to N clients, half of them on the
  sender's node and half on the other; latency per half, Redis commands and
  Redis CPU per broadcast.
* **costs**: Redis commands per local DM, per cross-node DM and per broadcast
  (at a small N, to set beside the large N of the fan-out), after taking off
  the idle cluster's own (lease renewals, blocked reads).
* **DM latency**, closed loop, interleaved message by message: sender and
  recipient on one node, on two nodes, and on a single server without
  ``--cluster``.
* **DM throughput** of the cluster with 1 and 2 workers (and a single server
  without ``--cluster``): several senders keep a window of messages in
  flight; messages per second, and per CPU-second of the workers and Redis.
* **node death**: SIGKILL of a node with K users; time until the last
  ``<User X is offline.>`` reached every observer on the other node.
* **Redis stall**: SIGSTOP of redis-server for ~1 s; offline notices seen
  (false ones: no node died), and what DMs sent meanwhile were answered.

Each kind of phase has a module of its own: bench/cluster_fanout.py,
cluster_costs.py, cluster_dms.py (latency, throughput), cluster_failures.py
(node death, Redis stall), on the clusters of cluster_nodes.py; the summary
and table are cluster_report.py's.  This file runs them.

Lost, duplicated and falsely echoed messages (``<To X>`` for a message X never
got) are counted in every phase.  Output: an 80-column table on stdout, and
``cluster-n<N>.{txt,json}`` in ``--out`` (default bench/results/, untracked).
"""

from __future__ import annotations

import argparse
import atexit
import json
import signal
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import systems
from bench.cluster_costs import costs
from bench.cluster_dms import dm_latency, throughput
from bench.cluster_failures import node_death, redis_stall
from bench.cluster_fanout import fanout
from bench.cluster_nodes import LEASE_DEFAULT
from bench.cluster_report import dig, med, summarize, table
from bench.harness.creceiver import build as build_receiver
from bench.harness.procstat import machine_facts, raise_nofile_limit
from bench.progress import Progress
from bench.workloads import Config

RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--costs-n", type=int, default=100, help="clients in the costs phase (100)")
    p.add_argument("--costs-seconds", type=float, default=1.5)
    p.add_argument("--dm-count", type=int, default=500, help="DMs per pair, latency phase")
    p.add_argument("--tp-clients", type=int, default=200)
    # Many senders with a few messages each in flight, as real users send: a
    # connection's lines are handled in order, so one sender's cross-node DMs
    # go one round trip through Redis at a time.
    p.add_argument("--tp-senders", type=int, default=48)
    p.add_argument("--tp-window", type=int, default=4)
    p.add_argument("--tp-seconds", type=float, default=3.0)
    p.add_argument("--kill-users", type=int, default=50)
    p.add_argument("--kill-trials", type=int, default=3)
    p.add_argument("--stall", type=float, default=1.0, help="seconds Redis is stopped (1)")
    p.add_argument("--stall-users", type=int, default=20, help="per node")
    p.add_argument("--stall-trials", type=int, default=2)
    p.add_argument("--stall-watch", type=float, default=2 * LEASE_DEFAULT,
                   help="seconds to watch for offline notices after a stall")  # fmt: skip
    p.add_argument("--verbose", action="store_true")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", "--clients", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=float, default=150.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--receivers", type=int, default=2)
    p.add_argument("--receiver", choices=("auto", "c", "python"), default="auto")
    p.add_argument("--skip", default="", help="phases to leave out: "
                   "fanout,costs,latency,throughput,death,stall")  # fmt: skip
    p.add_argument("--no-redis", dest="with_redis", action="store_false",
                   help="leave Redis pub/sub out of the fan-out")  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny N, one round")
    p.add_argument("--quiet", action="store_true")
    add_arguments(p)
    args = p.parse_args(argv)
    if args.quick:
        quicken(args)
    return args


def quicken(args: argparse.Namespace) -> None:
    args.clients, args.rounds, args.duration, args.warmup = 20, 1, 1.0, 0.2
    args.rate = 50.0
    args.costs_n, args.costs_seconds, args.dm_count = 20, 0.5, 30
    args.tp_clients, args.tp_seconds, args.kill_users, args.kill_trials = 20, 0.5, 5, 1
    args.tp_senders, args.tp_seconds = 8, 0.3
    args.stall_users, args.stall_trials, args.stall_watch = 3, 1, LEASE_DEFAULT + 0.5
    args.with_redis = False


def run(
    args: argparse.Namespace, progress: Progress, doc: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every phase not in ``args.skip``; results into ``doc`` (returned)."""
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    exe = None
    if args.receiver != "python":
        exe, how = build_receiver()
        if exe is None and args.receiver == "c":
            raise SystemExit(how)
    cfg = Config(n=args.clients, rate=args.rate, duration=args.duration, warmup=args.warmup,
                 receivers=args.receivers, receiver_exe=exe)  # fmt: skip
    doc = doc if doc is not None else {}
    doc.update({
        "n": args.clients, "rounds": args.rounds, "rate": args.rate, "duration": args.duration,
        "tp_senders": args.tp_senders, "tp_window": args.tp_window,
        "tp_clients": args.tp_clients, "tp_seconds": args.tp_seconds,
    })  # fmt: skip
    doc.setdefault("machine", machine_facts())
    phases: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("fanout", "fanout", lambda: fanout(args, cfg, progress)),
        ("costs", "costs", lambda: costs(args, cfg, progress)),
        # Without the fan-out phase, the large N's Redis commands per broadcast come from here.
        ("costs", "costs_large",
         lambda: costs(args, cfg, progress, args.clients)
         if "fanout" in skip and args.clients != args.costs_n else None),
        ("latency", "dm_latency", lambda: dm_latency(args, progress)),
        ("throughput", "throughput", lambda: throughput(args, cfg, progress)),
        ("death", "node_death", lambda: node_death(args, progress)),
        ("stall", "stall", lambda: redis_stall(args, progress)),
    ]
    for name, key, phase in phases:
        if name in skip:
            continue
        t0 = time.monotonic()
        try:
            result = phase()
            if result is None:
                continue
            doc[key] = result
            doc.setdefault("phase_seconds", {})[key] = round(time.monotonic() - t0, 1)
        except (RuntimeError, OSError) as exc:
            progress.note(f"cluster: {name} failed: {exc!r}")
            doc.setdefault("errors", {})[name] = repr(exc)
    return doc


def write(doc: dict[str, Any], out: Path, tag: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, txt = out / f"{tag}.json", out / f"{tag}.txt"
    js.write_text(json.dumps(doc, indent=1, default=_jsonable))
    txt.write_text(table(doc) + "\n")
    return [txt, js]


def _jsonable(x: Any) -> Any:
    if isinstance(x, array):
        return list(x)
    return str(x)


def after_load(
    load_args: argparse.Namespace, load_doc: dict[str, Any], progress: Progress
) -> list[Path]:
    """load.py's hook: the cluster's own phases (load.py did the fan-out), in
    the same run; prints the table and writes ``cluster-n<N>[-quick]``."""
    # A quick run keeps to the costs (bench/cluster.py --quick runs every phase).
    skip = "fanout" + (",latency,throughput,death,stall" if load_args.quick else "")
    args = parse_args(["--skip", skip, "-n", str(load_args.clients),
                       "--rounds", str(load_args.rounds)] + (["--quick"] if load_args.quick
                                                            else []))  # fmt: skip
    args.receiver, args.receivers = load_args.receiver, load_args.receivers
    doc: dict[str, Any] = {"command": load_doc.get("command"), "machine": load_doc["machine"]}
    for run_ in load_doc.get("runs", []):
        rs = run_["rounds"]
        sel = med([dig(r, systems.PRIMARY, "broadcast", "kernel_ms", "p50") for r in rs])
        clu = med([dig(r, systems.CLUSTER, "broadcast", "kernel_ms", "p50") for r in rs])
        if systems.CLUSTER in run_["systems"] and systems.PRIMARY in run_["systems"]:
            doc["load_fanout"] = {"n": run_["n"], "select_p50": sel, "cluster_p50": clu}
    run(args, progress, doc)
    progress.close()
    doc["n"] = load_args.clients
    summarize(doc)
    print("\n" + table(doc), flush=True)  # a blank line after load.py's report
    tag = f"cluster-extras-n{load_args.clients}" + ("-quick" if load_args.quick else "")
    return write(doc, load_args.out, tag)


def _on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    atexit.register(systems.stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    progress = Progress(enabled=not args.quiet)
    started = time.time()
    doc: dict[str, Any] = {"command": "python bench/cluster.py " + " ".join(
        sys.argv[1:] if argv is None else argv)}  # fmt: skip
    try:
        run(args, progress, doc)
    except KeyboardInterrupt:
        systems.stop_all()
        doc["interrupted"] = True
    finally:
        progress.close()
        systems.stop_all()
    doc["seconds"] = time.time() - started
    summarize(doc)
    print(table(doc), flush=True)
    tag = f"cluster-n{args.clients}" + ("-quick" if args.quick else "")
    tag += f"-r{args.rate:g}" if args.rate != 150.0 and not args.quick else ""
    for path in write(doc, args.out, tag):
        print(f"wrote {path}")
    return 1 if doc.get("interrupted") else 0



if __name__ == "__main__":
    sys.exit(main())
