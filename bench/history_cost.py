"""The server's CPU per direct message with history on and off, side by side.

    python bench/history_cost.py                     # select, 5 rounds of 10,000 DMs each
    python bench/history_cost.py --backend threads --rounds 7 -n 20000
    python bench/history_cost.py --store memory      # a single node without accounts
    python bench/history_cost.py --redis             # Redis commands per cross-node DM

Two servers run at once, no flood control: one with ``--history on``, one
without.  With ``--store sqlite`` (the default) both have registered names
(``--accounts``, a SQLite file each), the history is the SQLite file beside
the accounts, and Alice and Bob are registered and logged in with their
passwords, so every direct message is kept for both parties.  With
``--store memory`` neither has accounts and the history is in memory: Alice
and Bob are names anyone may take, so nothing private is kept for them and
a direct message costs only the chat's asking.  Rounds alternate between
the two servers -- off, on, off, on... -- so that what other people do on a
shared machine falls on both alike; in each round Alice sends ``n`` messages
to Bob (in windows of ``--window``, each waited for: echoes to Alice and
deliveries to Bob) and the server's CPU time over the round (the time its
threads ran, in nanoseconds from /proc: the tick-counted user + system time
is too coarse for a round) is divided by ``n``.  The report gives each side's
median and the ratio of the medians.

With ``--redis``: Redis commands per direct message from a user of one node
to a user of another, on a two-node cluster, with history off and on
(``INFO commandstats`` before and after).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.flood import server_process  # noqa: E402

PASSWORD = "correct horse 42"
# Cheap to check: logins are not what is measured.
FAST_HASH = "scrypt:ln=4,r=8,p=1"


def server(backend: str, accounts: str | None,
           *args: str) -> AbstractContextManager[tuple[int, int]]:
    """A server process on a free port, no flood control, with the accounts
    database ``accounts`` (None: no accounts); yields (port, pid)."""
    with_accounts = () if accounts is None else (
        "--accounts", accounts, "--password-hash", FAST_HASH)
    return server_process(backend, "--flood-control", "off", *with_accounts, *args)


def cpu_ns(pid: int) -> int:
    """Nanoseconds the threads of ``pid`` have run, those alive now (none of
    the server's ends during a round)."""
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{thread}/schedstat") as stats:
                total += int(stats.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # the thread ended meanwhile
    return total


class Reader:
    """One client socket, read up to a count of a given line's occurrences."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def wait_for(self, marker: bytes, count: int = 1) -> None:
        """Read until ``marker`` was seen ``count`` times (the buffer is dropped past it)."""
        seen = 0
        while True:
            seen += self.buffer.count(marker)
            if seen >= count:
                self.buffer = b""
                return
            # Keep a partial marker at the end for the next read.
            self.buffer = self.buffer[-(len(marker) - 1):] if len(marker) > 1 else b""
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError(f"closed while waiting for {marker!r}")
            self.buffer += chunk


def plain(port: int, name: str) -> Reader:
    """``name``, logged in as anyone may (no accounts)."""
    client = Reader(port)
    client.send(name)
    client.wait_for(f"<User {name} is online.>".encode())
    return client


def registered(port: int, name: str) -> Reader:
    """``name``, registered and logged in with its password."""
    first = Reader(port)
    first.send(name)
    first.wait_for(f"<User {name} is online.>".encode())
    first.send(f'register "{PASSWORD}"')
    first.wait_for(b"is now registered.>")
    first.send("bye")
    first.wait_for(f"<User {name} is offline.>".encode())
    first.sock.close()
    client = Reader(port)
    client.send(name)
    client.wait_for(b"<Password required")
    client.send(f'"{PASSWORD}"')
    client.wait_for(f"<User {name} is online.>".encode())
    return client


def exchange(alice: Reader, bob: Reader, n: int, window: int) -> None:
    """Alice sends Bob ``n`` direct messages, at most ``window`` unanswered."""
    sent = 0
    while sent < n:
        batch = min(window, n - sent)
        alice.sock.sendall(b"chat Bob history cost\n" * batch)
        alice.wait_for(b"<To Bob>", batch)
        bob.wait_for(b"<Message from Alice", batch)
        sent += batch


def round_cpu(pid: int, alice: Reader, bob: Reader, n: int, window: int) -> float:
    """Microseconds of server CPU per direct message over one round of ``n``."""
    before = cpu_ns(pid)
    exchange(alice, bob, n, window)
    return (cpu_ns(pid) - before) / n / 1000


def redis_commands(backend: str, n: int, window: int) -> None:
    """Redis commands per cross-node direct message, history off and on:
    two nodes of a cluster (a redis-server of their own each time), Alice on
    one, Bob on the other, both registered (accounts in the cluster's Redis)."""
    import shutil

    from bench.harness.procstat import stop_process
    from bench.harness.redis_stats import RedisStats, delta, per_op
    from bench.peers.redis_peer import start_redis

    print(f"{backend}: Redis commands per cross-node direct message between two registered"
          f" names ({n:,} messages)")
    for side, extra in (("off", ()), ("on", ("--history", "on"))):
        proc, port, workdir = start_redis(64)
        stats = RedisStats(port)
        node = ("--flood-control", "off", "--cluster", f"redis://127.0.0.1:{port}",
                "--accounts", "--password-hash", FAST_HASH, *extra)
        try:
            with server_process(backend, *node) as (a, _), server_process(backend, *node) as (b, _):
                bob, alice = registered(b, "Bob"), registered(a, "Alice")
                alice.send("users")
                alice.wait_for(b"<Online users: Alice, Bob>")
                before = stats.snap()
                exchange(alice, bob, n, window)
                after = stats.snap()
                if extra:
                    # Both copies are written a moment later (the recipient's
                    # after a look-up of its account): wait for all of them
                    # (the cluster's own are two XADDs per message).
                    deadline = time.monotonic() + 30
                    while (delta(before, after)["calls"].get("xadd", 0) < 4 * n
                           and time.monotonic() < deadline):
                        time.sleep(0.05)  # a poll interval
                        after = stats.snap()
                cost = per_op(delta(before, after), n, None)
        finally:
            stats.close()
            stop_process(proc)
            shutil.rmtree(workdir, ignore_errors=True)
        calls = ", ".join(f"{name} {count:.2f}" for name, count in cost["calls"].items()
                          if count >= 0.01)
        print(f"  history {side:<3}  {cost['commands']:.2f} commands  ({calls})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="select")
    parser.add_argument("-n", type=int, default=10_000, help="direct messages per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side")
    parser.add_argument("--window", type=int, default=100, help="messages in flight at most")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite",
                        help="sqlite: registered names, history beside the accounts;"
                             " memory: no accounts")
    parser.add_argument("--redis", action="store_true",
                        help="count Redis commands per cross-node message on a cluster instead")
    options = parser.parse_args()
    if options.redis:
        redis_commands(options.backend, options.n, options.window)
        return
    sqlite = options.store == "sqlite"
    log_in = registered if sqlite else plain
    with tempfile.TemporaryDirectory() as directory, \
            server(options.backend, f"{directory}/off.db" if sqlite else None) as (
                off_port, off_pid), \
            server(options.backend, f"{directory}/on.db" if sqlite else None,
                   "--history", "on") as (on_port, on_pid):
        sides = {
            "off": (off_pid, log_in(off_port, "Alice"), log_in(off_port, "Bob")),
            "on": (on_pid, log_in(on_port, "Alice"), log_in(on_port, "Bob")),
        }
        per_dm: dict[str, list[float]] = {"off": [], "on": []}
        for pid, alice, bob in sides.values():  # a warm-up round each, not counted
            round_cpu(pid, alice, bob, min(options.n, 2_000), options.window)
        for _ in range(options.rounds):
            for side, (pid, alice, bob) in sides.items():
                per_dm[side].append(round_cpu(pid, alice, bob, options.n, options.window))
    off, on = statistics.median(per_dm["off"]), statistics.median(per_dm["on"])
    names = "two registered names, history in SQLite" if sqlite else (
        "two names without accounts, history in memory")
    print(f"{options.backend}: server CPU per direct message between {names},"
          f" {options.rounds} interleaved rounds of {options.n:,}")
    for side in ("off", "on"):
        rounds = " ".join(f"{value:.2f}" for value in per_dm[side])
        print(f"  history {side:<3}  median {statistics.median(per_dm[side]):6.2f} us"
              f"   (rounds: {rounds})")
    print(f"  ratio on/off: {on / off:.2f}x")


if __name__ == "__main__":
    main()
