#!/usr/bin/env python3
"""What a node's death costs the nodes that survive it, at scale.

    python bench/node_death.py --victims 1000 --observers 1000   # about a minute

``bench/cluster.py`` times a node's death with 50 users and 3 observers: the
lease decides it.  At scale the survivors' work decides it too: each must
tell each of its users about each of the dead node's users (``observers x
victims`` offline notices).  Here a cluster of two nodes (select, the default
lease) holds ``--observers`` users on the node that survives and
``--victims`` on the one that is SIGKILLed; measured, per trial: the time from
the kill to the last offline notice at every observer (the lease, then the
survivor's fan-out), and the CPU the survivor spent from the kill to then.
Every observer must get each notice exactly once.

The observers are read by a lean client that only counts lines, so that the
harness's own cost stays small beside the server's: about 1 line per
observer per victim (``observers x victims`` lines in all).
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster_nodes import LEASE_DEFAULT, Nodes
from bench.harness.hub import Hub
from bench.harness.procstat import machine_facts, raise_nofile_limit

OFFLINE = b" is offline.>\n"


class Counter:
    """A logged-in connection that counts offline notices and drops the rest
    (what ``Hub`` asks of a client: ``sock``, ``read``, ``closed``, ``close``)."""

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(name.encode() + b"\n")
        self.sock.setblocking(False)
        self.own = f"<User {name} is online.>\n".encode()
        self.logged_in = False
        self.closed = False
        self.tail = b""  # the last bytes read: a line split over two reads
        self.offline = 0
        self.last_ns = 0

    def read(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        if not data:
            self.closed = True
            return
        joined = self.tail + data
        if not self.logged_in and self.own in joined:
            self.logged_in = True
        count = joined.count(OFFLINE) - self.tail.count(OFFLINE)
        if count:
            self.offline += count
            self.last_ns = time.monotonic_ns()
        self.tail = joined[-64:]

    def close(self) -> None:
        self.sock.close()


class Crowd(Hub):
    """Many Counters, read together."""

    def join(self, port: int, names: list[str], timeout: float = 30.0) -> list[Counter]:
        joined = [Counter(port, name) for name in names]
        for member in joined:
            self.sel.register(member.sock, selectors.EVENT_READ, member)
        self.clients += joined  # type: ignore[arg-type]
        if not self.until(lambda: all(m.logged_in for m in joined), timeout):
            raise RuntimeError("not every login was answered")
        return joined

    def quiet(self, seconds: float, limit: float = 60.0) -> None:
        """Read until nothing arrives for ``seconds``."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not self.sel.select(seconds):
                return
            self.poll(0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile_limit()
    nodes = Nodes(args.victims + args.observers + 64)
    crowd = Crowd()
    trials = []
    try:
        lease = ("--cluster-lease", str(args.lease))
        survivor = nodes.add(extra=lease)
        observers = crowd.join(survivor.port, [f"o{i}" for i in range(args.observers)])
        for trial in range(args.trials):
            doomed = nodes.add(extra=lease)
            victims = crowd.join(doomed.port, [f"v{trial}x{i}" for i in range(args.victims)])
            crowd.quiet(0.5)  # every online notice delivered
            for member in observers:
                member.offline = 0
            cpu0 = survivor.cpu_seconds() or 0.0
            t0 = time.monotonic_ns()
            doomed.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            done = crowd.until(lambda: all(m.offline >= args.victims for m in observers),
                               args.lease * 3 + 60)
            last_s = (max(m.last_ns for m in observers) - t0) / 1e9 if done else None
            crowd.quiet(0.3)  # anything doubled arrives now
            cpu = (survivor.cpu_seconds() or 0.0) - cpu0
            counts = [m.offline for m in observers]
            trials.append({
                "complete": done, "last_s": last_s, "survivor_cpu_s": cpu,
                "notices": sum(counts), "expected": args.victims * len(observers),
                "exactly_once": all(c == args.victims for c in counts),
            })
            print(f"trial {trial + 1}: last notice after {last_s} s, survivor CPU "
                  f"{cpu:.3f} s, exactly once: {trials[-1]['exactly_once']}", flush=True)
            for member in victims:
                crowd.drop(member)  # type: ignore[arg-type]
            nodes.remove(doomed)
    finally:
        crowd.close()
        nodes.stop()
    lasts = [t["last_s"] for t in trials if t["last_s"] is not None]
    cpus = [t["survivor_cpu_s"] for t in trials]
    return {
        "victims": args.victims, "observers": args.observers, "lease_s": args.lease,
        "trials": trials,
        "last_median_s": statistics.median(lasts) if lasts else None,
        "survivor_cpu_median_s": statistics.median(cpus) if cpus else None,
        "machine": machine_facts(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--victims", type=int, default=1000, help="users of the node killed")
    p.add_argument("--observers", type=int, default=1000, help="users of the survivor")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--lease", type=float, default=LEASE_DEFAULT,
                   help=f"the nodes' --cluster-lease (default {LEASE_DEFAULT:g}, the server's)")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    result = run(args)
    print(f"{args.victims} users of a killed node, {args.observers} on the survivor: last "
          f"offline notice after {result['last_median_s']} s (median), survivor CPU "
          f"{result['survivor_cpu_median_s']:.3f} s (median of {args.trials})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(t["complete"] and t["exactly_once"] for t in result["trials"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
