"""Where the select backend's time goes: instruction counts and a profile.

Wall-clock timings on a shared, loaded machine say little, so this driver
counts instructions instead (``valgrind --tool=callgrind``), and uses
cProfile for the breakdown by function.  It runs the real select backend in
this process over real loopback sockets:

* N receivers (500 by default) logged in from a child process that reads and
  discards everything (it runs natively: valgrind does not follow ``exec``);
* one sender in this process, which broadcasts (one broadcast at a time,
  each a pass or more of the loop, as at 150 broadcasts/s in the standard
  run; then two per write, as a server that fell behind reads them there:
  the first is queued, the second joins it, one send per recipient; then
  eight per write, as a server further behind reads them) and
  then sends direct messages in batches (as an open-loop sender
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
    python bench/profile_fanout.py --tls          # the same over TLS (select-tls)
    python bench/profile_fanout.py --web          # receivers over WebSocket (select-ws)

With ``--tls`` the server's port speaks TLS, with a throwaway certificate
(``bench.systems.make_certificate``), and so do the receivers and the
sender.  The receivers complete the handshake and log in through ``ssl``,
then read the raw socket and discard the ciphertext (nothing to decrypt
for a receiver that drops everything); the sender is a memory-BIO client in
this process, so its encryption of each line and decryption of its echoes
are counted too: per delivery of a broadcast, a few instructions.

With ``--web`` the receivers log in over WebSocket on a web port
(``--web-port``), as browsers; the sender stays on the plain port, so the
difference from the plain run is what a delivery to a browser costs.
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import os
import pstats
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.systems import make_certificate  # noqa: E402
from reactor.app import build_chat  # noqa: E402
from reactor.backends import selector as selector_backend  # noqa: E402
from reactor.backends.selector import SelectorServer  # noqa: E402
from reactor.config import ServerConfig  # noqa: E402
from reactor.flow import FloodLimits  # noqa: E402

# The receivers: connect, log in, read and discard until the server closes.
# With TLS (a third argument), each logs in through ssl and then reads the
# raw socket (a duplicate of its descriptor): the ciphertext is discarded.
# With "web" instead, each opens a WebSocket and logs in with one masked
# text frame (mask key 0: the payload as it is).
RECEIVERS = r"""
import os, selectors, socket, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
tls, web = sys.argv[3:] == ["tls"], sys.argv[3:] == ["web"]
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n" % port)
if tls:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    wrapped = []  # kept open: closing one would send its close_notify
sel = selectors.DefaultSelector()
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if tls:
        wrapped.append(context.wrap_socket(s))
        wrapped[-1].sendall(b"c%d\n" % i)
        s = socket.socket(fileno=os.dup(wrapped[-1].fileno()))
    elif web:
        s.sendall(UPGRADE)
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            answer += s.recv(1)
        name = b"c%d" % i
        s.sendall(bytes((0x81, 0x80 | len(name), 0, 0, 0, 0)) + name)
    else:
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

class TLSSender:
    """The sender over TLS, in this process: a memory-BIO client on a
    non-blocking socket, with the three calls the driver makes of a socket."""

    def __init__(self, sock: socket.socket, pump: Callable[[], None]) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out)
        while True:  # the handshake, the server's loop run meanwhile
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                pump()
                self._fill()

    def _flush(self) -> None:
        if self._out.pending:
            self.sock.setblocking(True)
            self.sock.sendall(self._out.read())
            self.sock.setblocking(False)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return False
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        return True

    def sendall(self, data: bytes) -> None:
        self._ssl.write(data)
        self._flush()

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self._ssl.read(size)
            except ssl.SSLWantReadError:
                if not self._fill():
                    raise BlockingIOError from None
            except ssl.SSLZeroReturnError:
                return b""

    def close(self) -> None:
        self.sock.close()


PHASES = ("broadcast", "broadcast-queued", "broadcast-pairs", "broadcast-eights", "dm-one",
          "dm-spread")


def text(kind: bytes, seq: int) -> bytes:
    # The shape of bench/harness/wire.py's payload.
    return b"seq=%c%d t=%d " % (kind[0], seq, 1_700_000_000_000_000_000 + seq)


class Driver:
    def __init__(self, n: int, flood: bool, dm_batch: int, tls: bool, web: bool) -> None:
        config = ServerConfig(host="127.0.0.1", port=0, max_clients=n + 16,
                              web_port=0 if web else None)
        site = None
        if web:
            from reactor.web import wire
            from reactor.web.http import Site

            site = Site()
            wire.PING_INTERVAL = 1e6  # the receivers answer no pings: none are sent
        if not flood:
            config = replace(config, flood=FloodLimits(enabled=False))
        self.workdir: Path | None = None
        if tls:
            self.workdir = Path(tempfile.mkdtemp(prefix="profile-tls-"))
            cert, key, _ = make_certificate(self.workdir)
            config = replace(config, tls_cert=str(cert), tls_key=str(key))
        self.n = n
        self.dm_batch = dm_batch
        self.server = server = SelectorServer(config, build_chat(config), web=site)
        server.chat.attach(server.call_later, server.call_soon_threadsafe, server.send_at_once)
        server.selector.register(server._wakeup_reader, selector_backend._READ, None)
        server._listen(True)
        receivers_port, mode = (server.web_port, ["web"]) if web else (server.port, [])
        if tls:
            mode = ["tls"]
        assert receivers_port is not None
        self.child = subprocess.Popen(
            [sys.executable, "-c", RECEIVERS, str(receivers_port), str(n), *mode]
        )
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setblocking(False)
        self.sender: socket.socket | TLSSender = (
            TLSSender(sock, lambda: server._pass(None)) if tls else sock
        )
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

    def broadcasts(self, count: int, first: int = 0, per_write: int = 1) -> int:
        for seq in range(first, first + count, per_write):
            lines = min(per_write, first + count - seq)
            self.sender.sendall(b"".join(b'broadcast "%s"\n' % text(b"B", seq + i)
                                         for i in range(lines)))
            # The echoes: sent before the fan-outs, read after their pass.
            self._await_lines(lines)
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
        if self.workdir is not None:
            shutil.rmtree(self.workdir)  # the throwaway key goes with it


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
    if phase == "broadcast-pairs":
        return driver.broadcasts(count, seq, per_write=2)
    if phase == "broadcast-eights":
        return driver.broadcasts(count, seq, per_write=8)
    if phase == "dm-one":
        return driver.direct(count, spread=False, first=seq)
    if phase == "dm-spread":
        return driver.direct(count, spread=True, first=seq)
    raise ValueError(phase)


def child_main(args: argparse.Namespace) -> None:
    """The measured process (under valgrind when counting)."""
    driver = Driver(args.n, args.flood == "on", args.dm_batch, args.tls, args.web)
    counts = {"broadcast": args.broadcasts, "broadcast-queued": args.broadcasts,
              "broadcast-pairs": args.broadcasts, "broadcast-eights": args.broadcasts,
              "dm-one": args.dms, "dm-spread": args.dms}
    seq = 0
    # Warm up every path (caches, first-time allocations) before measuring.
    for phase in PHASES:
        run_phase(driver, phase, 4 if phase.startswith("broadcast") else 50, seq)
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
    over = " over TLS" if args.tls else " (receivers over WebSocket)" if args.web else ""
    print(f"select backend{over}, N={args.n}, "
          f"flood control {args.flood}, DM batch {args.dm_batch}")
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
    wire = parser.add_mutually_exclusive_group()
    wire.add_argument("--tls", action="store_true",
                      help="the server's port, the receivers and the sender speak TLS")
    wire.add_argument("--web", action="store_true",
                      help="the receivers are browsers: WebSocket on a web port")
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
