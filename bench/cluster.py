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

Lost, duplicated and falsely echoed messages (``<To X>`` for a message X never
got) are counted in every phase.  Output: an 80-column table on stdout, and
``cluster-n<N>.{txt,json}`` in ``--out`` (default bench/results/, untracked).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import systems
from bench.harness import wire
from bench.harness.creceiver import build as build_receiver
from bench.harness.driver import Conn
from bench.harness.fleet import Fleet, merge_records
from bench.harness.procstat import cpu_seconds, machine_facts, raise_nofile_limit, stop_process
from bench.peers.redis_peer import start_redis
from bench.progress import Progress
from bench.stats import nearest_rank
from bench.workloads import Config, broadcast, login_storm, run_system

RESULTS = Path(__file__).resolve().parent / "results"
NS = 1_000_000_000
SPREAD = "cluster-2n"  # two nodes on two ports, N/2 clients on each
LEASE_DEFAULT = 3.0  # reactor's default --cluster-lease
GOAL_P50_RATIO = 1.3
GOAL_KILL_S = 5.0


# -- Redis ------------------------------------------------------------------


class RedisStats:
    """Snapshots of one redis-server's counters (INFO), for deltas."""

    def __init__(self, port: int, pid: int | None = None) -> None:
        import redis

        self.r = redis.Redis(port=port, socket_timeout=5)
        self.pid = pid

    def snap(self) -> dict[str, Any]:
        info = self.r.info("all")
        calls = {k[8:]: v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}
        return {
            "t": time.monotonic(),
            "total": info["total_commands_processed"],
            "calls": calls,
            "cpu": info["used_cpu_user"] + info["used_cpu_sys"],
        }

    def close(self) -> None:
        self.r.close()


def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What Redis did between snapshots ``a`` and ``b`` (its own INFO calls taken off)."""
    calls = {k: v - a["calls"].get(k, 0) for k, v in b["calls"].items()}
    calls = {k: v for k, v in calls.items() if v and k not in ("info",)}
    info_calls = b["calls"].get("info", 0) - a["calls"].get("info", 0)
    scripts = sum(v for k, v in calls.items() if k in ("evalsha", "eval", "fcall", "script|load"))
    reads = sum(v for k, v in calls.items() if k in ("xread", "xreadgroup"))
    return {
        "seconds": b["t"] - a["t"],
        "commands": b["total"] - a["total"] - info_calls,
        "scripts": scripts,
        "reads": reads,
        "calls": calls,
        "cpu_s": b["cpu"] - a["cpu"],
    }


def per_op(d: dict[str, Any], ops: int, idle: dict[str, Any] | None) -> dict[str, Any]:
    """Commands (and script calls, reads, Redis CPU) per operation, the idle
    cluster's rate over the same time taken off."""
    if not ops:
        return {}
    out = {"ops": ops, "seconds": d["seconds"]}
    for key in ("commands", "scripts", "reads", "cpu_s"):
        base = idle[key] / idle["seconds"] * d["seconds"] if idle and idle["seconds"] > 0 else 0
        out[key] = max(0.0, d[key] - base) / ops
    out["calls"] = {k: v / ops for k, v in sorted(d["calls"].items(), key=lambda kv: -kv[1])}
    out["redis_us_per_command"] = d["cpu_s"] / d["commands"] * 1e6 if d["commands"] else None
    return out


# -- clients that keep what they read -----------------------------------------


class Client:
    """One chat connection whose lines are kept with their arrival time (ns)."""

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""
        self.lines: list[tuple[int, bytes]] = []
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def read(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        now = time.monotonic_ns()
        if not data:
            self.closed = True
            return
        *lines, self.buf = (self.buf + data).split(b"\n")
        self.lines.extend((now, line) for line in lines)

    def find(self, needle: bytes, start: int = 0) -> int | None:
        """Arrival time of the first line from ``start`` on containing ``needle``."""
        for t, line in self.lines[start:]:
            if needle in line:
                return t
        return None

    def count(self, needle: bytes, start: int = 0) -> int:
        return sum(1 for _, line in self.lines[start:] if needle in line)

    def close(self) -> None:
        self.sock.close()


class Hub:
    """Reads every client it holds while waiting for a condition."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: list[Client] = []

    def connect(self, port: int, name: str) -> Client:
        c = Client(port, name)
        self.sel.register(c.sock, selectors.EVENT_READ, c)
        self.clients.append(c)
        return c

    def drop(self, c: Client) -> None:
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.close()
        self.clients.remove(c)

    def poll(self, timeout: float) -> None:
        for key, _ in self.sel.select(max(0.0, timeout)):
            c = key.data
            c.read()
            if c.closed:
                self.sel.unregister(c.sock)

    def until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(0.05, left))
        return True

    def settle(self, seconds: float) -> None:
        self.until(lambda: False, seconds)

    def login(self, port: int, names: list[str], timeout: float = 20.0) -> list[Client]:
        """Connect and log ``names`` in (all at once); raise if any is not online."""
        cs = [self.connect(port, name) for name in names]
        for c in cs:
            c.send(c.name.encode() + b"\n")
        ok = self.until(lambda: all(c.find(wire.online_notice(c.name)) for c in cs), timeout)
        if not ok:
            bad = [c.name for c in cs if not c.find(wire.online_notice(c.name))]
            raise RuntimeError(f"could not log in {bad[:5]}: {cs[0].lines[-3:]!r}")
        return cs

    def close(self) -> None:
        for c in list(self.clients):
            self.drop(c)
        self.sel.close()


# -- a cluster of separate nodes ----------------------------------------------


class Nodes:
    """A redis-server and cluster members on it; ``stop`` stops all of them."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self.redis_proc, self.redis_port, self.workdir = start_redis(max_clients)
        self.members: list[systems.Running] = []
        self.nodes: dict[int, int] = {}  # id(member) -> nodes it runs
        self.stats = RedisStats(self.redis_port, self.redis_proc.pid)

    def add(self, workers: int | None = None, extra: tuple[str, ...] = ()) -> systems.Running:
        expect = sum(self.nodes[id(m)] for m in self.members) + (workers or 1)
        member = systems.start_member(self.redis_port, self.max_clients, workers, expect,
                                      extra=extra)
        self.members.append(member)
        self.nodes[id(member)] = workers or 1
        return member

    def add_many(self, count: int) -> list[systems.Running]:
        """``count`` nodes, started at once (each a process of its own)."""
        expect = sum(self.nodes[id(m)] for m in self.members) + count
        started = systems.start_members(self.redis_port, self.max_clients, count,
                                        expect_nodes=expect)  # fmt: skip
        for member in started:
            self.members.append(member)
            self.nodes[id(member)] = 1
        return started

    def remove(self, member: systems.Running) -> None:
        self.members.remove(member)
        member.stop()

    def system(self, name: str) -> systems.Running:
        """The whole cluster as one system (CPU and memory of every node and Redis)."""
        first = self.members[0]
        return systems.Running(
            name, "chat", "127.0.0.1", first.port, first.pid, systems.log_level(systems.CLUSTER),
            companions=[m.proc for m in self.members[1:] if m.proc] + [self.redis_proc],
            redis_port=self.redis_port,
        )  # fmt: skip

    def redis_cpu(self) -> float:
        return cpu_seconds(self.redis_proc.pid) or 0.0

    def stop(self) -> None:
        self.stats.close()
        for m in self.members:
            m.stop()
        stop_process(self.redis_proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


class Spread(Fleet):
    """Several fleets (one per node) driven as one; ``parts`` keeps each one's
    records of the last ``collect``."""

    def __init__(self, fleets: list[Fleet]) -> None:
        self.fleets = fleets
        self.size = sum(f.size for f in fleets)
        self.conns = [c for f in fleets for c in f.conns]
        self.procs = [p for f in fleets for p in f.procs]
        self.parts: list[dict[str, Any]] = []

    def collect(self) -> dict[str, Any]:
        self.parts = [f.collect() for f in self.fleets]
        return merge_records(self.parts)

    def close(self) -> None:
        for f in self.fleets:
            f.close()
        self.conns, self.procs = [], []


def _p50_ms(values: list[int] | array) -> float:
    return nearest_rank(sorted(values), 50) / 1e6 if len(values) else math.nan


# -- phases -----------------------------------------------------------------


def fanout_spread(cfg: Config, base: int, progress: Progress) -> dict[str, Any]:
    """Login storm and broadcasts with N/2 clients on each of two nodes; the
    sender on the first.  Latency per half; Redis commands per broadcast."""
    nodes = Nodes(cfg.n + 64)
    out: dict[str, Any] = {"system": SPREAD, "n": cfg.n}
    try:
        a, b = nodes.add_many(2)
        sys_ = nodes.system(SPREAD)
        idx = list(range(base, base + cfg.n))
        share = max(1, cfg.receivers // 2)
        fa = Fleet("chat", "127.0.0.1", a.port, idx[0::2], share, cfg.login_window,
                   cfg.receiver_exe)  # fmt: skip
        fb = Fleet("chat", "127.0.0.1", b.port, idx[1::2], share, cfg.login_window,
                   cfg.receiver_exe)  # fmt: skip
        with Spread([fa, fb]) as fl:
            out["storm"] = login_storm(sys_, cfg, fl, progress)
            if out["storm"]["logged_in"] < cfg.n:
                out["error"] = f"only {out['storm']['logged_in']} of {cfg.n} clients logged in"
                return out
            sender = Conn("127.0.0.1", a.port)
            try:
                name = wire.sender_name(base)
                sender.send(wire.login("chat", name))
                if not sender.wait_for_text(wire.online_notice(name), 10.0):
                    out["error"] = "the sender could not log in"
                    return out
                s0 = nodes.stats.snap()
                time.sleep(1.0)
                s1 = nodes.stats.snap()
                c0 = [a.cpu_seconds() or 0.0, b.cpu_seconds() or 0.0, nodes.redis_cpu()]
                bc = broadcast(sys_, cfg, fl, sender, progress)
                c1 = [a.cpu_seconds() or 0.0, b.cpu_seconds() or 0.0, nodes.redis_cpu()]
                s2 = nodes.stats.snap()
            finally:
                sender.close()
            warm = int(cfg.rate * cfg.warmup)
            for label, part in zip(("local", "cross"), fl.parts, strict=True):
                lat = [x for s, x in zip(part["b_seq"], part["b_klat"], strict=True) if s >= warm]
                bc[f"{label}_kernel_p50_ms"] = _p50_ms(lat)
                bc[f"{label}_kernel_p99_ms"] = nearest_rank(sorted(lat), 99) / 1e6 if lat else None
            bc["redis"] = per_op(delta(s1, s2), bc["sent"], delta(s0, s1))
            # CPU per delivery of the sender's node, the other node (N/2 each) and Redis.
            per = 1e6 / (bc["delivered"] / 2) if bc["delivered"] else math.nan
            bc["cpu_us_per_local_delivery"] = {
                "sender_node": (c1[0] - c0[0]) * per,
                "other_node": (c1[1] - c0[1]) * per,
                "redis": (c1[2] - c0[2]) * per / 2,
            }
            out["broadcast"] = bc
    finally:
        nodes.stop()
    return out


def fanout(args: argparse.Namespace, cfg: Config, progress: Progress) -> dict[str, Any]:
    """Rounds of [single-node select, the cluster spread over 2 nodes, Redis pub/sub]."""
    names = [systems.PRIMARY, SPREAD] + ([systems.REDIS] if args.with_redis else [])
    rounds: list[dict[str, Any]] = []
    base = 0
    fcfg = replace(cfg, skip=frozenset({"presence", "direct"}))
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        results: dict[str, Any] = {}
        for name in order:
            progress.set_stage(f"fan-out {r + 1}/{args.rounds}")
            if name == SPREAD:
                try:
                    results[name] = fanout_spread(fcfg, base, progress)
                except (RuntimeError, OSError) as exc:
                    results[name] = {"system": name, "error": repr(exc)}
            else:
                running = systems.start(name, cfg.n + 64)
                try:
                    results[name] = run_system(running, fcfg, base, progress)
                except (RuntimeError, OSError) as exc:
                    results[name] = {"system": name, "error": repr(exc)}
                finally:
                    running.stop()
            base += cfg.n + 1
            time.sleep(0.5)
        rounds.append(results)
    return {"systems": names, "rounds": rounds}


def blast(
    senders: list[Client],
    recipients: list[str],
    seconds: float,
    window: int,
    first: int,
    fl: Fleet | None,
) -> dict[str, Any]:
    """Direct messages from every sender, each keeping ``window`` unanswered,
    for ``seconds``; recipients taken in turn by a stride.  The fleet (if any)
    must have been armed for seqs up to ``first`` + what this sends."""
    answer = re.compile(rb"^<(To |Message to |Chat service unavailable|User )")
    echo = re.compile(rb"^<To [^>]*> seq=D(\d+) ")
    sel = selectors.DefaultSelector()
    state = []
    for i, c in enumerate(senders):
        sel.register(c.sock, selectors.EVENT_READ, i)
        state.append({"inflight": 0, "out": bytearray(), "buf": b""})
    echoed = array("q")
    refused: dict[bytes, int] = {}
    seq = first
    n = len(recipients)
    t0 = time.monotonic()
    t_end = t0 + seconds
    hard = t_end + 15.0
    last_answer = t0
    while True:
        now = time.monotonic()
        sending = now < t_end
        if (not sending and all(s["inflight"] == 0 for s in state)) or now > hard:
            break
        for i, s in enumerate(state):
            room = window - s["inflight"]
            if sending and room >= max(1, window // 2):
                t = time.monotonic_ns()
                lines = []
                for _ in range(room):
                    to = recipients[(seq * 7919) % n]
                    lines.append(wire.direct("chat", to, wire.payload(wire.KIND_DIRECT, seq, t)))
                    seq += 1
                s["out"] += b"".join(lines)
                s["inflight"] += room
            if s["out"]:
                try:
                    sent = senders[i].sock.send(s["out"])
                    del s["out"][:sent]
                except BlockingIOError:
                    pass
        for key, _ in sel.select(0.01):
            i = key.data
            s = state[i]
            try:
                data = senders[i].sock.recv(1 << 18)
            except BlockingIOError:
                continue
            if not data:
                raise RuntimeError(f"sender {senders[i].name} was disconnected")
            *lines, s["buf"] = (s["buf"] + data).split(b"\n")
            for line in lines:
                if not answer.match(line) or b" is online.>" in line:
                    continue
                if line.startswith(b"<User ") and b"offline" not in line and b"exist" not in line:
                    continue
                s["inflight"] -= 1
                last_answer = time.monotonic()
                m = echo.match(line)
                if m:
                    echoed.append(int(m.group(1)))
                else:
                    kind = line[:40]
                    refused[kind] = refused.get(kind, 0) + 1
    sel.close()
    return {
        "first": first,
        "sent": seq - first,
        "echoed": echoed,
        "refused": {k.decode("utf-8", "replace"): v for k, v in refused.items()},
        "seconds": last_answer - t0,
        "unanswered": sum(s["inflight"] for s in state),
    }


def _deliveries(fl: Fleet, want: int, sent_echoes: array) -> dict[str, Any]:
    """Wait for ``want`` DMs at the fleet; lost, duplicated, false echoes."""
    fl.wait_for(lambda s: s["d"] >= want, stall=3.0, cap=60.0)
    rec = fl.collect()
    got = set(rec["d_seq"])
    return {
        "delivered": len(got),
        "lost": want - len(got),
        "duplicated": rec["d_dup"],
        "false_echoes": sum(1 for s in sent_echoes if s not in got),
        "kernel_p50_ms": _p50_ms(rec["d_klat"]),
        "kernel_p99_ms": nearest_rank(sorted(rec["d_klat"]), 99) / 1e6 if rec["d_klat"] else None,
    }


def costs(
    args: argparse.Namespace, cfg: Config, progress: Progress, n: int | None = None
) -> dict[str, Any]:
    """Redis commands per local DM, per cross-node DM and per broadcast, on two
    nodes with ``n`` (default ``--costs-n``) clients spread over both."""
    n = n or args.costs_n
    progress.set_stage("costs")
    nodes = Nodes(n + 64)
    out: dict[str, Any] = {"n": n}
    hub = Hub()
    try:
        a, b = nodes.add_many(2)
        idx = list(range(10_000_000, 10_000_000 + n))
        fa = Fleet("chat", "127.0.0.1", a.port, idx[0::2], 1, cfg.login_window, cfg.receiver_exe)
        fb = Fleet("chat", "127.0.0.1", b.port, idx[1::2], 1, cfg.login_window, cfg.receiver_exe)
        with Spread([fa, fb]) as fl:
            fl.send("login")
            st, ok = fl.wait_for(lambda s: s["logged_in"] >= n, stall=10.0, cap=120.0)
            if not ok:
                raise RuntimeError(f"costs: {st['logged_in']} of {n} logged in")
            [sender] = hub.login(a.port, ["k0"])
            hub.settle(0.5)
            s0 = nodes.stats.snap()
            time.sleep(args.costs_seconds)
            s1 = nodes.stats.snap()
            out["idle"] = idle = delta(s0, s1)
            out["idle_commands_per_s"] = idle["commands"] / idle["seconds"]
            first = 0
            fl.measure(0, 1_000_000, 0)
            for label, names in (
                ("dm_local", [wire.client_name(i) for i in idx[0::2]]),
                ("dm_cross", [wire.client_name(i) for i in idx[1::2]]),
            ):
                s_a = nodes.stats.snap()
                res = blast([sender], names, args.costs_seconds, 16, first, fl)
                s_b = nodes.stats.snap()
                # Arm anew for the next step: collect() clears, measure() resets.
                res.update(_deliveries(fl, res["sent"], res["echoed"]))
                fl.measure(0, 1_000_000, 0)
                res["redis"] = per_op(delta(s_a, s_b), res["delivered"], idle)
                res["rate"] = res["delivered"] / res["seconds"] if res["seconds"] else None
                res.pop("echoed")
                out[label] = res
                first = 0
            # Broadcasts at this N, as in the fan-out (sender on the first node).
            bcfg = replace(cfg, n=n, duration=args.costs_seconds * 2, warmup=0.2)
            conn = Conn("127.0.0.1", a.port)
            try:
                conn.send(wire.login("chat", "k1"))
                if not conn.wait_for_text(wire.online_notice("k1"), 10.0):
                    raise RuntimeError("costs: broadcast sender could not log in")
                s_a = nodes.stats.snap()
                bc = broadcast(nodes.system(SPREAD), bcfg, fl, conn, progress)
                s_b = nodes.stats.snap()
            finally:
                conn.close()
            bc["redis"] = per_op(delta(s_a, s_b), bc["sent"], idle)
            for key in ("cdf_ms", "cdf_kernel_ms"):
                bc.pop(key, None)
            out["broadcast"] = bc
    finally:
        hub.close()
        nodes.stop()
    return out


def dm_latency(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Closed loop, interleaved message by message: local to one cluster node,
    across two nodes, and on a single server without --cluster."""
    progress.set_stage("DM latency")
    nodes = Nodes(64)
    single = systems.start(systems.PRIMARY, 64)
    hub = Hub()
    samples: dict[str, dict[str, list[int]]] = {}
    bad = {"lost": 0, "duplicated": 0, "false_echoes": 0, "refused": 0}
    try:
        a, b = nodes.add_many(2)
        sa, la = hub.login(a.port, ["la0", "la1"])
        [lb] = hub.login(b.port, ["lb1"])
        ss, sr = hub.login(single.port, ["ss0", "ss1"])
        hub.settle(0.3)
        pairs = [("local", sa, la), ("cross", sa, lb), ("single", ss, sr)]
        for label, _, _ in pairs:
            samples[label] = {"deliver": [], "echo": []}
        progress.start("DM latency", args.dm_count)
        for k in range(args.dm_count):
            for j in range(len(pairs)):
                label, snd, rcv = pairs[(k + j) % len(pairs)]
                text = b"lat%d-%s" % (k, label.encode())
                ms, mr = len(snd.lines), len(rcv.lines)
                t0 = time.monotonic_ns()
                snd.send(b'chat %s "%s"\n' % (rcv.name.encode(), text))
                hub.until(lambda s=snd, r=rcv, t=text, ms=ms, mr=mr: (
                    s.find(t, ms) is not None and r.find(t, mr) is not None), 5.0)  # fmt: skip
                hub.poll(0)
                got, echo = rcv.find(text, mr), snd.find(b"<To " + rcv.name.encode(), ms)
                if got is not None:
                    samples[label]["deliver"].append(got - t0)
                else:
                    bad["lost"] += 1
                if echo is not None:
                    samples[label]["echo"].append(echo - t0)
                    if got is None:
                        bad["false_echoes"] += 1
                elif snd.find(text, ms) is not None:
                    bad["refused"] += 1
            progress.update(k + 1)
        progress.done()
        hub.settle(0.2)
        for _, _snd, rcv in pairs:
            seen = [line for _, line in rcv.lines if b"lat" in line]
            bad["duplicated"] += len(seen) - len(set(seen))
    finally:
        hub.close()
        single.stop()
        nodes.stop()
    out: dict[str, Any] = {"count": args.dm_count, **bad}
    for label, s in samples.items():
        d, e = sorted(s["deliver"]), sorted(s["echo"])
        out[label] = {
            "deliver_p50_ms": nearest_rank(d, 50) / 1e6 if d else None,
            "deliver_p99_ms": nearest_rank(d, 99) / 1e6 if d else None,
            "echo_p50_ms": nearest_rank(e, 50) / 1e6 if e else None,
            "echo_p99_ms": nearest_rank(e, 99) / 1e6 if e else None,
        }
    return out


def throughput_one(args: argparse.Namespace, cfg: Config, workers: int | None, base: int,
                   progress: Progress) -> dict[str, Any]:  # fmt: skip
    """One blast against the cluster with ``workers`` workers (None: a single
    server without --cluster)."""
    m = args.tp_clients
    label = f"{workers}w" if workers else "single"
    if workers:
        running = systems.start_cluster(m + 64, workers=workers)
        redis_pid: int | None = running.companions[0].pid
    else:
        running = systems.start(systems.PRIMARY, m + 64)
        redis_pid = None
    hub = Hub()
    out: dict[str, Any] = {"config": label}
    try:
        idx = list(range(base, base + m))
        with Fleet("chat", "127.0.0.1", running.port, idx, cfg.receivers, cfg.login_window,
                   cfg.receiver_exe) as fl:  # fmt: skip
            fl.send("login")
            st, ok = fl.wait_for(lambda s: s["logged_in"] >= m, stall=10.0, cap=120.0)
            if not ok:
                raise RuntimeError(f"throughput: {st['logged_in']} of {m} logged in")
            senders = hub.login(running.port, [f"t{base}x{j}" for j in range(args.tp_senders)])
            hub.settle(0.3)
            for c in senders:  # the blast reads them from here on
                hub.sel.unregister(c.sock)
            if workers and workers > 1:
                out["cross_share"] = _cross_share(running.redis_port, senders, idx)
            fl.measure(0, 1_000_000, 0)
            stats = RedisStats(running.redis_port) if running.redis_port else None
            r0 = stats.snap() if stats else None
            cpu0 = running.cpu_seconds() or 0.0
            rcpu0 = cpu_seconds(redis_pid) if redis_pid else 0.0
            res = blast(senders, [wire.client_name(i) for i in idx], args.tp_seconds,
                        args.tp_window, 0, fl)  # fmt: skip
            cpu1 = running.cpu_seconds() or 0.0
            rcpu1 = cpu_seconds(redis_pid) if redis_pid else 0.0
            r1 = stats.snap() if stats else None
            if stats:
                stats.close()
            res.update(_deliveries(fl, res["sent"], res["echoed"]))
            res.pop("echoed")
            total_cpu = cpu1 - cpu0
            redis_cpu = (rcpu1 or 0.0) - (rcpu0 or 0.0)
            res["rate"] = res["delivered"] / res["seconds"] if res["seconds"] else None
            res["server_cpu_s"] = total_cpu
            res["redis_cpu_s"] = redis_cpu
            res["per_cpu_s"] = res["delivered"] / total_cpu if total_cpu > 0 else None
            res["workers_us_per_msg"] = (total_cpu - redis_cpu) / res["delivered"] * 1e6 \
                if res["delivered"] else None  # fmt: skip
            res["redis_us_per_msg"] = redis_cpu / res["delivered"] * 1e6 \
                if res["delivered"] else None  # fmt: skip
            if r0 and r1:
                d = delta(r0, r1)
                res["redis_commands_per_msg"] = d["commands"] / res["delivered"] \
                    if res["delivered"] else None  # fmt: skip
                res["redis_us_per_command"] = d["cpu_s"] / d["commands"] * 1e6 \
                    if d["commands"] else None  # fmt: skip
            out.update(res)
    finally:
        hub.close()
        running.stop()
    return out


def _cross_share(redis_port: int | None, senders: list[Client], idx: list[int]) -> float | None:
    """Share of the blast's DMs whose sender and recipient are on different workers."""
    import redis

    with redis.Redis(port=redis_port, socket_timeout=5) as r:
        users = r.hgetall("{chat}:users")
    node = {k.decode(): v.split(b"\n", 1)[0] for k, v in users.items()}
    names = [wire.client_name(i) for i in idx]
    try:
        pairs = [(node[s.name.casefold()], node[names[(q * 7919) % len(names)].casefold()])
                 for q, s in ((q, senders[q % len(senders)]) for q in range(2000))]  # fmt: skip
    except KeyError:
        return None
    return sum(1 for x, y in pairs if x != y) / len(pairs)


def throughput(args: argparse.Namespace, cfg: Config, progress: Progress) -> dict[str, Any]:
    """Rounds of [single, 1 worker, 2 workers], interleaved."""
    configs: list[int | None] = [None, 1, 2]
    rounds = []
    base = 20_000_000
    for r in range(args.rounds):
        progress.set_stage(f"DM throughput {r + 1}/{args.rounds}")
        order = configs[r % 3 :] + configs[: r % 3]
        results = {}
        for w in order:
            if args.verbose:
                progress.note(f"DM throughput: {w or 'single'}")
            try:
                res = throughput_one(args, cfg, w, base, progress)
            except (RuntimeError, OSError) as exc:
                res = {"config": f"{w}w" if w else "single", "error": repr(exc)}
            results[res["config"]] = res
            base += args.tp_clients + 1
            time.sleep(0.3)
        rounds.append(results)
    return {"rounds": rounds}


def node_death(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """SIGKILL a node with K users; time to the last offline notice at every
    observer on the other node, and the names free again."""
    progress.set_stage("node death")
    k = args.kill_users
    nodes = Nodes(k + 64)
    hub = Hub()
    trials = []
    try:
        a = nodes.add()
        observers = hub.login(a.port, [f"o{j}" for j in range(3)])
        for trial in range(args.kill_trials):
            b = nodes.add()
            names = [f"v{trial}x{j}" for j in range(k)]
            victims = hub.login(b.port, names)
            online = [wire.online_notice(n) for n in names]
            hub.until(lambda on=online: all(o.find(x) for o in observers for x in on), 10.0)
            marks = [len(o.lines) for o in observers]
            t0 = time.monotonic_ns()
            os.kill(b.pid, signal.SIGKILL)  # type: ignore[arg-type]
            offline = [wire.offline_notice(n) for n in names]
            pairs = list(zip(observers, marks, strict=True))
            done = hub.until(
                lambda ps=pairs, off=offline: all(o.find(x, m) for o, m in ps for x in off), 20.0
            )
            times = [o.find(x, m) for o, m in zip(observers, marks, strict=True) for x in offline]
            seen = [t for t in times if t is not None]
            dup = sum(o.count(x, m) for o, m in zip(observers, marks, strict=True)
                      for x in offline) - len(seen)  # fmt: skip
            for v in victims:
                hub.drop(v)
            nodes.remove(b)
            # The names are free again: one logs in on the surviving node.
            reuse = False
            try:
                [again] = hub.login(a.port, [names[0]], timeout=5.0)
                reuse = True
                again.send(b"bye\n")
                hub.settle(0.2)
                hub.drop(again)
            except (RuntimeError, OSError):
                pass
            trials.append({
                "complete": done,
                "first_s": (min(seen) - t0) / NS if seen else None,
                "last_s": (max(seen) - t0) / NS if done else None,
                "missing": len(times) - len(seen),
                "duplicated": dup,
                "names_reusable": reuse,
            })  # fmt: skip
            if args.verbose:
                progress.note(f"node death {trial + 1}: {trials[-1]['last_s']}")
    finally:
        hub.close()
        nodes.stop()
    lasts = [t["last_s"] for t in trials if t["last_s"] is not None]
    return {
        "users": k,
        "observers": 3,
        "lease_s": LEASE_DEFAULT,
        "trials": trials,
        "last_median_s": statistics.median(lasts) if lasts else None,
        "last_max_s": max(lasts) if len(lasts) == len(trials) and lasts else None,
    }


def redis_stall(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """SIGSTOP redis-server for ``--stall`` seconds, twice; count offline
    notices (there should be none) and classify the answers to DMs sent during
    and after each stall."""
    progress.set_stage("Redis stall")
    k = args.stall_users
    nodes = Nodes(2 * k + 64)
    hub = Hub()
    trials = []
    try:
        a, b = nodes.add_many(2)
        ua = hub.login(a.port, [f"sa{j}" for j in range(k)])
        ub = hub.login(b.port, [f"sb{j}" for j in range(k)])
        everyone = ua + ub
        hub.settle(0.5)
        sender, local, remote = ua[0], ua[1], ub[0]
        for trial in range(args.stall_trials):
            marks = {c.name: len(c.lines) for c in everyone}
            texts: list[tuple[Client, bytes]] = []

            def dm(to: Client, when: str, trial: int = trial, texts: list = texts) -> None:
                text = b"stall%d-%s-%s" % (trial, when.encode(), to.name.encode())
                texts.append((to, text))
                sender.send(b'chat %s "%s"\n' % (to.name.encode(), text))

            os.kill(nodes.redis_proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                hub.settle(args.stall / 3)
                dm(local, "during")
                dm(remote, "during")
                hub.settle(max(0.0, args.stall - (time.monotonic() - t0)))
            finally:
                os.kill(nodes.redis_proc.pid, signal.SIGCONT)
            stalled = time.monotonic() - t0
            hub.settle(1.0)
            dm(local, "after")
            dm(remote, "after")
            hub.settle(args.stall_watch)
            answers: dict[str, int] = {}
            false_echoes = lost_echoed = 0
            for to, text in texts:
                line = next((ln for _, ln in sender.lines[marks[sender.name]:] if text in ln), b"")
                if not line:
                    # A refusal does not repeat the text: it names the recipient.
                    refusal = b"<Message to %s not delivered" % to.name.encode()
                    refused = [ln for _, ln in sender.lines[marks[sender.name]:]
                               if ln.startswith(refusal)]
                    if refused:
                        line = refused[0]
                kind = ("echo" if line.startswith(b"<To ")
                        else "not delivered" if b" not delivered: " in line
                        else line.split(b":")[0].decode()[:30])
                answers[kind or "no answer"] = answers.get(kind or "no answer", 0) + 1
                got = to.find(text, marks[to.name]) is not None
                if kind == "echo" and not got:
                    false_echoes += 1
                if not got and kind == "echo":
                    lost_echoed += 1
            offline = sum(c.count(b" is offline.>", marks[c.name]) for c in everyone)
            trials.append({
                "stalled_s": stalled,
                "offline_notices": offline,
                "disconnected": sum(1 for c in everyone if c.closed),
                "answers": answers,
                "false_echoes": false_echoes,
                "after_delivered": sum(1 for to, t in texts if b"after" in t
                                       and to.find(t, marks[to.name]) is not None),
            })  # fmt: skip
    finally:
        hub.close()
        nodes.stop()
    return {
        "users": 2 * k,
        "stall_s": args.stall,
        "trials": trials,
        "offline_notices": sum(t["offline_notices"] for t in trials),
        "false_echoes": sum(t["false_echoes"] for t in trials),
    }


# -- report -----------------------------------------------------------------


def _med(values: list[float | None]) -> float | None:
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


def _dig(d: Any, *keys: str) -> Any:
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
                "p50": _med([_dig(r, "broadcast", "kernel_ms", "p50") for r in rs]),
                "p99": _med([_dig(r, "broadcast", "kernel_ms", "p99") for r in rs]),
                "to_last_p50": _med([_dig(r, "broadcast", "to_last_ms", "p50") for r in rs]),
                "to_last_p99": _med([_dig(r, "broadcast", "to_last_ms", "p99") for r in rs]),
                "storm_s": _med([_dig(r, "storm", "seconds") for r in rs]),
                "storm_lost": sum(_dig(r, "storm", "lost") or 0 for r in rs),
                "lost": sum(_dig(r, "broadcast", "lost") or 0 for r in rs),
                "duplicated": sum(_dig(r, "broadcast", "duplicated") or 0 for r in rs),
                "cpu_us": _med(
                    [(_dig(r, "broadcast", "server_cpu_per_1k") or math.nan) * 1000 for r in rs]
                ),
                "errors": [r["error"] for r in rs if "error" in r],
            }
            integrity["lost"] += s[name]["lost"]
            integrity["duplicated"] += s[name]["duplicated"]
        rs = [r.get(SPREAD, {}) for r in fo["rounds"]]
        for half in ("local", "cross"):
            s[SPREAD][f"{half}_p50"] = _med([_dig(r, "broadcast", f"{half}_kernel_p50_ms")
                                            for r in rs])  # fmt: skip
        s[SPREAD]["commands_per_bc"] = _med([_dig(r, "broadcast", "redis", "commands")
                                             for r in rs])  # fmt: skip
        for part in ("sender_node", "other_node"):
            s[SPREAD][f"{part}_us"] = _med([_dig(r, "broadcast", "cpu_us_per_local_delivery", part)
                                           for r in rs])  # fmt: skip
        s[SPREAD]["redis_us_per_bc"] = _med([(_dig(r, "broadcast", "redis", "cpu_s") or math.nan)
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
        small = _dig(co, "broadcast", "redis", "commands")
        large = s.get(SPREAD, {}).get("commands_per_bc") or _dig(
            doc, "costs_large", "broadcast", "redis", "commands"
        )
        if small and large:
            same = abs(large / small - 1) <= 0.15
            goals.append((f"Redis commands per broadcast same at N={co['n']} and N={doc['n']}",
                          same, f"{_f(small)} vs {_f(large)}"))  # fmt: skip
        for key in ("dm_local", "dm_cross"):
            for what in ("lost", "duplicated", "false_echoes"):
                integrity[what] += co.get(key, {}).get(what, 0)
        integrity["lost"] += _dig(co, "broadcast", "lost") or 0
        integrity["duplicated"] += _dig(co, "broadcast", "duplicated") or 0
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
                k: _med([r.get(k) for r in rs])
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
            ans = ", ".join(f"{k} {v}" for k, v in sorted(t["answers"].items()))
            add(f"  stall {i}: DM answers {ans}; disconnected {t['disconnected']}"[:80])
    add("")
    add("Goals:")
    for g in s["goals"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
        add(f"  {verdict:7} {g['goal'][:56]:56} {g['measured']}"[:80])
    return "\n".join(out)


# -- entry points -----------------------------------------------------------


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
        sel = _med([_dig(r, systems.PRIMARY, "broadcast", "kernel_ms", "p50") for r in rs])
        clu = _med([_dig(r, systems.CLUSTER, "broadcast", "kernel_ms", "p50") for r in rs])
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
