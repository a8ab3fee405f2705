"""The systems under test: how each one is started, found and stopped.

Every system started here gets a fresh process on a free 127.0.0.1 port, in
its own session (so a Ctrl-C meant for the benchmark does not reach it before
the benchmark has finished with it), and ``Running.stop`` always kills it.
Each is started through ``bench.harness.deathsig`` so that the kernel kills it
if the benchmark dies without stopping it (even by SIGKILL), and ``stop_all``
stops whatever is still running (the benchmark calls it at exit and on signals).

Our backends come from the registry ``reactor.BACKENDS``: a backend added there
is benchmarked as ``python -m reactor --backend NAME`` with no change here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import wire
from bench.harness.deathsig import wrap
from bench.harness.procstat import free_port, listening, stop_process
from bench.peers.redis_peer import redis_available, start_redis

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `reactor` is importable from the repository root
    sys.path.insert(0, str(REPO))

from reactor import BACKENDS  # noqa: E402  (the registry: every name is one of our backends)

YARDSTICK = REPO / "bench" / "peers" / "asyncio_server.py"
LISTENING = re.compile(rb"Listening on port (\d+)")
LOG_LEVEL = "WARNING"
#: The asyncio yardstick (bench/peers/asyncio_server.py): named apart from any
#: backend of ours, so a backend called ``asyncio`` never clashes with it.
PEER = "asyncio-peer"
REDIS = "redis"
TARGET = "target"
#: Our backends, as `python -m reactor --backend NAME`, then the two references.
KNOWN: tuple[str, ...] = (*BACKENDS, PEER, REDIS)
#: The backend the issue's goals are checked for: the registry's first, the default.
PRIMARY: str = BACKENDS[0]

_LIVE: dict[int, Running] = {}  # started and not yet stopped, for stop_all()


def stop_all() -> None:
    """Stop every system this process started and has not stopped (atexit, signals)."""
    for running in list(_LIVE.values()):
        running.stop()


def log_level(name: str) -> str:
    """The log level ``name`` runs at, as the report quotes it."""
    if name in BACKENDS:
        return LOG_LEVEL
    return {PEER: "none (logs nothing)", REDIS: "warning"}.get(name, "unknown (already running)")


@dataclass
class Running:
    """A system ready for clients."""

    name: str
    dialect: wire.Dialect
    host: str
    port: int
    pid: int | None  # None for --target without --target-pid: no CPU or memory figures
    log_level: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    workdir: Path | None = None  # removed on stop

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def log_tail(self, limit: int = 600) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            _LIVE.pop(id(self), None)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot run on this machine, or None if it can."""
    if name == REDIS and not redis_available():
        return "redis-server not installed (apt-get install redis-server); Redis column skipped"
    if name in BACKENDS and not (REPO / "reactor" / "__main__.py").exists():
        return "reactor/__main__.py not found; `python -m reactor` cannot start"
    return None


def start(
    name: str,
    max_clients: int,
    target: str | None = None,
    target_pid: int | None = None,
    target_dialect: wire.Dialect = "chat",
) -> Running:
    """Start system ``name`` (or attach to ``--target``) and return it listening."""
    if name == TARGET:
        assert target is not None
        host, _, port = target.rpartition(":")
        return Running(
            TARGET,
            target_dialect,
            host or "127.0.0.1",
            int(port),
            target_pid,
            "unknown (already running)",
        )
    if name == REDIS:
        proc, port, workdir = start_redis(max_clients)
        running = Running(
            REDIS, "redis", "127.0.0.1", port, proc.pid, "warning", proc, workdir=workdir
        )
        _LIVE[id(running)] = running
        return running
    if name in BACKENDS:
        # The benchmark measures capacity: one sender offers up to 40,000 direct
        # messages a second, far past what flood control lets one client send
        # (bench/flood.py measures flood control itself).
        cmd = [sys.executable, "-m", "reactor", "--backend", name, "--flood-control", "off"]
    elif name == PEER:
        cmd = [sys.executable, str(YARDSTICK)]
    else:
        raise ValueError(f"unknown system {name!r}; choose from {', '.join(KNOWN)}")
    cmd += ["--host", "127.0.0.1", "--log-level", LOG_LEVEL, "--max-clients", str(max_clients)]
    error = RuntimeError(f"{name} did not start")
    for _attempt in range(3):  # the free port may be taken between probe and bind
        try:
            return _start_listening(name, [*cmd, "--port", str(free_port())])
        except RuntimeError as exc:
            error = exc
    raise error


def _start_listening(name: str, cmd: list[str], timeout: float = 15.0) -> Running:
    """Run ``cmd`` and wait until it listens on the port given in ``cmd``.

    Ready means either its ``Listening on port N`` line appeared, or the kernel
    shows the port in LISTEN state: the line is logged at INFO, so a server
    run at WARNING may never print it, and probing by connecting would show up
    in the server as a client.  Output goes to a file rather than a pipe: a pipe
    nobody drains would block a server that logs at the worst moment.
    """
    port = int(cmd[cmd.index("--port") + 1])
    with tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        proc = subprocess.Popen(
            wrap(cmd),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Running(name, "chat", "127.0.0.1", port, proc.pid, log_level(name), proc, log_path)
    _LIVE[id(running)] = running
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            match = LISTENING.search(log_path.read_bytes())
            if match or listening(port):
                running.port = int(match.group(1)) if match else port
                return running
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{name} did not start listening: {running.log_tail()!r}")
    except BaseException:
        running.stop()
        raise
