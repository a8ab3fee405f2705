"""The cluster's broadcast fan-out, beside single-node select and Redis pub/sub.

Rounds interleave the three: a login storm, then open-loop broadcasts to N
clients; for the cluster, N/2 clients on the sender's node and N/2 on the
other, with latency per half, Redis commands and Redis CPU per broadcast,
and CPU per delivery of each node.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from typing import Any

from bench import systems
from bench.cluster_nodes import SPREAD, Nodes, Spread
from bench.harness import wire
from bench.harness.driver import Conn
from bench.harness.fleet import Fleet
from bench.harness.redis_stats import delta, per_op
from bench.progress import Progress
from bench.stats import nearest_rank, p50_ms
from bench.workloads import Config, broadcast, login_storm, run_system


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
                bc[f"{label}_kernel_p50_ms"] = p50_ms(lat)
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

