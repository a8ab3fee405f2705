"""The measurements, run against one live system with one fleet of clients.

Order matters and is the same for every system: login storm (which also
leaves N clients online), memory, presence probes, broadcast fan-out, direct
messages.  With ``Config.capacity`` the last two are capacity searches
(``bench.capacity``): steps of rising offered load, each a short open-loop
phase; without, one broadcast phase at a fixed rate (what bench/cluster.py
uses).  Each phase is bounded in time; a phase that cannot finish reports
what it got (lost deliveries count as lost, never as slow).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.capacity import harness_limit, search
from bench.harness import wire
from bench.harness.driver import NS, Conn, open_loop, probe_login
from bench.harness.fleet import Fleet
from bench.harness.procstat import CpuTimes, machine_busy_seconds
from bench.progress import Progress
from bench.stats import cdf_points, latency_summary, nearest_rank
from bench.systems import TARGET, Running


@dataclass
class Config:
    n: int = 500
    rate: float = 150.0  # broadcasts per second (the fixed-rate broadcast, bench/cluster.py)
    duration: float = 10.0  # seconds of broadcasts measured
    warmup: float = 1.0  # seconds of broadcasts sent first and not measured
    pad: int = 0  # extra payload bytes
    probes: int = 5
    receivers: int = 2
    login_window: int = 32
    storm_stall: float = 15.0  # give up on the storm after this long without progress
    drain_stall: float = 3.0
    skip: frozenset[str] = frozenset()  # of "presence", "broadcast", "direct"
    receiver_exe: Path | None = None  # the compiled C receiver; None: the Python one
    # The one built with OpenSSL, for a system whose clients speak TLS; None: Python's.
    receiver_tls_exe: Path | None = None
    # -- capacity search (bench.capacity): broadcast and direct messages stepped up
    capacity: bool = False  # False: one broadcast phase at ``rate`` (bench/cluster.py)
    ladder: list[float] = field(default_factory=lambda: [10e3, 20e3, 40e3, 80e3, 160e3])
    dm_ladder: list[float] = field(default_factory=lambda: [5e3, 10e3, 20e3, 40e3, 80e3])
    bisections: int = 3
    step: float = 1.0  # measured seconds per broadcast step
    step_warmup: float = 0.25  # unmeasured seconds before that
    # A step lasts long enough for this many broadcasts (large N): with fewer,
    # one slow fan-out is the whole p99.
    min_broadcasts: int = 16
    # ... but no longer than this: at N = 10,000 a low rate (one broadcast a
    # second, or a bisection below the ladder) would otherwise take minutes.
    max_step: float = 8.0
    dm_step: float = 0.6  # seconds per direct-message step
    objective_ms: float = 20.0  # broadcast p99 a passing step stays at or under
    dm_objective_ms: float = 20.0


def run_system(sys_: Running, cfg: Config, base: int, progress: Progress) -> dict[str, Any]:
    """Measure ``sys_``; client names start at ``c<base>`` (unique across rounds)."""
    out: dict[str, Any] = {"system": sys_.name, "log_level": sys_.log_level, "n": cfg.n}
    indices = list(range(base, base + cfg.n))
    rss0 = sys_.rss_bytes()
    with Fleet(
        sys_.dialect,
        sys_.host,
        sys_.port,
        indices,
        cfg.receivers,
        cfg.login_window,
        cfg.receiver_tls_exe if sys_.tls else cfg.receiver_exe,
        # Our servers all set TCP_NODELAY; an unknown --target might wait on ACKs (Nagle).
        delay_acks=sys_.name != TARGET,
        tls=sys_.tls,
    ) as fl:
        out["storm"] = login_storm(sys_, cfg, fl, progress)
        rss1 = sys_.rss_bytes()
        out["memory"] = memory(rss0, rss1, cfg.n)
        if out["storm"]["logged_in"] < cfg.n:
            out["error"] = f"only {out['storm']['logged_in']} of {cfg.n} clients logged in"
            return out
        sender = Conn(sys_.host, sys_.port, tls=sys_.tls, web=sys_.dialect == "web")
        try:
            name = wire.sender_name(base)
            sender.send(wire.login(sys_.dialect, name))
            if not sender.wait_for_text(wire.online_notice(name), 10.0):
                out["error"] = "the sender could not log in"
                return out
            if "presence" not in cfg.skip:
                out["presence"] = presence(sys_, cfg, fl, progress)
            if "broadcast" not in cfg.skip and cfg.capacity:
                out["broadcast_curve"] = broadcast_capacity(sys_, cfg, fl, sender, progress)
                out["broadcast"] = out["broadcast_curve"]["steps"][0]
            elif "broadcast" not in cfg.skip:
                out["broadcast"] = broadcast(sys_, cfg, fl, sender, progress)
            if "direct" not in cfg.skip and cfg.capacity:
                out["direct_curve"] = direct_capacity(sys_, cfg, fl, sender, indices, progress)
        finally:
            sender.close()
        out["harness_cpu_s"] = fl.cpu_seconds()
    if not sys_.alive():
        out["error"] = f"server exited: {sys_.log_tail()}"
    return out


#: Below this many clients, or this much RSS growth in all, a per-connection
#: figure is allocator and page granularity, not the server's cost: n/a.
MEMORY_MIN_N = 100
MEMORY_MIN_GROWTH = 256 * 1024


def memory(rss0: int | None, rss1: int | None, n: int) -> dict[str, Any]:
    """RSS before and after N logins; KB per connection only where measurable."""
    growth = rss1 - rss0 if rss0 and rss1 else None
    measurable = growth is not None and n >= MEMORY_MIN_N and growth >= MEMORY_MIN_GROWTH
    return {
        "rss_before_mb": rss0 / 2**20 if rss0 else None,
        "rss_after_mb": rss1 / 2**20 if rss1 else None,
        "growth_kb": growth / 1024 if growth is not None else None,
        "kb_per_conn": growth / n / 1024 if measurable and growth is not None else None,
    }


def server_cpu_seconds(before: CpuTimes | None, after: CpuTimes | None) -> dict[str, float | None]:
    """The server's CPU seconds between two readings: in all, in user mode (its
    own code: the Python interpreter, Redis's C) and in system mode (the kernel
    on its behalf; on loopback that includes TCP work for the receiving side of
    each of its sends).  None where there is no pid (``--target`` alone) or the
    server has gone."""
    if before is None or after is None:
        return dict.fromkeys(("server_cpu_s", "server_user_cpu_s", "server_system_cpu_s"))
    user, system = after.user - before.user, after.system - before.system
    return {"server_cpu_s": user + system, "server_user_cpu_s": user, "server_system_cpu_s": system}


def server_cpu(
    before: CpuTimes | None, after: CpuTimes | None, per_k: float | None
) -> dict[str, float | None]:
    """``server_cpu_seconds`` and each per 1,000 deliveries (``per_k`` =
    1000 / deliveries; None when nothing was delivered)."""
    seconds = server_cpu_seconds(before, after)
    scaled = {k: None if v is None or per_k is None else v * per_k for k, v in seconds.items()}
    return seconds | {key.removesuffix("_s") + "_per_1k": v for key, v in scaled.items()}


def login_storm(sys_: Running, cfg: Config, fl: Fleet, progress: Progress) -> dict[str, Any]:
    """All N clients log in at once (``login_window`` in flight per receiver).

    Done when every client saw its own notice and the notices add up to
    N(N+1)/2: the k-th login is announced to the N-k+1 users online by then.
    """
    n = cfg.n
    expected = n * (n + 1) // 2
    cpu0 = sys_.cpu_times()
    progress.start(f"{sys_.name}: login storm", n)
    t0 = time.monotonic_ns()
    fl.send("login")
    st, ok = fl.wait_for(
        lambda s: s["logged_in"] >= n and s["notices"] >= expected,
        stall=cfg.storm_stall,
        cap=max(120.0, n * 0.1),
        on_status=lambda s: progress.update(s["logged_in"]),
    )
    progress.done()
    cpu1 = sys_.cpu_times()
    end = st["last_notice_ns"] or time.monotonic_ns()
    return {
        "seconds": (end - t0) / NS if ok else math.nan,
        "complete": ok,
        "logged_in": st["logged_in"],
        "notices_expected": expected,
        "notices": st["notices"],
        "lost": max(0, expected - st["notices"]),
        "dropped": st["dropped"],
        "connect_errors": st["connect_errors"],
        "unexpected": st["samples"][:3],
        **server_cpu_seconds(cpu0, cpu1),
    }


def presence(sys_: Running, cfg: Config, fl: Fleet, progress: Progress) -> dict[str, Any]:
    """Probe users log in one at a time; time their online notice to all N clients."""
    fl.measure(0, 0, cfg.probes)
    starts: list[int] = []
    progress.start(f"{sys_.name}: presence", cfg.probes)
    for k in range(cfg.probes):
        conn, t0 = probe_login(sys_.dialect, sys_.host, sys_.port, wire.probe_name(k), tls=sys_.tls)
        starts.append(t0)
        try:
            want = cfg.n * (k + 1)
            fl.wait_for(lambda s, w=want: s["p"] >= w, stall=cfg.drain_stall, cap=30.0, every=0.02)
            conn.send(wire.logout(sys_.dialect, wire.probe_name(k)))
            conn.drain_out(1.0)
        finally:
            conn.close()
        progress.update(k + 1)
        time.sleep(0.05)  # let the offline notice fan out before the next probe
    progress.done()
    rec = fl.collect()
    per_recipient = [ts - starts[seq] for seq, ts in zip(rec["p_seq"], rec["p_ts"], strict=True)]
    kernel = [ts - starts[seq] for seq, ts in zip(rec["p_seq"], rec["p_kts"], strict=True)]
    last: dict[int, int] = {}
    for seq, ts in zip(rec["p_seq"], rec["p_kts"], strict=True):
        last[seq] = max(last.get(seq, 0), ts - starts[seq])
    to_last = sorted(last.values())
    return {
        "per_recipient_ms": latency_summary(per_recipient),
        "kernel_ms": latency_summary(kernel),
        "to_last_ms": {
            "p50": nearest_rank(to_last, 50) / 1e6,
            "max": nearest_rank(to_last, 100) / 1e6,
        },
        "lost": cfg.n * cfg.probes - len(per_recipient),
        "duplicated": rec["p_dup"],
    }


def broadcast(
    sys_: Running,
    cfg: Config,
    fl: Fleet,
    sender: Conn,
    progress: Progress,
    rate: float | None = None,
    seconds: float | None = None,
    warmup: float | None = None,
    first: int = 0,
    cdf: bool = True,
) -> dict[str, Any]:
    """Open-loop broadcasts at ``rate`` (default ``cfg.rate``); latency from each
    payload's intended time.  Sequence numbers start at ``first``, so that a
    late delivery of an earlier phase is never taken for one of this phase."""
    rate = cfg.rate if rate is None else rate
    warm = int(rate * (cfg.warmup if warmup is None else warmup))
    count = warm + max(1, int(rate * (cfg.duration if seconds is None else seconds)))
    n = cfg.n
    fl.measure(first + count, 0, 0)
    cpu0 = sys_.cpu_times()
    rcpu0, scpu0 = fl.cpu_seconds(), time.process_time()
    busy0, wall0 = machine_busy_seconds(), time.monotonic()
    progress.start(f"{sys_.name}: broadcast {_per_s(rate * n)} deliveries/s", count)
    pad = cfg.pad

    def line(seq: int, t: int) -> bytes:
        return wire.broadcast(sys_.dialect, wire.payload(wire.KIND_BROADCAST, seq, t, pad))

    log = open_loop(sender, line, rate, count, first_seq=first, tick=progress.update)
    st, _ = fl.wait_for(lambda s: s["b"] >= n * count, stall=cfg.drain_stall, cap=60.0)
    progress.done()
    cpu1 = sys_.cpu_times()
    rcpu, scpu = fl.cpu_seconds() - rcpu0, time.process_time() - scpu0
    hcpu = rcpu + scpu
    busy, wall = machine_busy_seconds() - busy0, time.monotonic() - wall0
    rec = fl.collect()
    measured = first + warm
    lat = [x for s, x in zip(rec["b_seq"], rec["b_lat"], strict=True) if s >= measured]
    klat = [x for s, x in zip(rec["b_seq"], rec["b_klat"], strict=True) if s >= measured]
    worst: dict[int, int] = {}  # kernel-stamped, like the primary latency
    for s, x in zip(rec["b_seq"], rec["b_klat"], strict=True):
        if s >= measured and x > worst.get(s, -(1 << 62)):
            worst[s] = x
    to_last = sorted(worst.values())
    delivered = sum(1 for s in rec["b_seq"] if s >= first)
    lags = sorted(log.lag_ns)
    per_k = 1000.0 / delivered if delivered else math.nan
    cpu = server_cpu(cpu0, cpu1, per_k)
    server_cpu_s = cpu["server_cpu_s"] or 0.0
    out = {
        "rate": rate,
        "offered_deliveries": rate * n,
        "first_seq": first,
        "count": count,
        "sent": log.sent,
        "unsent": log.unsent,
        "measured_broadcasts": count - warm,
        "per_recipient_ms": latency_summary(lat),
        # Arrival at the client socket (kernel stamp): the same minus harness queueing.
        "kernel_ms": latency_summary(klat),
        "to_last_ms": {
            "p50": nearest_rank(to_last, 50) / 1e6,
            "p99": nearest_rank(to_last, 99) / 1e6,
        },
        "delivered": delivered,
        "lost": n * count - delivered,
        "duplicated": rec["b_dup"],
        # CPU seconds in all (/proc counts in 10 ms ticks: the report judges the
        # per-delivery figures only when there are enough of them).
        **cpu,
        "harness_cpu_s": hcpu,
        # The harness: receivers plus this (sending, polling) process.
        "harness_cpu_per_1k": hcpu * per_k,
        "receivers_cpu_per_1k": rcpu * per_k,
        "sender_cpu_per_1k": scpu * per_k,
        # Cores busy with neither this server nor the harness: other people's load.
        "foreign_cores": max(0.0, busy - server_cpu_s - hcpu) / wall if wall > 0 else math.nan,
        # Who had the machine's cores during the step: is the harness the limit?
        "wall_s": wall,
        "machine_cores": busy / wall if wall > 0 else math.nan,
        "server_cores": server_cpu_s / wall if wall > 0 else math.nan,
        "harness_cores": hcpu / wall if wall > 0 else math.nan,
        "sender_held_back": log.held_back,
        "sender_lag_ms": {
            "p50": nearest_rank(lags, 50) / 1e6,
            "p99": nearest_rank(lags, 99) / 1e6,
            "max": nearest_rank(lags, 100) / 1e6,
        },
        "bad_records": st["bad"],
        "dropped": st["dropped"],
    }
    if cdf:
        out["cdf_ms"] = cdf_points(lat)
        out["cdf_kernel_ms"] = cdf_points(klat)
    return out


def _per_s(x: float) -> str:
    return f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"


def _broken(sys_: Running, dropped: int, sender: Conn) -> str | None:
    """Why the system can no longer be measured with this fleet, or None."""
    if not sys_.alive():
        return "the server exited"
    if sender.closed:
        return "the server closed the sender's connection"
    if dropped:
        return f"the server dropped {dropped} client(s)"
    return None


def _search(
    sys_: Running,
    sender: Conn,
    ladder: list[float],
    bisections: int,
    objective_ms: float,
    run_step: Callable[[float, int], dict[str, Any]],
) -> dict[str, Any]:
    """One capacity search (``bench.capacity.search``): ``run_step(rate,
    first_seq)`` measures a step; it passes with nothing lost or unsent and
    kernel-stamped p99 within ``objective_ms``.  Sequence numbers run on
    across steps, so a late delivery is never taken for a later step's."""
    first = 0
    cores = os.cpu_count() or 1

    def measure(rate: float) -> dict[str, Any]:
        nonlocal first
        step = run_step(rate, first)
        first += step["count"]
        intact = step["lost"] == 0 and step["unsent"] == 0
        step["ok"] = intact and step["kernel_ms"]["p99"] <= objective_ms
        step["retry"] = intact  # a loss is the system's; a slow step may be the machine's
        why = harness_limit(step, objective_ms, cores)
        if why:
            step["harness_limit"] = why
        broken = _broken(sys_, step["dropped"], sender)
        if broken:
            step["broken"] = broken
        time.sleep(0.2)  # the next step starts from an idle server
        return step

    found = search(measure, ladder, bisections)
    found["objective_ms"] = objective_ms
    # Where CPU per delivery is read: at the capacity (the busiest step that
    # passed), where it is steadiest; the first step if none passed.
    found["cpu_step"] = next(
        (s for s in found["steps"] if s["ok"] and s["offered"] == found["capacity"]),
        found["steps"][0],
    )
    return found


def broadcast_step_seconds(cfg: Config, deliveries: float) -> float:
    """Measured seconds of a broadcast step offering ``deliveries``/s: ``cfg.step``,
    or long enough for ``cfg.min_broadcasts`` at large N, at most ``cfg.max_step``."""
    return max(cfg.step, min(cfg.min_broadcasts * cfg.n / deliveries, cfg.max_step))


def broadcast_capacity(
    sys_: Running, cfg: Config, fl: Fleet, sender: Conn, progress: Progress
) -> dict[str, Any]:
    """Broadcast capacity over ``cfg.ladder``, in deliveries/s: a step offers
    ``deliveries / N`` broadcasts a second for ``broadcast_step_seconds``.  The
    first step keeps its latency distribution (the CDF plot)."""

    def run_step(deliveries: float, first: int) -> dict[str, Any]:
        rate = deliveries / cfg.n
        seconds = broadcast_step_seconds(cfg, deliveries)
        return broadcast(sys_, cfg, fl, sender, progress, rate, seconds, cfg.step_warmup,
                         first, cdf=first == 0)  # fmt: skip

    return _search(sys_, sender, cfg.ladder, cfg.bisections, cfg.objective_ms, run_step)


def direct_step(
    sys_: Running,
    cfg: Config,
    fl: Fleet,
    sender: Conn,
    indices: list[int],
    rate: float,
    first: int,
    progress: Progress,
) -> dict[str, Any]:
    """Direct messages at ``rate``/s for ``cfg.dm_step`` seconds, open loop.

    Recipients are spread over all N clients by a fixed stride, so every run
    sends the same traffic; sequence numbers start at ``first``.
    """
    count = max(1, int(rate * cfg.dm_step))
    n = len(indices)
    fl.measure(0, first + count, 0)
    progress.start(f"{sys_.name}: direct {_per_s(rate)} messages/s", count)

    def line(seq: int, t: int) -> bytes:
        to = wire.client_name(indices[(seq * 7919) % n])
        return wire.direct(sys_.dialect, to, wire.payload(wire.KIND_DIRECT, seq, t))

    cpu0 = sys_.cpu_times()
    log = open_loop(sender, line, rate, count, first_seq=first, tick=progress.update)
    st, _ = fl.wait_for(lambda s: s["d"] >= count, stall=cfg.drain_stall, cap=60.0)
    cpu1 = sys_.cpu_times()
    progress.done()
    rec = fl.collect()
    got = [x for s, x in zip(rec["d_seq"], rec["d_klat"], strict=True) if s >= first]
    hgot = [x for s, x in zip(rec["d_seq"], rec["d_lat"], strict=True) if s >= first]
    # Kernel-stamped, like every latency the report leads with.
    summary, hsummary = latency_summary(got), latency_summary(hgot)
    return {
        "offered": rate,
        "count": count,
        "sent": log.sent,
        "unsent": log.unsent,
        "lost": count - len(got),
        "duplicated": rec["d_dup"],
        "achieved": len(got) / log.seconds if log.seconds > 0 else math.nan,
        "kernel_ms": summary,
        "per_recipient_ms": hsummary,
        **server_cpu(cpu0, cpu1, 1000.0 / len(got) if got else None),
        "sender_lag_p99_ms": nearest_rank(sorted(log.lag_ns), 99) / 1e6,
        "dropped": st["dropped"],
    }


def direct_capacity(
    sys_: Running, cfg: Config, fl: Fleet, sender: Conn, indices: list[int], progress: Progress
) -> dict[str, Any]:
    """Direct-message capacity over ``cfg.dm_ladder``, in messages/s."""

    def run_step(rate: float, first: int) -> dict[str, Any]:
        return direct_step(sys_, cfg, fl, sender, indices, rate, first, progress)

    return _search(sys_, sender, cfg.dm_ladder, cfg.bisections, cfg.dm_objective_ms, run_step)
