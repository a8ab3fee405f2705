"""Helpers for the cluster tests: a real ``redis-server``, cluster nodes in this
process or as child processes, and clients spread over the nodes.

Every test gets its own ``redis-server`` on a free port (``--save ''
--appendonly no``, so nothing reaches the disk), stopped at the end: starting
one takes a few milliseconds, and a fresh one per test means no state leaks
from one test to the next (nodes of a previous test, remembered names, an
epoch).  Without ``redis-server`` or the ``redis`` package the tests are
skipped, saying which is missing.

As in ``support.py``, nothing sleeps to synchronise: a node is ready once a
probe login on it succeeds (a node that has not yet registered with Redis
answers ``<Chat service unavailable: ...>``), and every other wait is for a
line, a closed socket or a condition, with a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from reactor import BACKENDS, make_server
from reactor.backends.base import Server
from reactor.config import ClusterConfig, FloodLimits
from tests.faults import ServerProcess, server_process
from tests.support import (
    DEFAULT_TIMEOUT,
    TEST_CONFIG,
    LineClient,
    running_server,
    without_log_time,
)

REPO = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server")

# Short leases keep the failure tests fast: a dead node is reaped within
# about lease + 2 renewals (lease / 6 each).  Not shorter: a node's Redis
# calls time out after a third of it, and on a loaded machine (the suite runs
# on several workers) a shorter time-out fails calls that are merely late.
LEASE = 1.2
NO_FLOOD_CONTROL = FloodLimits(enabled=False)

# Every backend as a pair of nodes of that backend, and a mixed pair.
PAIRS: list[tuple[str, str]] = [(b, b) for b in BACKENDS] + [("select", "threads")]
PAIR_IDS = [f"{a}+{b}" if a != b else a for a, b in PAIRS]

UNAVAILABLE_PREFIX = "<Chat service unavailable: "


def reap_deadline(lease: float, margin: float = 1.5) -> float:
    """Seconds within which a dead node's users must be announced offline."""
    return lease + 2 * (lease / 6) + margin


def require_redis() -> None:
    """Skip the test, saying why, if the cluster cannot be tested here."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis package is not installed (pip install -e '.[cluster]')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def freeze(pid: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """SIGSTOP ``pid`` and wait until every one of its threads has stopped.

    ``kill`` returns once the signal is queued: a multi-threaded process
    stops only when one of its threads has been scheduled to take the
    signal and has stopped the others, which on a loaded machine can be
    milliseconds later -- time in which its other threads still read and
    send.  A test that acts "while frozen" must wait for the stop itself.
    Without ``/proc`` (not Linux) the stop cannot be watched: kill alone.
    """
    os.kill(pid, signal.SIGSTOP)
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return
    deadline = time.monotonic() + timeout
    while not _all_stopped(tasks):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop within {timeout} s")
        time.sleep(0.001)  # a poll interval, not a synchronisation


def _all_stopped(tasks: Path) -> bool:
    for stat in tasks.glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # a thread that has just exited
        # The state follows the command name, which may hold spaces or ")".
        if text[text.rindex(")") + 2] not in "TtZX":
            return False
    return True


# -- redis-server ---------------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` child on 127.0.0.1, which a test may pause, kill and
    start again (empty) on the same port.  With ``tls`` (a CA's certificate,
    and a certificate and key it issued for 127.0.0.1), it speaks TLS only."""

    def __init__(self, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.tls = tls

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}?ssl_ca_certs={self.tls[0]}"
        return f"redis://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> None:
        """Start (on ``port``, or a free one), and wait until it answers."""
        for _attempt in range(5):
            self.port = port or free_port()
            listen = ["--port", str(self.port)]
            if self.tls is not None:
                ca, cert, key = self.tls
                listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                          str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                          "--tls-auth-clients", "no"]
            self.process = subprocess.Popen(
                [REDIS_SERVER or "redis-server", *listen, "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--enable-debug-command", "local",
                 "--protected-mode", "no", "--daemonize", "no", "--logfile", ""],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + DEFAULT_TIMEOUT
            while self.process.poll() is None and time.monotonic() < deadline:
                if self._answers():
                    return
                time.sleep(0.005)  # a poll interval, not a synchronisation
            self._reap()  # (the port was taken: try again, another or the same)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as plain:
                sock = plain
                if self.tls is not None:
                    context = ssl.create_default_context(cafile=str(self.tls[0]))
                    sock = context.wrap_socket(plain, server_hostname="127.0.0.1")
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def client(self, timeout: float = 5.0) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=timeout)

    def command(self, *args: object) -> Any:
        client = self.client()
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def flush(self) -> None:
        self.command("FLUSHALL")

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""
        assert self.process is not None
        freeze(self.process.pid)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL: every key is lost (nothing is saved)."""
        self._reap()

    def restart_empty(self) -> None:
        """Kill it and start a new, empty one on the same port."""
        port = self.port
        self._reap()
        self.start(port)

    def _reap(self) -> None:
        process = self.process
        if process is None:
            return
        if self.paused:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
            self.paused = False
        if process.poll() is None:
            process.kill()
        process.wait(10)

    def stop(self) -> None:
        self._reap()
        self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test, killed at its end."""
    require_redis()
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_tls_server(tmp_path: Path) -> Iterator[RedisServer]:
    """The same, speaking TLS only, with a certificate made by trustme."""
    require_redis()
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    files = (tmp_path / "ca.pem", tmp_path / "redis.pem", tmp_path / "redis.key")
    ca.cert_pem.write_to_path(str(files[0]))
    issued.cert_chain_pems[0].write_to_path(str(files[1]))
    issued.private_key_pem.write_to_path(str(files[2]))
    server = RedisServer(tls=files)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Client(LineClient):
    """A LineClient whose failed expectations say what came instead; with
    ``rcvbuf``, its receive buffer is set before connecting (so that the
    kernel never grows it: a client that stops reading is noticed soon)."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.history: list[str] = []  # every line read, for checks after the fact
        if rcvbuf is None:
            super().__init__(port)
            return
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(DEFAULT_TIMEOUT)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self._buffer = bytearray()
        self.closed_by_server = False

    def read_line(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        line = super().read_line(timeout)
        self.history.append(line)
        return line

    def expect(self, *lines: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        for index, expected in enumerate(lines):
            line = self.read_line(timeout)
            assert line == expected, (
                f"expected {expected!r} (line {index + 1} of {len(lines)}), got {line!r}")


# -- nodes --------------------------------------------------------------------------------

_probe_numbers = itertools.count(1)


def login(port: int, name: str, timeout: float = DEFAULT_TIMEOUT,
          *, client: Client | None = None) -> Client:
    """Log in as ``name`` on the node at ``port``, trying again while the node
    answers that the chat service is unavailable (not yet registered, or
    Redis out of reach).  Returns once the user's own online notice arrived.
    Any other answer fails the test."""
    client = client or Client(port)
    deadline = time.monotonic() + timeout
    try:
        while True:
            client.send(name)
            line = client.read_line(max(0.01, deadline - time.monotonic()))
            if line == f"<User {name} is online.>":
                return client
            if not line.startswith(UNAVAILABLE_PREFIX) or time.monotonic() > deadline:
                raise AssertionError(f"logging in as {name}: {line!r}")
            time.sleep(0.02)  # a retry interval, not a synchronisation
    except BaseException:
        client.close()
        raise


def wait_ready(port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Until a probe can log in on this node (it has joined the cluster);
    the probe then leaves."""
    name = f"probe{next(_probe_numbers)}"
    with login(port, name, timeout) as probe:
        probe.send("bye")
        probe.expect(f"<User {name} is offline.>")
        probe.expect_closed()


def cluster_config(url: str, lease: float = LEASE, *, patient: bool = False) -> ClusterConfig:
    return (PatientClusterConfig if patient else ClusterConfig)(url, lease=lease)


@dataclass(frozen=True, slots=True)
class PatientClusterConfig(ClusterConfig):
    """For a test of order or counts under load, not of Redis failing: a node
    gives a Redis call half a lease, not a second at most, before counting
    Redis out of reach (and Redis drops a call that waited half that).  With
    other tests running beside it on two cores, a node can be kept from the
    CPU for longer than a second, which is not what such a test is about."""

    @property
    def command_timeout(self) -> float:
        return self.lease / 2


@contextlib.contextmanager
def node(backend: str, url: str, lease: float = LEASE, *, ready: bool = True,
         patient: bool = False, **overrides: object) -> Iterator[Server]:
    """An in-process cluster node, joined (``ready``) before it is yielded;
    ``patient``: see :class:`PatientClusterConfig`."""
    overrides.setdefault("close_linger", 0.2)
    with running_server(backend, cluster=cluster_config(url, lease, patient=patient),
                        **overrides) as server:
        if ready:
            wait_ready(server.port)
        yield server


@contextlib.contextmanager
def nodes(backends: Sequence[str], url: str, lease: float = LEASE, *, uvloop: bool = False,
          patient: bool = False, **overrides: object) -> Iterator[list[Server]]:
    """Several in-process nodes of one cluster, all joined; stopped together
    at the end (each one's stop waits for its Redis threads).  With
    ``uvloop``, the asyncio nodes run on it; ``patient``: see
    :class:`PatientClusterConfig`."""
    overrides.setdefault("close_linger", 0.2)
    config = replace(TEST_CONFIG, cluster=cluster_config(url, lease, patient=patient),
                     **overrides)
    servers: list[Server] = []
    threads: list[threading.Thread] = []
    try:
        for backend in backends:
            options = {"loop": "uvloop"} if uvloop and backend == "asyncio" else {}
            server = make_server(config, backend, **options)
            servers.append(server)
            thread = threading.Thread(target=server.serve_forever, name=f"server-{backend}",
                                      daemon=True)
            thread.start()
            threads.append(thread)
        for server in servers:
            wait_ready(server.port)
        yield servers
    finally:
        for server in servers:
            server.stop()
        for thread in threads:
            thread.join(timeout=15)
        assert not any(thread.is_alive() for thread in threads), "a node did not stop"


@contextlib.contextmanager
def node_process(backend: str, url: str, lease: float = LEASE, *args: str,
                 ready: bool = True, log_level: str = "WARNING") -> Iterator[ServerProcess]:
    """A cluster node as a child process (``python -m reactor --cluster``)."""
    with server_process(backend, "--cluster", url, "--cluster-lease", f"{lease:g}", *args,
                        log_level=log_level) as server:
        if ready:
            wait_ready(server.port)
        yield server


def ensure_continued(process: ServerProcess) -> None:
    """SIGCONT, so that a stopped child can be cleaned up (SIGTERM waits)."""
    if process.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)


# -- clients on several nodes ----------------------------------------------------------


class ClusterClients:
    """Clients of several nodes, all closed at the end."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self._all: list[Client] = []

    def connect(self, node_index: int, rcvbuf: int | None = None) -> Client:
        client = Client(self.ports[node_index], rcvbuf)
        self._all.append(client)
        return client

    def login(self, node_index: int, name: str, rcvbuf: int | None = None) -> Client:
        """Log in as ``name`` on that node; returns after the own online notice."""
        client = self.connect(node_index, rcvbuf)
        return login(self.ports[node_index], name, client=client)

    def close_all(self) -> None:
        for client in self._all:
            client.close()


@contextlib.contextmanager
def cluster_clients(ports: Sequence[int]) -> Iterator[ClusterClients]:
    pool = ClusterClients(ports)
    try:
        yield pool
    finally:
        pool.close_all()


def users_line(*names: str) -> str:
    return "<Online users: " + ", ".join(sorted(names, key=str.casefold)) + ">"


def expect_users(client: LineClient, *names: str) -> None:
    client.send("users")
    client.expect(users_line(*names))


def eventually_lists(client: LineClient, names: Iterable[str],
                     timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Ask ``users`` until the answer is exactly ``names``; returns every
    other line seen meanwhile (each ``users`` is answered, never silence)."""
    wanted = users_line(*names)
    deadline = time.monotonic() + timeout
    other: list[str] = []
    while True:
        client.send("users")
        seen = client.read_until(lambda line: line.startswith("<Online users: "),
                                 max(0.01, deadline - time.monotonic()))
        other += seen[:-1]
        if seen[-1] == wanted:
            return other
        if time.monotonic() > deadline:
            raise AssertionError(f"users never became {wanted!r}; last {seen[-1]!r}")
        time.sleep(0.02)  # a poll interval, not a synchronisation


def read_lines_until(client: LineClient, predicate: Callable[[str], bool],
                     timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    return client.read_until(predicate, timeout)


# -- many sockets at once -------------------------------------------------------------


class LineReader:
    """Reads many sockets at once into whole lines, until a condition holds."""

    def __init__(self, socks: Iterable[socket.socket]) -> None:
        self.lines: dict[socket.socket, list[bytes]] = {}
        self._partial: dict[socket.socket, bytearray] = {}
        self.closed: set[socket.socket] = set()
        self._selector = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            self.lines[sock] = []
            self._partial[sock] = bytearray()
            self._selector.register(sock, selectors.EVENT_READ)

    def read_until(self, done: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT,
                   message: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}")
            if not self._selector.get_map():
                raise AssertionError(f"every socket closed before {message}")
            for key, _ in self._selector.select(min(remaining, 0.5)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    self._selector.unregister(sock)
                    self.closed.add(sock)
                    continue
                buffer = self._partial[sock]
                buffer += chunk
                end = buffer.rfind(b"\n")
                if end >= 0:
                    self.lines[sock] += bytes(buffer[:end]).split(b"\n")
                    del buffer[: end + 1]

    def close(self) -> None:
        self._selector.close()


# -- child processes ---------------------------------------------------------------------


class Supervised:
    """``python -m reactor --workers N`` as a child: the supervisor's log (its
    workers share its stdout) and its workers' pids."""

    def __init__(self, *args: str, log_level: str = "INFO") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0",
             "--keepalive-idle", "0", "--log-level", log_level, *args],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
        )
        self.pid = self.process.pid
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="supervisor-log", daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self._lines.append(without_log_time(line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> list[str]:
        """The lines so far, each without the timestamp it may begin with."""
        with self._changed:
            return list(self._lines)

    def wait_for_log(self, pattern: str, timeout: float = DEFAULT_TIMEOUT,
                     count: int = 1) -> list[re.Match[str]]:
        """The first ``count`` log lines matching ``pattern`` (so far or to come)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self._lines) if m]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no {count} log lines matching {pattern!r} within "
                                         f"{timeout}s; log: {self._lines}")
                self._changed.wait(remaining)

    def workers(self) -> list[int]:
        """The pids of the supervisor's live children."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            pids = [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []
        return [pid for pid in pids if _alive(pid)]

    def cleanup(self) -> None:
        children = self.workers()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pid in children:  # none should be left; make sure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def process_gone(pid: int) -> bool:
    return not _alive(pid)
