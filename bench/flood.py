"""Flood control, measured: one flooder, N users online, another pair's DM latency.

    python bench/flood.py                 # every backend, N = 1000, flood control on and off
    python bench/flood.py -n 300 --samples 100 --backends select

For each backend in the registry this starts ``python -m reactor`` three times
(on a free port, log level WARNING): with no flooder (the baseline), with one
client broadcasting as fast as TCP takes it and flood control on (the
default), and the same with ``--flood-control off``.  N - 3 idle users are
online and read everything (in a child process, with epoll, discarding), so
every broadcast is N - 1 deliveries.  Meanwhile Alice sends Bob a direct
message every 50 ms and the time until Bob has it is recorded.  The report
gives p50/p99 of that latency, and how many broadcasts a second the server
handled for the flooder (echoes it received).

Everything runs on loopback and every child ends with the script.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reactor import BACKENDS  # noqa: E402


@contextlib.contextmanager
def server(backend: str, *args: str) -> Iterator[int]:
    with server_process(backend, *args) as (port, _):
        yield port


@contextlib.contextmanager
def server_process(backend: str, *args: str) -> Iterator[tuple[int, int]]:
    """``python -m reactor`` on a free port, stopped at the end; yields (port, pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "reactor", "--backend", backend, "--host", "127.0.0.1",
         "--port", "0", "--log-level", "WARNING", "--max-clients", "5000", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"Listening on port (\d+)", line)
            if found:
                break
        else:
            raise RuntimeError("the server did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
        yield int(found.group(1)), proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def login(port: int, name: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(name.encode() + b"\n")
    wait_for_line(sock, f"<User {name} is online.>".encode())
    return sock


def wait_for_line(sock: socket.socket, wanted: bytes, timeout: float = 30.0) -> None:
    buffer = b""
    deadline = time.monotonic() + timeout
    while wanted not in buffer:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed while waiting for {wanted!r}")
        buffer = buffer[-len(wanted):] + chunk


def idle_crowd(port: int, count: int, ready: int) -> None:
    """Child process: log ``count`` users in, then read and discard forever."""
    socks = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"idle{index}\n".encode())
        sock.setblocking(False)
        socks.append(sock)
    os.write(ready, b"x")
    poller = select.epoll()
    for sock in socks:
        poller.register(sock.fileno(), select.EPOLLIN)
    by_fd = {sock.fileno(): sock for sock in socks}
    while True:
        for fd, _ in poller.poll():
            try:
                if not by_fd[fd].recv(1 << 20):
                    poller.unregister(fd)
            except BlockingIOError:
                pass


def run(backend: str, n: int, samples: int, flood: bool, *args: str) -> dict[str, float]:
    with server(backend, *args) as port:
        read_end, write_end = os.pipe()
        crowd = os.fork()
        if crowd == 0:
            os.close(read_end)
            try:
                idle_crowd(port, n - 3, write_end)
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            os.read(read_end, 1)
            alice, bob = login(port, "Alice"), login(port, "Bob")
            flooder = login(port, "Flooder") if flood else None
            stop = threading.Event()
            sent = [0]

            def pour() -> None:
                assert flooder is not None
                line = b'broadcast "flood flood flood flood flood"\n' * 64
                flooder.setblocking(False)
                while not stop.is_set():
                    with contextlib.suppress(BlockingIOError):
                        while chunk := flooder.recv(1 << 20):
                            sent[0] += chunk.count(b"<To everyone>")  # handled, not just sent
                    try:
                        flooder.send(line)
                    except BlockingIOError:
                        select.select([flooder], [flooder], [], 0.05)

            pourer = threading.Thread(target=pour, daemon=True)
            if flood:
                pourer.start()
                time.sleep(1.0)  # let the flood build up (a benchmark's warm-up)
            drained = threading.Thread(target=_discard, args=(alice, stop), daemon=True)
            drained.start()
            latencies = []
            started = time.monotonic()
            for index in range(samples):
                t0 = time.perf_counter()
                alice.sendall(f'chat Bob "probe {index}"\n'.encode())
                wait_for_line(bob, f'"probe {index}">'.encode())
                latencies.append((time.perf_counter() - t0) * 1000)
                time.sleep(max(0.0, started + (index + 1) * 0.05 - time.monotonic()))
            elapsed = time.monotonic() - started
            stop.set()
            latencies.sort()
            return {
                "p50": statistics.median(latencies),
                "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                "flood/s": sent[0] / elapsed if flood else 0.0,
            }
        finally:
            os.kill(crowd, signal.SIGKILL)
            os.waitpid(crowd, 0)
            os.close(read_end)


def _discard(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            if not sock.recv(65536):
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="users online (default 1000)")
    parser.add_argument("--samples", type=int, default=200, help="DM probes per run")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    options = parser.parse_args()
    cases = [("no flooder", False, ()), ("flooder, flood control on", True, ()),
             ("flooder, flood control off", True, ("--flood-control", "off"))]
    print(f"N = {options.n} online, DM Alice -> Bob every 50 ms, {options.samples} probes")
    print(f"{'backend':<9} {'case':<28} {'DM p50 ms':>10} {'DM p99 ms':>10} {'flood/s':>9}")
    for backend in options.backends.split(","):
        for label, flood, args in cases:
            result = run(backend, options.n, options.samples, flood, *args)
            print(f"{backend:<9} {label:<28} {result['p50']:>10.2f} {result['p99']:>10.2f}"
                  f" {result['flood/s']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
