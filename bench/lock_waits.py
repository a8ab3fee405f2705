"""The threads backend's chat lock and GIL hand-offs, measured on the current code.

Each turn of the threads backend's chat lock (a ``FairLock``) wakes one
sleeping thread, which must then win the GIL.  This script runs the threads
backend in this process over loopback, its chat lock replaced before any
client connects by a subclass that times every turn (the server's code path
is unchanged); the receivers (``bench.harness.fleet``, which checks every
delivery arrives) and the sender are child processes.  Phases: a login storm
of N clients; broadcasts at a steady offered rate; broadcasts as fast as the
sender can, several per write, each write once the echo of the one before is
back; direct messages in batches, spread over all N.  Then the same load on
the select backend, for the server's context switches: what the lock and the
threads add.

    python bench/lock_waits.py                  # N = 500
    python bench/lock_waits.py -n 100 --seconds 1 --out lock.json
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import multiprocessing as mp
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import wire  # noqa: E402
from bench.harness.deathsig import set_pdeathsig  # noqa: E402
from bench.harness.driver import Conn, open_loop  # noqa: E402
from bench.harness.fleet import Fleet  # noqa: E402
from bench.harness.procstat import code_commit, machine_facts, raise_nofile_limit  # noqa: E402
from bench.stats import nearest_rank  # noqa: E402
from reactor.app import build_chat  # noqa: E402
from reactor.backends import server_class  # noqa: E402

# The one import of the lock's class.
from reactor.backends.fair_lock import FairLock  # noqa: E402
from reactor.config import ServerConfig  # noqa: E402
from reactor.flow import FloodLimits  # noqa: E402

HOST = "127.0.0.1"
PHASES = ("login storm", "bcast {rate}/s", "bcast max", "dm spread")
# A receiver keeps a byte per broadcast and client: a phase's broadcasts and DMs at most.
BROADCAST_BYTES, DMS_CAP = 20_000_000, 1_000_000
# The sender starts while the server's threads run: a fork then may copy a
# lock some thread holds, so its process starts afresh.
_CTX = mp.get_context("spawn")


class _Waiters(collections.deque[threading.Lock]):
    """The lock's queue of waiters (``FairLock._waiters``, which ``acquire``
    joins when the lock is held): notes, for the thread that joins it, that it queued."""

    def __init__(self) -> None:
        super().__init__()
        self.joined = threading.local()

    def append(self, baton: threading.Lock) -> None:
        self.joined.queued = True
        super().append(baton)

    def appendleft(self, baton: threading.Lock) -> None:
        self.joined.queued = True
        super().appendleft(baton)


class TimedLock(FairLock):
    """The chat lock, recording per turn: (wait ns, hold ns, queued, waiting at release)."""

    def __init__(self, before_release: Callable[[], None] | None) -> None:
        super().__init__(before_release)
        self._waiters = self._queue = _Waiters()
        self.log: list[tuple[int, int, bool, int]] = []
        self._owned_at = self._wait = 0
        self._queued = False

    def acquire(self, first: bool = False) -> None:
        joined = self._queue.joined
        joined.queued = False
        start = time.perf_counter_ns()
        super().acquire(first)
        # Only the owner writes these, until its release.
        self._owned_at = owned = time.perf_counter_ns()
        self._wait = owned - start
        self._queued = joined.queued

    def release(self) -> None:
        held = time.perf_counter_ns() - self._owned_at
        self.log.append((self._wait, held, self._queued, len(self._waiters)))
        super().release()

    def take(self) -> list[tuple[int, int, bool, int]]:
        """The turns recorded since the last take."""
        log, self.log = self.log, []
        return log


def server_switches() -> tuple[int, int]:
    """(voluntary, involuntary) context switches of this process's threads but
    the calling one (the script's own): the server's, as the kernel counts them."""
    whole = resource.getrusage(resource.RUSAGE_SELF)
    mine = resource.getrusage(resource.RUSAGE_THREAD)
    return whole.ru_nvcsw - mine.ru_nvcsw, whole.ru_nivcsw - mine.ru_nivcsw


def lock_summary(turns: list[tuple[int, int, bool, int]], delivered: int) -> dict[str, Any]:
    """A phase's turns of the lock (``TimedLock.log``), in µs and shares."""
    count = len(turns)
    if not count:
        return {"turns": 0}
    waits = sorted(t[0] for t in turns)
    holds = sorted(t[1] for t in turns)
    ranks = (("p50", 50), ("p99", 99), ("max", 100))
    return {
        "turns": count,
        "contended": sum(t[2] for t in turns) / count,
        "wait_us": {label: nearest_rank(waits, rank) / 1e3 for label, rank in ranks},
        "hold_us": {label: nearest_rank(holds, rank) / 1e3 for label, rank in ranks},
        "convoy": sum(t[3] for t in turns) / count,
        "deliveries_per_turn": delivered / count,
    }


def closed_loop(conn: Conn, kind: int, per_write: int, seconds: float, n: int) -> int:
    """Broadcasts or DMs (spread over all ``n``), ``per_write`` at a time, each
    write once the echo of the one before is back, for ``seconds``."""
    sent, stop, cap = 0, time.monotonic() + seconds, caps(n)[kind == wire.KIND_DIRECT]
    while sent < cap and time.monotonic() < stop:
        batch = range(sent, min(cap, sent + per_write))
        texts = [wire.payload(kind, seq, time.monotonic_ns()) for seq in batch]
        conn.send(b"".join(
            wire.broadcast("chat", text) if kind == wire.KIND_BROADCAST
            else wire.direct("chat", wire.client_name(seq * 7919 % n), text)
            for seq, text in zip(batch, texts, strict=True)))
        if not conn.wait_for_text(texts[-1], 30.0):
            raise RuntimeError("the sender's echo did not come back")
        sent = batch.stop
    return sent


def caps(n: int) -> tuple[int, int]:
    """Broadcasts and DMs one phase sends at most."""
    return max(100, BROADCAST_BYTES // n), DMS_CAP


def sender_main(ctl: Connection, port: int, args: argparse.Namespace) -> None:
    """The sender's process (its own GIL, as a real client's): logs in, then
    runs each phase it is told; answers (sent, offered)."""
    set_pdeathsig()
    conn = Conn(HOST, port)
    conn.send(wire.login("chat", wire.sender_name(0)))
    ctl.send(conn.wait_for_text(wire.online_notice(wire.sender_name(0)), 30.0))
    while (order := ctl.recv()) != "close":
        if order == "rate":
            count = max(1, int(args.rate * args.seconds))
            ctl.send((open_loop(conn, lambda seq, t: wire.broadcast(
                "chat", wire.payload(wire.KIND_BROADCAST, seq, t)), args.rate, count).sent, count))
        else:
            kind, per_write = ((wire.KIND_BROADCAST, args.per_write) if order == "max"
                               else (wire.KIND_DIRECT, args.dm_batch))
            sent = closed_loop(conn, kind, per_write, args.seconds, args.n)
            ctl.send((sent, sent))
    conn.close()


class Run:
    """One backend serving N receivers (a child process) and a sender (another), in this process."""

    def __init__(self, backend: str, args: argparse.Namespace) -> None:
        self.n, self.args = args.n, args
        config = ServerConfig(host=HOST, port=0, max_clients=args.n + 16,
                              flood=FloodLimits(enabled=False))
        self.server = server_class(backend)(config, build_chat(config))
        self.lock: TimedLock | None = None
        if backend == "threads":
            threads = cast(Any, self.server)
            self.lock = threads.lock = TimedLock(threads.lock._before_release)
        self.fleet = Fleet("chat", HOST, self.server.port, list(range(args.n)), receivers=1,
                           window=args.login_window)
        self.sender: Connection | None = None
        self.thread = threading.Thread(target=self.server.serve_forever, name="server",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.sender is not None:
            self.sender.send("close")
            self.sender_process.join(10)
        self.fleet.close()
        self.server.stop()
        self.thread.join(timeout=30)

    def phase(self, name: str, run: Callable[[], tuple[int, int]]) -> dict[str, Any]:
        """Run one phase; what it delivered, its server's context switches, its lock's turns."""
        if self.lock is not None:
            self.lock.take()  # forget the turns between phases
        vol0, invol0 = server_switches()
        start = time.perf_counter()
        delivered, expected = run()
        seconds = time.perf_counter() - start
        vol1, invol1 = server_switches()
        result: dict[str, Any] = {
            "phase": name, "seconds": seconds, "delivered": delivered, "expected": expected,
            "switches": {"voluntary": vol1 - vol0, "involuntary": invol1 - invol0},
        }
        if self.lock is not None:
            result["lock"] = lock_summary(self.lock.take(), delivered)
        return result

    def _wait(self, key: str, want: int) -> int:
        """Until the receivers have ``want`` of ``key``, or no progress for 10 s."""
        status, _ = self.fleet.wait_for(lambda s: s[key] >= want, stall=10.0,
                                        cap=max(120.0, self.n * 0.1), every=0.01)
        return int(status[key])

    def storm(self) -> tuple[int, int]:
        expected = self.n * (self.n + 1) // 2  # the k-th login is told to N-k+1 users
        self.fleet.send("login")
        return self._wait("notices", expected), expected

    def log_in_sender(self) -> None:
        """After the storm, outside every phase."""
        self.sender, child_end = _CTX.Pipe()
        self.sender_process = _CTX.Process(target=sender_main, daemon=True, name="bench-sender",
                                           args=(child_end, self.server.port, self.args))
        self.sender_process.start()
        child_end.close()
        if not self.sender.poll(30.0) or not self.sender.recv():
            raise RuntimeError("the sender's login was not answered")

    def sending(self, order: str) -> tuple[int, int]:
        """The sender's phase ``order`` ("rate", "max" or "dm")."""
        assert self.sender is not None
        broadcasts, dms = caps(self.n)
        direct = order == "dm"
        self.fleet.measure(0 if direct else broadcasts, dms if direct else 0, 0)
        self.sender.send(order)
        if not self.sender.poll(self.args.seconds + 60.0):
            raise RuntimeError(f"the sender did not finish {order!r}")
        sent, offered = self.sender.recv()
        copies = 1 if direct else self.n
        return self._wait("d" if direct else "b", copies * sent), copies * offered


def measure(backend: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    run = Run(backend, args)
    try:
        names = [p.format(rate=f"{args.rate:g}") for p in PHASES]
        results = [run.phase(names[0], run.storm)]
        run.log_in_sender()
        return results + [run.phase(name, functools.partial(run.sending, order))
                          for name, order in zip(names[1:], ("rate", "max", "dm"), strict=True)]
    finally:
        run.close()


def duration(us: float) -> str:
    """A time in 6 columns: µs below a millisecond, ms below a second, else s."""
    if us < 1000:
        return f"{us:.0f}µs"
    if us < 1_000_000:
        return f"{us / 1e3:.3g}ms"
    return f"{us / 1e6:.3g}s"


def figure(x: float) -> str:
    """At most 6 columns, 3 digits where they fit."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def report(doc: dict[str, Any]) -> list[str]:
    """The two 80-column tables."""
    columns = "".join(f"{label:>7}" for label in ("p50", "p99", "max") * 2)
    lines = [f"Chat lock of the threads backend, N = {doc['n']}, "
             f"switch interval {doc['switch_interval_ms']:g} ms",
             f"Commit: {doc['commit']}",
             f"load average {doc['load_average']} on {doc['cpus']} CPUs", "",
             f"{'':24}{'wait':>7}{'':14}{'hold':>7}{'':14}{'convoy':>7}{'msg/':>7}",
             f"{'phase':11}{'turns':>6}{'queued':>7}{columns}{'':7}{'turn':>7}"]
    for phase in doc["threads"]:
        lock = phase["lock"]
        row = f"{phase['phase']:11}{lock['turns']:>6}"
        if lock["turns"]:
            row += f"{lock['contended']:>7.0%}" + "".join(
                f"{duration(lock[key][label]):>7}"
                for key in ("wait_us", "hold_us") for label in ("p50", "p99", "max"))
            per_turn = lock["deliveries_per_turn"]
            row += f"{lock['convoy']:>7.2f}{per_turn:>7{',.0f' if per_turn >= 100 else '.3g'}}"
        lines.append(row)
    columns = "".join(f"{label:>7}" for label in ("all", "vol", "invol") * 2)
    lines += ["", "Context switches of the server's threads per 1,000 deliveries",
              f"{'':27}{'threads':>17}{'':6}{'select':>14}",
              f"{'phase':11}{'delivered':>10}{'lost':>6}{columns}{'+vol':>7}"]
    for threads, select in zip(doc["threads"], doc["select"], strict=True):
        row = f"{threads['phase']:11}{threads['delivered']:>10}"
        row += f"{threads['expected'] - threads['delivered']:>6}"
        blocked = []  # voluntary: a thread went to sleep (lock, GIL, socket)
        for phase in (threads, select):
            thousands = max(1, phase["delivered"]) / 1000
            voluntary, involuntary = phase["switches"].values()
            blocked.append(voluntary / thousands)
            row += "".join(f"{figure(count / thousands):>7}"
                           for count in (voluntary + involuntary, voluntary, involuntary))
        added = blocked[0] - blocked[1]  # what the lock and the threads add
        lines.append(row + f"{'+' if added >= 0 else ''}{figure(added)}".rjust(7))
    lost = sum(p["expected"] - p["delivered"] for p in doc["threads"] + doc["select"])
    lines.append("every delivery arrived" if not lost else f"{lost} deliveries lost")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="receivers")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="length of each broadcast and direct-message phase")
    parser.add_argument("--rate", type=float, default=150.0,
                        help="broadcasts per second offered in the steady phase")
    parser.add_argument("--per-write", type=int, default=8,
                        help="broadcasts per write in the fastest phase")
    parser.add_argument("--dm-batch", type=int, default=20,
                        help="direct messages the sender writes at once")
    parser.add_argument("--login-window", type=int, default=32, help="logins in flight")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    raise_nofile_limit()  # the server's N sockets are in this process
    doc: dict[str, Any] = {
        "n": args.n, "commit": code_commit(), "switch_interval_ms": sys.getswitchinterval() * 1e3,
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()), "cpus": os.cpu_count(),
        "machine": machine_facts(), "config": {k: v for k, v in vars(args).items() if k != "out"},
    }
    doc["threads"] = measure("threads", args)
    doc["select"] = measure("select", args)
    doc["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print("\n".join(report(doc)))
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    lost = any(p["delivered"] < p["expected"] for p in doc["threads"] + doc["select"])
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
