"""The systems under test: how each one is started, found and stopped.

Every system started here gets a fresh process on a free 127.0.0.1 port, in
its own session (so a Ctrl-C meant for the benchmark does not reach it before
the benchmark has finished with it), and ``Running.stop`` always kills it.
Each is started through ``bench.harness.deathsig`` so that the kernel kills it
if the benchmark dies without stopping it (even by SIGKILL), and ``stop_all``
stops whatever is still running (the benchmark calls it at exit and on signals).

Our backends come from the registry ``reactor.BACKENDS``: a backend added there
is benchmarked as ``python -m reactor --backend NAME`` with no change here.
Beside them runs ``select-tls`` (``TLS``): the primary backend again, its main
port speaking TLS only (``--tls-cert``/``--tls-key``), with a throwaway
certificate made for the run (:func:`make_certificate`) in a temporary
directory that is removed with the server; every harness client of that
system speaks TLS (``Running.tls``).  And ``select-ws`` (``WEB``): the primary
backend with its web listener (``--web-port``), every harness client speaking
WebSocket to it (the ``web`` dialect of ``bench.harness.wire``), as a browser's
page would; the TCP port is open but unused.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import wire
from bench.harness.deathsig import wrap
from bench.harness.procstat import (
    CpuTimes,
    cpu_times,
    free_port,
    listening,
    process_tree,
    rss_bytes,
    stop_process,
)
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
#: One chat through Redis: ``--workers CLUSTER_WORKERS`` of our default backend
#: on one port (SO_REUSEPORT) plus a redis-server of its own (bench/cluster.py).
CLUSTER = "cluster"
CLUSTER_WORKERS = 2
#: The backend the issue's goals are checked for: the registry's first, the default.
PRIMARY: str = BACKENDS[0]
#: The primary backend with TLS on its main port; ``-`` and not ``+``, which
#: joins system names in the names of the output files.
TLS = f"{PRIMARY}-tls"
#: The asyncio backend on uvloop (``--loop uvloop``): measured on request
#: (``--systems``), not by default, to keep the standard run within its time.
UVLOOP = "asyncio-uvloop"
#: Web clients (WebSocket, ``--web-port``) of the primary backend: measured on
#: request (``--systems``), not by default, to keep the standard run within its time.
WEB = f"{PRIMARY}-ws"
#: Our backends, as `python -m reactor --backend NAME` (the TLS and web ones
#: beside the plain one they are compared with), then the two references.
KNOWN: tuple[str, ...] = (
    PRIMARY, TLS, WEB, *BACKENDS[1:], *((UVLOOP,) if "asyncio" in BACKENDS else ()), PEER,
    REDIS, CLUSTER,
)  # fmt: skip
#: What a run measures when ``--systems`` is not given.
DEFAULT: tuple[str, ...] = tuple(name for name in KNOWN if name not in (UVLOOP, WEB))
#: The certificate's key: ECDSA P-256, what trustme makes by default and what
#: certbot has issued by default since 2.0; the openssl fallback makes the same.
CERT_KEY = "ECDSA P-256"

_LIVE: dict[int, Running] = {}  # started and not yet stopped, for stop_all()


def stop_all() -> None:
    """Stop every system this process started and has not stopped (atexit, signals)."""
    for running in list(_LIVE.values()):
        running.stop()


def log_level(name: str) -> str:
    """The log level ``name`` runs at, as the report quotes it."""
    if name in BACKENDS or name in (TLS, UVLOOP, WEB):
        return LOG_LEVEL
    if name == CLUSTER:
        return f"{LOG_LEVEL} (Redis: warning)"
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
    tls: bool = False  # every client speaks TLS (certificates are not verified)
    # Processes that are part of this system (a cluster's redis-server, its
    # other nodes): counted in its CPU and memory, stopped after ``proc``.
    companions: list[subprocess.Popen[bytes]] = field(default_factory=list)
    redis_port: int | None = None  # a cluster's Redis

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def pids(self) -> list[int]:
        """Every live process of this system: ``pid``'s tree and the companions'."""
        roots = [] if self.pid is None else [self.pid]
        roots += [c.pid for c in self.companions if c.poll() is None]
        if not self.companions and self.proc is None:
            return roots  # --target: the pid given, nothing else
        return list(dict.fromkeys(p for root in roots for p in process_tree(root)))

    def cpu_seconds(self) -> float | None:
        """CPU seconds of the whole system so far (None without a pid)."""
        times = self.cpu_times()
        return times.total if times is not None else None

    def cpu_times(self) -> CpuTimes | None:
        """User and system CPU seconds of the whole system so far (None without a pid)."""
        if self.pid is None:
            return None
        values = [cpu_times(p) for p in self.pids()]
        if values[0] is None:
            return None
        present = [v for v in values if v is not None]
        return CpuTimes(sum(v.user for v in present), sum(v.system for v in present))

    def rss_bytes(self) -> int | None:
        """Resident memory of the whole system (None without a pid)."""
        if self.pid is None:
            return None
        values = [rss_bytes(p) for p in self.pids()]
        return sum(v for v in values if v is not None) if values[0] is not None else None

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
        for companion in self.companions:
            stop_process(companion)
        _LIVE.pop(id(self), None)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot run on this machine, or None if it can."""
    if name == REDIS and not redis_available():
        return "redis-server not installed (apt-get install redis-server); Redis column skipped"
    if name == CLUSTER:
        if not redis_available():
            return "redis-server not installed (apt-get install redis-server); cluster skipped"
        try:
            import hiredis  # noqa: F401
            import redis  # noqa: F401
        except ImportError:
            return "the cluster extra is not installed (pip install -e '.[cluster]'); skipped"
    runs_reactor = name in (*BACKENDS, TLS, UVLOOP, WEB, CLUSTER)
    if runs_reactor and not (REPO / "reactor" / "__main__.py").exists():
        return "reactor/__main__.py not found; `python -m reactor` cannot start"
    if name == UVLOOP:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "uvloop not installed (pip install uvloop); skipped"
    if name == WEB:
        try:
            import websockets  # noqa: F401
        except ImportError:
            return "the web extra is not installed (pip install -e '.[web]'); skipped"
    if name == TLS and certificate_maker() is None:
        return "no way to make a certificate (pip install trustme, or install openssl)"
    return None


def certificate_maker() -> str | None:
    """``trustme`` if importable, else ``openssl`` if on PATH, else None."""
    try:
        import trustme  # noqa: F401
    except ImportError:
        return "openssl" if shutil.which("openssl") else None
    return "trustme"


def make_certificate(workdir: Path) -> tuple[Path, Path, str]:
    """A throwaway certificate for 127.0.0.1 and its key in ``workdir``: (cert, key, how).

    With trustme: a leaf issued by a throwaway CA; else a self-signed one from
    the openssl command line.  Either way an ECDSA P-256 key (``CERT_KEY``).
    The harness does not verify it, so which CA signed it does not matter.
    """
    cert, key = workdir / "server.pem", workdir / "server.key"
    how = certificate_maker()
    if how == "trustme":
        import trustme

        leaf = trustme.CA(key_type=trustme.KeyType.ECDSA).issue_cert(
            "127.0.0.1", "localhost", key_type=trustme.KeyType.ECDSA
        )
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
    elif how == "openssl":
        done = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(cert)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"openssl could not make a certificate: {done.stderr[-300:]}")
    else:
        raise RuntimeError("no way to make a certificate (pip install trustme, or openssl)")
    key.chmod(0o600)
    return cert, key, how


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
    if name == CLUSTER:
        return start_cluster(max_clients, workers=CLUSTER_WORKERS)
    workdir = None
    if name in BACKENDS or name in (TLS, UVLOOP, WEB):
        # The benchmark measures capacity: one sender offers up to 40,000 direct
        # messages a second, far past what flood control lets one client send
        # (bench/flood.py measures flood control itself).
        backend = {TLS: PRIMARY, UVLOOP: "asyncio", WEB: PRIMARY}.get(name, name)
        cmd = [sys.executable, "-m", "reactor", "--backend", backend, "--flood-control", "off"]
        if name == UVLOOP:
            cmd += ["--loop", "uvloop"]
        if name == TLS:
            workdir = Path(tempfile.mkdtemp(prefix="bench-tls-"))
            try:
                cert, key, _how = make_certificate(workdir)
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]  # TLS on the main port
    elif name == PEER:
        cmd = [sys.executable, str(YARDSTICK)]
    else:
        raise ValueError(f"unknown system {name!r}; choose from {', '.join(KNOWN)}")
    cmd += ["--host", "127.0.0.1", "--log-level", LOG_LEVEL, "--max-clients", str(max_clients)]
    error = RuntimeError(f"{name} did not start")
    try:
        for _attempt in range(3):  # the free port may be taken between probe and bind
            try:
                if name == WEB:
                    running = _start_web(name, cmd)
                else:
                    running = _start_listening(name, [*cmd, "--port", str(free_port())])
            except RuntimeError as exc:
                error = exc
                continue
            running.tls, running.workdir = name == TLS, workdir
            workdir = None  # the running system removes it on stop
            return running
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    raise error


def _start_listening(name: str, cmd: list[str], timeout: float = 15.0) -> Running:
    """Run ``cmd`` and wait until it listens on the port given in ``cmd``.

    Ready means either its ``Listening on port N`` line appeared, or the kernel
    shows the port in LISTEN state: the line is logged at INFO, so a server
    run at WARNING may never print it, and probing by connecting would show up
    in the server as a client.  Output goes to a file rather than a pipe: a pipe
    nobody drains would block a server that logs at the worst moment.
    """
    return _wait_listening(_spawn(name, cmd), timeout)


def _start_web(name: str, cmd: list[str], timeout: float = 15.0) -> Running:
    """``cmd`` with a TCP port and a web port; returned once both listen, as
    the web system: its clients connect to the web port and speak WebSocket."""
    web_port = free_port()
    running = _start_listening(
        name, [*cmd, "--web-port", str(web_port), "--port", str(free_port())], timeout
    )
    deadline = time.monotonic() + timeout
    while not listening(web_port):
        if time.monotonic() > deadline or not running.alive():
            running.stop()
            raise RuntimeError(f"{name}: no web listener: {running.log_tail()!r}")
        time.sleep(0.02)
    running.port, running.dialect = web_port, "web"
    return running


def _spawn(name: str, cmd: list[str]) -> Running:
    """Start ``cmd`` (with ``--port P``) from this thread: the kernel kills it
    when the thread that started it ends (``PR_SET_PDEATHSIG``)."""
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
    return running


def _wait_listening(running: Running, timeout: float = 15.0) -> Running:
    """``running`` once it listens (see ``_start_listening``); stopped if it never does."""
    assert running.proc is not None and running.log_path is not None
    port, proc, log_path = running.port, running.proc, running.log_path
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
        raise RuntimeError(f"{running.name} did not start listening: {running.log_tail()!r}")
    except BaseException:
        running.stop()
        raise


def server_command(backend: str, max_clients: int) -> list[str]:
    """``python -m reactor`` as the benchmark runs it (flood control off, see ``start``)."""
    return [
        *(sys.executable, "-m", "reactor", "--backend", backend, "--flood-control", "off"),
        *("--host", "127.0.0.1", "--log-level", LOG_LEVEL, "--max-clients", str(max_clients)),
    ]


def cluster_nodes(redis_port: int) -> int:
    """How many nodes hold a lease in the cluster of that Redis (0 if it cannot tell)."""
    import redis

    try:
        with redis.Redis(port=redis_port, socket_timeout=2) as r:
            return int(r.zcard("{chat}:nodes"))
    except redis.RedisError:
        return 0


def start_member(
    redis_port: int,
    max_clients: int,
    workers: int | None = None,
    expect_nodes: int = 1,
    backend: str = PRIMARY,
    extra: tuple[str, ...] = (),
) -> Running:
    """One member of the cluster on ``redis_port``: a node (``workers`` None) or a
    supervisor of ``workers`` nodes on one port.  Ready once it listens and
    ``expect_nodes`` nodes in all hold a lease in Redis."""
    [running] = start_members(redis_port, max_clients, 1, workers, expect_nodes, backend, extra)
    return running


def start_members(
    redis_port: int,
    max_clients: int,
    count: int,
    workers: int | None = None,
    expect_nodes: int | None = None,
    backend: str = PRIMARY,
    extra: tuple[str, ...] = (),
) -> list[Running]:
    """``count`` members (see ``start_member``) started at once, each on its own
    port; ready once ``expect_nodes`` (default: all of theirs) hold a lease."""
    cmd = server_command(backend, max_clients)
    cmd += ["--cluster", f"redis://127.0.0.1:{redis_port}", *extra]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    expect = expect_nodes if expect_nodes is not None else count * (workers or 1)
    error = RuntimeError("cluster member did not start")
    for _attempt in range(3):  # a free port may be taken between probe and bind
        members = [_spawn(CLUSTER, [*cmd, "--port", str(free_port())]) for _ in range(count)]
        try:
            for member in members:
                _wait_listening(member)
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline and all(m.alive() for m in members):
                if cluster_nodes(redis_port) >= expect:
                    time.sleep(0.2)  # every worker's listener is open by now
                    for member in members:
                        member.redis_port = redis_port
                    return members
                time.sleep(0.05)
            error = RuntimeError(f"cluster member did not join: {members[0].log_tail()!r}")
        except RuntimeError as exc:
            error = exc
        for member in members:
            member.stop()
    raise error


def start_cluster(max_clients: int, workers: int | None = CLUSTER_WORKERS) -> Running:
    """A redis-server and one cluster member on it (see ``start_member``); stopping
    the member stops the redis-server too."""
    proc, port, workdir = start_redis(max_clients)
    try:
        running = start_member(port, max_clients, workers, expect_nodes=workers or 1)
    except BaseException:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    running.companions.append(proc)
    running.workdir = workdir
    return running
