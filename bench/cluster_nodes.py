"""A cluster made for one phase: its own redis-server and the nodes on it.

``Nodes`` starts a redis-server and cluster members on it, each a process of
its own on its own port (so that the harness chooses who is on which node),
or ``--workers N`` on one port; ``stop`` stops all of them.  ``Spread``
drives the fleets of receivers on several nodes as one fleet.
"""

from __future__ import annotations

import shutil
from typing import Any

from bench import systems
from bench.harness.fleet import Fleet, merge_records
from bench.harness.procstat import cpu_seconds, stop_process
from bench.harness.redis_stats import RedisStats
from bench.peers.redis_peer import start_redis

SPREAD = "cluster-2n"  # two nodes on two ports, N/2 clients on each
LEASE_DEFAULT = 3.0  # reactor's default --cluster-lease


class Nodes:
    """A redis-server and cluster members on it; ``stop`` stops all of them."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self.redis_proc, self.redis_port, self.workdir = start_redis(max_clients)
        self.members: list[systems.Running] = []
        self.nodes: dict[int, int] = {}  # id(member) -> nodes it runs
        self.stats = RedisStats(self.redis_port, self.redis_proc.pid)

    def add(self, workers: int | None = None, extra: tuple[str, ...] = ()) -> systems.Running:
        expect = sum(self.nodes[id(m)] for m in self.members) + (workers or 1)
        member = systems.start_member(self.redis_port, self.max_clients, workers, expect,
                                      extra=extra)
        self.members.append(member)
        self.nodes[id(member)] = workers or 1
        return member

    def add_many(self, count: int) -> list[systems.Running]:
        """``count`` nodes, started at once (each a process of its own)."""
        expect = sum(self.nodes[id(m)] for m in self.members) + count
        started = systems.start_members(self.redis_port, self.max_clients, count,
                                        expect_nodes=expect)  # fmt: skip
        for member in started:
            self.members.append(member)
            self.nodes[id(member)] = 1
        return started

    def remove(self, member: systems.Running) -> None:
        self.members.remove(member)
        member.stop()

    def system(self, name: str) -> systems.Running:
        """The whole cluster as one system (CPU and memory of every node and Redis)."""
        first = self.members[0]
        return systems.Running(
            name, "chat", "127.0.0.1", first.port, first.pid, systems.log_level(systems.CLUSTER),
            companions=[m.proc for m in self.members[1:] if m.proc] + [self.redis_proc],
            redis_port=self.redis_port,
        )  # fmt: skip

    def redis_cpu(self) -> float:
        return cpu_seconds(self.redis_proc.pid) or 0.0

    def stop(self) -> None:
        self.stats.close()
        for m in self.members:
            m.stop()
        stop_process(self.redis_proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


class Spread(Fleet):
    """Several fleets (one per node) driven as one; ``parts`` keeps each one's
    records of the last ``collect``."""

    def __init__(self, fleets: list[Fleet]) -> None:
        self.fleets = fleets
        self.size = sum(f.size for f in fleets)
        self.conns = [c for f in fleets for c in f.conns]
        self.procs = [p for f in fleets for p in f.procs]
        self.parts: list[dict[str, Any]] = []

    def collect(self) -> dict[str, Any]:
        self.parts = [f.collect() for f in self.fleets]
        return merge_records(self.parts)

    def close(self) -> None:
        for f in self.fleets:
            f.close()
        self.conns, self.procs = [], []

