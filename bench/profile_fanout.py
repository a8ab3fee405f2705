"""Where the select backend's time goes: instruction counts and a profile.

Wall-clock timings on a shared, loaded machine say little, so this driver
counts instructions instead (``valgrind --tool=callgrind``), and uses
cProfile for the breakdown by function.  It runs the real select backend in
this process over real loopback sockets:

* N receivers (500 by default) logged in from a child process that reads and
  discards everything (it runs natively: valgrind does not follow ``exec``);
* one sender in this process, which broadcasts (one broadcast at a time,
  each a pass or more of the loop, as at 150 broadcasts/s in the standard
  run) and then sends direct messages in batches (as an open-loop sender
  near saturation does), to one recipient and spread over all N as
  ``bench/load.py`` spreads them.

Each phase is measured between two markers: ``os.getppid()`` zeroes
callgrind's counters (``--zero-before=getppid``) and ``os.getpgrp()`` dumps
them (``--dump-before=getpgrp``), so setup, logins and imports are not
counted.  What is counted includes the sender's own reads of its echoes, a
few hundred instructions per operation.

    python bench/profile_fanout.py                # instructions per delivery / per DM
    python bench/profile_fanout.py --profile      # cProfile top entries per phase
    python bench/profile_fanout.py --no-valgrind  # just run the phases (a smoke test)
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import os
import pstats
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reactor.backends import selector as selector_backend  # noqa: E402
from reactor.backends.selector import SelectorServer  # noqa: E402
from reactor.config import ServerConfig  # noqa: E402
from reactor.flow import FloodLimits  # noqa: E402

# The receivers: connect, log in, read and discard until the server closes.
RECEIVERS = r"""
import selectors, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"c%d\n" % i)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
open_ = n
while open_:
    for key, _ in sel.select():
        try:
            data = key.fileobj.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            open_ -= 1
"""

PHASES = ("broadcast", "broadcast-queued", "dm-one", "dm-spread")


def text(kind: bytes, seq: int) -> bytes:
    # The shape of bench/harness/wire.py's payload.
    return b"seq=%c%d t=%d " % (kind[0], seq, 1_700_000_000_000_000_000 + seq)


class Driver:
    def __init__(self, n: int, flood: bool, dm_batch: int) -> None:
        config = ServerConfig(host="127.0.0.1", port=0, max_clients=n + 16)
        if not flood:
            config = replace(config, flood=FloodLimits(enabled=False))
        self.n = n
        self.dm_batch = dm_batch
        self.server = server = SelectorServer(config)
        server.chat.attach(server.call_later, server.call_soon_threadsafe, server.send_at_once)
        server.selector.register(server._wakeup_reader, selector_backend._READ, None)
        server._listen(True)
        self.child = subprocess.Popen(
            [sys.executable, "-c", RECEIVERS, str(server.port), str(n)]
        )
        self.sender = socket.create_connection(("127.0.0.1", server.port))
        self.sender.setblocking(False)
        self.sender.sendall(b"sender\n")
        self.lines_in = 0
        self._until(lambda: len(server.chat.whiteboard) == n + 1)

    def _read_sender(self) -> None:
        while True:
            try:
                data = self.sender.recv(1 << 16)
            except BlockingIOError:
                return
            if not data:
                raise RuntimeError("the server closed the sender")
            self.lines_in += data.count(b"\n")

    def _until(self, done: Callable[[], bool]) -> None:
        while True:
            self._read_sender()
            if done():
                return
            self.server._pass(None)

    def _await_lines(self, count: int) -> None:
        target = self.lines_in + count
        self._until(lambda: self.lines_in >= target)

    def broadcasts(self, count: int, first: int = 0) -> int:
        for seq in range(first, first + count):
            self.sender.sendall(b'broadcast "%s"\n' % text(b"B", seq))
            self._await_lines(1)  # the echo: sent before the fan-out, read after its pass
        self._check_flushed()
        return count * self.n

    def direct(self, count: int, spread: bool, first: int = 0) -> int:
        sent = 0
        while sent < count:
            batch = min(self.dm_batch, count - sent)
            lines = []
            for seq in range(first + sent, first + sent + batch):
                to = (seq * 7919) % self.n if spread else 0
                lines.append(b'chat c%d "%s"\n' % (to, text(b"D", seq)))
            self.sender.sendall(b"".join(lines))
            self._await_lines(batch)
            sent += batch
        return count

    def _check_flushed(self) -> None:
        for connection in self.server.chat.connections:
            if connection.transport.output.size:
                self._until(lambda: not any(
                    c.transport.output.size for c in self.server.chat.connections))
                return

    def close(self) -> None:
        self.sender.close()
        self.server.chat.shutdown()
        for _ in range(50):
            if not self.server.chat.connection_count:
                break
            self.server._pass(None)
        self.child.wait(timeout=30)


def run_phase(driver: Driver, phase: str, count: int, seq: int) -> int:
    """Run ``count`` operations of ``phase``; returns the deliveries made."""
    if phase == "broadcast":
        selector_backend.WRITE_THROUGH_MAX_READY = 4
        return driver.broadcasts(count, seq)
    if phase == "broadcast-queued":
        # Every pass a busy one: everything is queued and sent by _settle.
        selector_backend.WRITE_THROUGH_MAX_READY = -1
        try:
            return driver.broadcasts(count, seq)
        finally:
            selector_backend.WRITE_THROUGH_MAX_READY = 4
    if phase == "dm-one":
        return driver.direct(count, spread=False, first=seq)
    if phase == "dm-spread":
        return driver.direct(count, spread=True, first=seq)
    raise ValueError(phase)


def child_main(args: argparse.Namespace) -> None:
    """The measured process (under valgrind when counting)."""
    driver = Driver(args.n, args.flood == "on", args.dm_batch)
    counts = {"broadcast": args.broadcasts, "broadcast-queued": args.broadcasts,
              "dm-one": args.dms, "dm-spread": args.dms}
    seq = 0
    # Warm up every path (caches, first-time allocations) before measuring.
    for phase in PHASES:
        run_phase(driver, phase, 3 if phase.startswith("broadcast") else 50, seq)
        seq += 1000
    profiles = {}
    for phase in PHASES:
        profiler = cProfile.Profile() if args.profile else None
        os.getppid()  # callgrind: zero the counters
        if profiler:
            profiler.enable()
        done = run_phase(driver, phase, counts[phase], seq)
        if profiler:
            profiler.disable()
        os.getpgrp()  # callgrind: dump the counters
        profiles[phase] = profiler
        print(f"phase {phase} {done}", flush=True)
        seq += 100_000
    driver.close()
    for phase, profiler in profiles.items():
        if profiler is None:
            continue
        print(f"\n=== {phase}: top {args.top} by own time ===")
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(args.top)


def count_main(args: argparse.Namespace) -> None:
    out = Path(tempfile.mkdtemp(prefix="speed-callgrind-"))
    argv = [a for a in sys.argv[1:] if a != "--profile"]
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=yes",
           "--zero-before=getppid", "--dump-before=getpgrp",
           f"--callgrind-out-file={out}/cg.out",
           sys.executable, __file__, "--measured", *argv]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stderr[-3000:])
        raise SystemExit(result.returncode)
    done = [line.split() for line in result.stdout.splitlines() if line.startswith("phase ")]
    dumps = sorted(glob.glob(f"{out}/cg.out.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    totals = []
    for path in dumps:
        body = Path(path).read_text(errors="replace")
        found = re.search(r"^(?:totals|summary):\s*(\d+)", body, re.M)
        totals.append(int(found.group(1)) if found else 0)
    # Dumps come in phase order; the last one (if any) is the final dump at exit.
    print(f"select backend, N={args.n}, flood control {args.flood}, DM batch {args.dm_batch}")
    for (_, phase, count), total in zip(done, totals, strict=False):
        unit = "delivery" if phase.startswith("broadcast") else "DM"
        print(f"{phase:18} {total / int(count):10,.0f} instructions per {unit}"
              f"  ({total:,} for {int(count):,})")
    print(f"(callgrind output in {out})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500, help="receivers (default 500)")
    parser.add_argument("--broadcasts", type=int, default=20, help="per broadcast phase")
    parser.add_argument("--dms", type=int, default=2000, help="per direct-message phase")
    parser.add_argument("--dm-batch", type=int, default=20,
                        help="direct messages the sender writes at once (default 20)")
    parser.add_argument("--flood", choices=("on", "off"), default="off",
                        help="flood control (off in the benchmark, which measures capacity)")
    parser.add_argument("--profile", action="store_true", help="cProfile each phase instead")
    parser.add_argument("--top", type=int, default=18, help="entries per profile")
    parser.add_argument("--no-valgrind", action="store_true", help="run the phases only")
    parser.add_argument("--measured", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measured or args.profile or args.no_valgrind:
        child_main(args)
    else:
        count_main(args)


if __name__ == "__main__":
    main()
