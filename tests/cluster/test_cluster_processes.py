"""``python -m reactor --cluster`` as an operator runs it: ``--workers N``
supervised on one port, and the command line's refusals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.cluster_support import (
    LEASE,
    REPO,
    RedisServer,
    Supervised,
    cluster_clients,
    eventually_lists,
    process_gone,
    reap_deadline,
    redis_server,  # noqa: F401  (a fixture)
)
from tests.faults import listening_ports_of, peer_ports_of
from tests.support import DEFAULT_TIMEOUT, wait_until

# Slow: worker processes under a supervisor.
pytestmark = pytest.mark.slow

PROGRAM = "reactor-chat-server"


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "reactor", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "complaint"), [
    (["--workers", "2"], "argument --workers: needs --cluster"),
    (["--cluster", "http://127.0.0.1:6379"], "is not a Redis URL"),
    (["--cluster", "redis://127.0.0.1:notaport"], "--cluster"),
    (["--cluster", "redis://127.0.0.1:6379", "--accounts", "/tmp/never-created.db"],
     "argument --accounts: with --cluster, every node must see the same registered names"),
    (["--accounts"], "argument --accounts: give a SQLite file or a Redis URL"),
    (["--cluster", "redis://127.0.0.1:6379", "--cluster-lease", "0.1"], "--cluster-lease"),
], ids=["workers-without-cluster", "not-a-redis-url", "bad-port", "accounts-file-with-cluster",
        "accounts-with-no-value-and-no-cluster", "lease-too-short"])
def test_a_bad_cluster_command_line_is_one_line_on_stderr_and_exit_2(
    args: list[str], complaint: str,
) -> None:
    pytest.importorskip("redis")
    result = run_server("--port", "0", *args)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{PROGRAM}: ") and complaint in lines[0], lines[0]


def _on_worker(worker: int, client_port: int) -> bool:
    return client_port in peer_ports_of(worker)


def test_two_workers_share_the_port_are_one_chat_restart_a_killed_worker_and_stop_on_sigterm(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    """On every backend: the workers are whole servers of that backend."""
    supervisor = Supervised("--cluster", redis_server.url, "--cluster-lease", f"{LEASE:g}",
                            "--workers", "2", "--backend", backend)
    try:
        port = int(supervisor.wait_for_log(r"Started 2 workers on port (\d+)")[0].group(1))
        supervisor.wait_for_log(rf"Listening on port {port}\.\.\.", count=2)
        workers = supervisor.workers()
        assert len(workers) == 2
        wait_until(lambda: all(port in listening_ports_of(w) for w in workers),
                   message="both workers listening on the shared port")
        with cluster_clients([port]) as pool:
            # Log in until each worker has at least two users.
            users: dict[str, int] = {}
            placed: dict[int, list[str]] = {w: [] for w in workers}
            deadline = time.monotonic() + DEFAULT_TIMEOUT
            while min(len(p) for p in placed.values()) < 2:
                assert time.monotonic() < deadline, f"the kernel never spread clients: {placed}"
                name = f"U{len(users)}"
                client = pool.login(0, name)
                local = client.sock.getsockname()[1]
                owner = next(w for w in workers if _on_worker(w, local))
                placed[owner].append(name)
                users[name] = len(pool._all) - 1
            clients = {name: pool._all[index] for name, index in users.items()}
            names = list(users)
            # One chat: everyone lists everyone, DMs cross between the workers.
            for name in names:
                eventually_lists(clients[name], names)
            first, second = (placed[w][0] for w in workers)
            clients[first].send(f"chat {second} across")
            clients[first].expect(f"<To {second}> across")
            clients[second].read_until(lambda line: line == f'<Message from {first}: "across">')
            clients[second].send(f"chat {first} back")
            clients[second].expect(f"<To {first}> back")
            clients[first].read_until(lambda line: line == f'<Message from {second}: "back">')
            # SIGKILL one worker: its users are cut, the others hear them go
            # offline, the supervisor says so and starts another.
            victim, survivor = workers
            killed = time.monotonic()
            supervisor_kill(victim)
            for name in placed[victim]:
                clients[name].expect_closed()
            watcher = clients[placed[survivor][0]]
            gone = {f"<User {n} is offline.>" for n in placed[victim]}
            watcher.read_until(lambda line: not (gone.discard(line) or gone),
                               reap_deadline(LEASE) + 3)
            assert time.monotonic() - killed <= reap_deadline(LEASE) + 1
            supervisor.wait_for_log(rf"Worker \d \(pid {victim}\) died \(killed by SIGKILL\)")
            restarted = supervisor.wait_for_log(r"Worker \d restarted \(pid (\d+)\)")
            new_worker = int(restarted[0].group(1))
            wait_until(lambda: port in listening_ports_of(new_worker),
                       message="the new worker listening")
            assert set(supervisor.workers()) == {survivor, new_worker}
            # The dead worker's names are free again; a client lands on the new worker.
            deadline = time.monotonic() + DEFAULT_TIMEOUT
            landed = None
            for name in [*placed[victim], *(f"W{i}" for i in range(100))]:
                client = pool.login(0, name)
                watcher.read_until(lambda line, name=name: line == f"<User {name} is online.>")
                if _on_worker(new_worker, client.sock.getsockname()[1]):
                    landed = client, name
                    break
                assert time.monotonic() < deadline
            assert landed is not None, "no client reached the restarted worker"
            newcomer, newname = landed
            watcher_name = placed[survivor][0]
            newcomer.send(f"chat {watcher_name} from the new worker")
            newcomer.expect(f"<To {watcher_name}> from the new worker")
            watcher.read_until(
                lambda line: line == f'<Message from {newname}: "from the new worker">')
            # SIGTERM to the supervisor: every worker stops, the whole exits 0.
            everyone = supervisor.workers()
            supervisor.process.send_signal(signal.SIGTERM)
            assert supervisor.process.wait(DEFAULT_TIMEOUT) == 0, supervisor.log
            for pid in everyone:
                wait_until(lambda pid=pid: process_gone(pid), message=f"worker {pid} gone")
            watcher.read_until(lambda line: line.startswith("<Server is shutting down"))
            watcher.expect_closed()
    finally:
        supervisor.cleanup()


def supervisor_kill(pid: int) -> None:
    import os

    os.kill(pid, signal.SIGKILL)
