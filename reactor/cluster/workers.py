"""``--workers N``: N server processes on one port, one chat through Redis.

The parent binds nothing that accepts: each worker opens its own listener on
the same port with ``SO_REUSEPORT``, and the kernel spreads new connections
over them.  The parent supervises: SIGTERM and SIGINT are passed to every
worker and the whole exits 0 once they all have (as one server does);
SIGHUP and SIGUSR1 are passed on; a worker that dies unasked is logged and
started again (its users go offline through the cluster, when its lease runs
out).  A worker dies with its parent (``PR_SET_PDEATHSIG``), so no worker
outlives a supervisor that was killed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from reactor.sockets import listen_address

log = logging.getLogger("reactor")

# A worker that dies this soon after it started is restarted after a growing delay.
QUICK_DEATH = 5.0
RESTART_FIRST, RESTART_MAX = 0.5, 30.0
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In a worker: be sent SIGTERM when the supervisor goes (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # it went before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to the workers' port, with SO_REUSEPORT:
    it turns port 0 into a real port, and holds that port for the workers."""
    family, address = listen_address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    def __init__(self, argv: list[str], count: int, port: int) -> None:
        self.argv = argv
        self.count = count
        self.port = port
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.started_at = [0.0] * count
        self.delay = [RESTART_FIRST] * count
        self.restart_at: list[float | None] = [None] * count
        self.stopping = False
        self.wake = threading.Event()
        self.forward: list[int] = []

    def _command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "reactor", *self.argv,
                "--worker-of", f"{os.getpid()}:{self.port}:{index + 1}"]

    def _start(self, index: int) -> None:
        proc = subprocess.Popen(self._command(index))
        self.procs[index] = proc
        self.started_at[index] = time.monotonic()
        self.restart_at[index] = None

    def signal(self, signum: int, _frame: object = None) -> None:
        """From the signal handler: note it, the loop acts."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        self.forward.append(signum)
        self.wake.set()

    def run(self) -> int:
        for index in range(self.count):
            self._start(index)
        log.info("Started %d workers on port %d", self.count, self.port)
        status = 0
        while True:
            self.wake.wait(0.2)
            self.wake.clear()
            while self.forward:
                signum = self.forward.pop(0)
                for proc in self.procs:
                    if proc is not None and proc.poll() is None:
                        proc.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)
            if self.stopping:
                return self._wait_all(status)
            now = time.monotonic()
            for index, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    self._died(index, proc, now)
                restart = self.restart_at[index]
                if self.procs[index] is None and restart is not None and now >= restart:
                    self._start(index)
                    log.warning("Worker %d restarted (pid %d)", index + 1,
                                self.procs[index].pid)  # type: ignore[union-attr]

    def _died(self, index: int, proc: subprocess.Popen[bytes], now: float) -> None:
        code = proc.returncode
        how = (f"killed by {signal.Signals(-code).name}" if code < 0
               else f"exit status {code}")
        quick = now - self.started_at[index] < QUICK_DEATH
        delay = self.delay[index] if quick else RESTART_FIRST
        self.delay[index] = min(RESTART_MAX, delay * 2) if quick else RESTART_FIRST
        log.error("Worker %d (pid %d) died (%s); its users go offline across the cluster"
                  " when its lease runs out; restarting it in %.1f s",
                  index + 1, proc.pid, how, delay)
        self.procs[index] = None
        self.restart_at[index] = now + delay

    def _wait_all(self, status: int) -> int:
        deadline = time.monotonic() + 15.0
        for proc in self.procs:
            if proc is None:
                continue
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("Worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                code = proc.wait()
            if code != 0:
                status = 1
        log.info("All workers stopped.")
        return status


def supervise(argv: list[str], count: int, host: str, port: int) -> int:
    """Run ``count`` workers with the same arguments; returns the exit status."""
    held = reserve_port(host, port)
    try:
        supervisor = Supervisor(argv, count, int(held.getsockname()[1]))
        previous = {signum: signal.signal(signum, supervisor.signal)
                    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                   signal.SIGUSR1)}
        try:
            return supervisor.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        held.close()
