"""Direct messages on a cluster: latency, throughput, and the blast behind them.

``blast`` sends DMs from several senders, each keeping a window of them
unanswered; ``deliveries`` counts what the receivers got (lost, duplicated,
falsely echoed).  ``dm_latency`` is closed loop, interleaved message by
message: same node, two nodes, a single server.  ``throughput`` blasts the
cluster with 1 and 2 workers and a single server, in interleaved rounds.
"""

from __future__ import annotations

import argparse
import re
import selectors
import time
from array import array
from typing import Any

from bench import systems
from bench.cluster_nodes import Nodes
from bench.harness import wire
from bench.harness.fleet import Fleet
from bench.harness.hub import Client, Hub
from bench.harness.procstat import cpu_seconds
from bench.harness.redis_stats import RedisStats, delta
from bench.progress import Progress
from bench.stats import nearest_rank, p50_ms
from bench.workloads import Config


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


def deliveries(fl: Fleet, want: int, sent_echoes: array) -> dict[str, Any]:
    """Wait for ``want`` DMs at the fleet; lost, duplicated, false echoes."""
    fl.wait_for(lambda s: s["d"] >= want, stall=3.0, cap=60.0)
    rec = fl.collect()
    got = set(rec["d_seq"])
    return {
        "delivered": len(got),
        "lost": want - len(got),
        "duplicated": rec["d_dup"],
        "false_echoes": sum(1 for s in sent_echoes if s not in got),
        "kernel_p50_ms": p50_ms(rec["d_klat"]),
        "kernel_p99_ms": nearest_rank(sorted(rec["d_klat"]), 99) / 1e6 if rec["d_klat"] else None,
    }


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
            res.update(deliveries(fl, res["sent"], res["echoed"]))
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

