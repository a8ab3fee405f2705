"""The threads backend's chat lock and GIL hand-offs, measured on the current code.

Every call into the threads backend's chat logic is made under one chat lock
(a ``FairLock``), and the GIL lets one thread run Python at a time: each turn
of the lock wakes one particular sleeping thread, which must then win the
GIL.  This script shows what that costs.  It runs the threads backend in this
process over real loopback sockets, its chat lock replaced before any client
connects by a subclass that times every turn (the server's code path is
unchanged).  The receivers are the load benchmark's (``bench.harness``: a
child process that checks every delivery arrives); the sender is a client
in this process.  Phases: a login storm of N clients; broadcasts at a steady
offered rate; broadcasts as fast as the sender can, several per write, each
write once the echoes of the one before are back; direct messages in
batches, spread over all N.  Then the same load on the select backend, for
the context switches: what the lock and the threads add.

    python bench/lock_waits.py                  # N = 500
    python bench/lock_waits.py -n 100 --seconds 1 --out lock.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import wire  # noqa: E402
from bench.harness.driver import Conn, open_loop  # noqa: E402
from bench.harness.fleet import Fleet  # noqa: E402
from bench.harness.procstat import machine_facts, raise_nofile_limit  # noqa: E402
from bench.stats import nearest_rank  # noqa: E402
from reactor.app import build_chat  # noqa: E402
from reactor.backends import server_class  # noqa: E402

# The one import of the lock's class (it may move to a module of its own).
from reactor.backends.threads import FairLock  # noqa: E402
from reactor.config import ServerConfig  # noqa: E402
from reactor.flow import FloodLimits  # noqa: E402

HOST = "127.0.0.1"
PHASES = ("login storm", "bcast {rate}/s", "bcast max", "dm spread")


class _Waiters(collections.deque[threading.Lock]):
    """The lock's queue of waiters: notes, for the thread that joins it, that it queued."""

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
    the calling one (the sender's): the server's, as the kernel counts them."""
    whole = resource.getrusage(resource.RUSAGE_SELF)
    mine = resource.getrusage(resource.RUSAGE_THREAD)
    return whole.ru_nvcsw - mine.ru_nvcsw, whole.ru_nivcsw - mine.ru_nivcsw


def lock_summary(turns: list[tuple[int, int, bool, int]], delivered: int) -> dict[str, Any]:
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


class Run:
    """One backend serving N receivers and a sender, in this process."""

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
        self.thread = threading.Thread(target=self.server.serve_forever, name="server",
                                       daemon=True)
        self.thread.start()
        self.sender: Conn | None = None

    def close(self) -> None:
        self.fleet.close()
        if self.sender is not None:
            self.sender.close()
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
        self.sender = Conn(HOST, self.server.port)
        self.sender.send(wire.login("chat", wire.sender_name(0)))
        if not self.sender.wait_for_text(wire.online_notice(wire.sender_name(0)), 30.0):
            raise RuntimeError("the sender's login was not answered")

    def broadcast_rate(self) -> tuple[int, int]:
        assert self.sender is not None
        count = max(1, int(self.args.rate * self.args.seconds))
        self.fleet.measure(count, 0, 0)
        sent = open_loop(self.sender, lambda seq, t: wire.broadcast(
            "chat", wire.payload(wire.KIND_BROADCAST, seq, t)), self.args.rate, count)
        return self._wait("b", self.n * sent.sent), self.n * count

    def closed_loop(self, kind: int, per_write: int, cap: int) -> int:
        """Broadcasts or DMs (spread over all N), ``per_write`` at a time, each
        write once the echo of the one before is back, for ``--seconds``."""
        assert self.sender is not None
        sent, stop = 0, time.monotonic() + self.args.seconds
        while sent < cap and time.monotonic() < stop:
            batch = range(sent, min(cap, sent + per_write))
            texts = [wire.payload(kind, seq, time.monotonic_ns()) for seq in batch]
            self.sender.send(b"".join(
                wire.broadcast("chat", text) if kind == wire.KIND_BROADCAST
                else wire.direct("chat", wire.client_name(seq * 7919 % self.n), text)
                for seq, text in zip(batch, texts, strict=True)))
            if not self.sender.wait_for_text(texts[-1], 30.0):
                raise RuntimeError("the sender's echo did not come back")
            sent = batch.stop
        return sent

    def broadcast_max(self) -> tuple[int, int]:
        cap = max(100, 5_000_000 // self.n)  # (a receiver keeps a byte per broadcast and client)
        self.fleet.measure(cap, 0, 0)
        sent = self.closed_loop(wire.KIND_BROADCAST, self.args.per_write, cap)
        return self._wait("b", self.n * sent), self.n * sent

    def direct_spread(self) -> tuple[int, int]:
        cap = 1_000_000
        self.fleet.measure(0, cap, 0)
        sent = self.closed_loop(wire.KIND_DIRECT, self.args.dm_batch, cap)
        return self._wait("d", sent), sent


def measure(backend: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    run = Run(backend, args)
    try:
        names = [p.format(rate=f"{args.rate:g}") for p in PHASES]
        results = [run.phase(names[0], run.storm)]
        run.log_in_sender()
        steps = (run.broadcast_rate, run.broadcast_max, run.direct_spread)
        return results + [run.phase(name, step)
                          for name, step in zip(names[1:], steps, strict=True)]
    finally:
        run.close()


def duration(us: float) -> str:
    """A time in 6 columns: µs below a millisecond, ms below a second, else s."""
    if us < 1000:
        return f"{us:.0f}µs"
    if us < 1_000_000:
        return f"{us / 1e3:.3g}ms"
    return f"{us / 1e6:.3g}s"


def report(doc: dict[str, Any]) -> list[str]:
    """The two 80-column tables."""
    lines = [f"Chat lock of the threads backend, N = {doc['n']}, commit {doc['commit']}, "
             f"switch interval {doc['switch_interval_ms']:g} ms",
             f"load average {doc['load_average']} on {doc['cpus']} CPUs", "",
             f"{'':11}{'':13}{'wait':>7}{'':14}{'hold':>7}{'':14}{'convoy':>7}{'msg/':>7}",
             f"{'phase':11}{'turns':>6}{'queued':>7}" + "".join(
                 f"{label:>7}" for label in ("p50", "p99", "max") * 2) + f"{'':7}{'turn':>7}"]
    for phase in doc["threads"]:
        lock = phase["lock"]
        row = f"{phase['phase']:11}{lock['turns']:>6}"
        if lock["turns"]:
            row += f"{lock['contended']:>7.0%}" + "".join(
                f"{duration(lock[key][label]):>7}"
                for key in ("wait_us", "hold_us") for label in ("p50", "p99", "max"))
            per_turn = lock["deliveries_per_turn"]
            row += f"{lock['convoy']:>7.1f}" + (f"{per_turn:>7,.0f}" if per_turn >= 100
                                                 else f"{per_turn:>7.3g}")
        lines.append(row)
    lines += ["", "Context switches of the server's threads per 1,000 deliveries",
              f"{'':27}{'threads':>17}{'':6}{'select':>14}",
              f"{'phase':11}{'delivered':>10}{'lost':>6}" + "".join(
                  f"{label:>7}" for label in ("all", "vol", "invol") * 2) + f"{'ratio':>7}"]
    for threads, select in zip(doc["threads"], doc["select"], strict=True):
        row = f"{threads['phase']:11}{threads['delivered']:>10}"
        row += f"{threads['expected'] - threads['delivered']:>6}"
        per = []
        for phase in (threads, select):
            switches, thousands = phase["switches"], max(1, phase["delivered"]) / 1000
            voluntary, involuntary = switches["voluntary"], switches["involuntary"]
            per.append((voluntary + involuntary) / thousands)
            row += "".join(f"{count:>7.3g}" for count in (per[-1], voluntary / thousands,
                                                          involuntary / thousands))
        row += f"{per[0] / per[1]:>6.1f}x" if per[1] else f"{'-':>7}"
        lines.append(row)
    lost = sum(p["expected"] - p["delivered"] for p in doc["threads"] + doc["select"])
    lines.append("every delivery arrived" if not lost else f"{lost} deliveries lost")
    return lines


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


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
        "n": args.n, "commit": commit(), "switch_interval_ms": sys.getswitchinterval() * 1e3,
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
