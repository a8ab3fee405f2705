"""The hypothesis state machine of ``test_stateful.py``, run against a 2-node
cluster (a select node and a threads node on one ``redis-server``): the
connections alternate between the nodes, and the same model of one chat must
predict every line each client gets.

Two observers, one per node, stay logged in: a drop or bye is then seen on
both nodes before the next step (on the far one only once Redis has freed the
name), as the single-node machine's one observer makes it seen at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from protocol import Login, format_command
from tests.backends.test_stateful import ChatMachine, Connection, picks
from tests.cluster_support import RedisServer, node, require_redis
from tests.faults import reset
from tests.support import LineClient

# Slow: a long hypothesis state-machine run on two nodes and Redis.
pytestmark = pytest.mark.slow

SECOND_OBSERVER = "watch2"
BACKENDS_OF_NODES = ("select", "threads")


class ClusterChatMachine(ChatMachine):
    redis: RedisServer | None = None

    def __init__(self) -> None:  # replaces ChatMachine's: two nodes, not one server
        RuleBasedStateMachine.__init__(self)
        assert self.redis is not None, "the module's redis fixture sets this"
        self.redis.flush()
        self._nodes = [node(backend, self.redis.url, close_linger=0.2)
                       for backend in BACKENDS_OF_NODES]
        self.ports: list[int] = []
        try:
            for started in self._nodes:
                self.ports.append(started.__enter__().port)
        except BaseException:
            self._stop_servers()
            raise
        self.connections: list[Connection] = []
        self.online: dict[str, Connection] = {}
        self.seen: dict[str, str] = {}
        self._opened = 0
        self.observer = self._open()
        self._say(self.observer, format_command(Login("watch")))
        self._logged_in(self.observer, "watch")
        self._check()
        self.observer2 = self._open()
        self._say(self.observer2, format_command(Login(SECOND_OBSERVER)))
        self._logged_in(self.observer2, SECOND_OBSERVER)
        self._check()

    def _open(self) -> Connection:
        port = self.ports[self._opened % len(self.ports)]
        self._opened += 1
        connection = Connection(LineClient(port))
        self.connections.append(connection)
        return connection

    def _users(self, *, logged_in: bool) -> list[Connection]:
        return [c for c in self.connections if (c.name is not None) == logged_in
                and c is not self.observer and c is not self.observer2]

    @precondition(lambda self: len(self.connections) > 2)
    @rule(index=picks, rst=st.booleans(), half_line=st.booleans())
    def drop(self, index: int, rst: bool, half_line: bool) -> None:
        candidates = [c for c in self.connections
                      if c is not self.observer and c is not self.observer2]
        leaver = self._pick(candidates, index)
        if half_line:
            self._say(leaver, b'broadcast "never finish')
        if rst:
            reset(leaver.client.sock)
        else:
            leaver.client.close()
        self._gone(leaver)
        self._check()

    def _stop_servers(self) -> None:
        """The nodes started so far stop (ChatMachine.teardown's last step)."""
        for started in reversed(self._nodes[: len(self.ports)]):
            started.__exit__(None, None, None)


@pytest.fixture(scope="module", autouse=True)
def _redis() -> Iterator[None]:
    require_redis()
    server = RedisServer()
    server.start()
    ClusterChatMachine.redis = server
    try:
        yield
    finally:
        ClusterChatMachine.redis = None
        server.stop()


TestClusterOfTwoNodes = ClusterChatMachine.TestCase
TestClusterOfTwoNodes.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
