"""Redis's work per operation on a two-node cluster.

Commands, script calls, stream reads and Redis CPU per local DM, per
cross-node DM and per broadcast, at a small N (to set beside the large N of
the fan-out), after taking off what the idle cluster does on its own.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from bench.cluster_dms import blast, deliveries
from bench.cluster_nodes import SPREAD, Nodes, Spread
from bench.harness import wire
from bench.harness.driver import Conn
from bench.harness.fleet import Fleet
from bench.harness.hub import Hub
from bench.harness.redis_stats import delta, per_op
from bench.progress import Progress
from bench.workloads import Config, broadcast


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
                res.update(deliveries(fl, res["sent"], res["echoed"]))
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

