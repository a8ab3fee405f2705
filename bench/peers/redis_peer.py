"""Start and stop a throwaway redis-server: the C anchor and the harness floor.

Redis pub/sub does the same fan-out work as the chat servers (see
``bench.harness.wire`` for how the workloads map onto it), in C, on one thread.
Driven through the very same harness, its numbers are the floor: whatever a
Python server measures beyond Redis is the server's, whatever Redis itself
measures is mostly the harness and the machine.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness.deathsig import wrap
from bench.harness.procstat import free_port, stop_process


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def start_redis(
    max_clients: int, timeout: float = 10.0
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Start redis-server on a free 127.0.0.1 port; return (process, port, workdir).

    Persistence is off (``--save ''``, ``--appendonly no``) and the working
    directory is a temporary one (the caller removes it after stopping Redis),
    so nothing is written next to the repo.  The
    log level is ``warning``, the same as the chat servers run at.  Raises
    RuntimeError if it does not answer PING within ``timeout`` seconds.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        proc = subprocess.Popen(
            wrap(
                [
                    exe,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                    "--loglevel",
                    "warning",
                    "--maxclients",
                    str(max_clients + 64),
                    "--daemonize",
                    "no",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _pings(port):
                return proc, port, workdir
            time.sleep(0.05)
        stop_process(proc)
    shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError("redis-server did not start")


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False
